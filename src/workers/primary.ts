/**
 * The primary thread when "workers" > 0: it settles listener ports, starts
 * worker threads one at a time with a ready handshake, relays learned
 * sessions between them, tells them of health and operator state changes,
 * collects their metrics, respawns a crashed worker with backoff, and on
 * shutdown lets them drain. Workers run exactly the primary's config: it
 * travels in their init message and in reloads, never re-read from disk.
 * A reload takes effect in every thread or in none: all prepare, then all
 * commit, or all abort when one could not prepare. It runs health checks, the admin listener, the
 * audit log and the snapshot itself (a Tether in "primary" role).
 */

import type { AuditEvent } from "../audit.ts";
import { isCompiled } from "../cli/header-limit.ts";
import { type Config, encodeConfig } from "../config/load.ts";
import type { Logger } from "../log.ts";
import { startTether, type Tether } from "../server/app.ts";
import { learnedEntries } from "../state/learn-batch.ts";
import { collectSnapshot } from "../state/snapshot.ts";
import { decode, encode, type Message, PROTOCOL_VERSION } from "./messages.ts";

const READY_TIMEOUT_MS = 15_000;
const PREPARE_TIMEOUT_MS = 10_000;
const MAX_BACKOFF_MS = 5_000;
const STABLE_AFTER_MS = 30_000;

/** Port 0 would give each worker its own port under reusePort: pick one real port first. */
export function settlePorts(config: Config, keep: Record<string, number> = {}): Record<string, number> {
  const ports: Record<string, number> = {};
  for (const l of config.listeners) {
    if (l.port !== 0) ports[l.name] = l.port;
    else if (keep[l.name]) ports[l.name] = keep[l.name] as number;
    else {
      const probe = Bun.listen({ hostname: l.hostname, port: 0, socket: { data() {} } });
      ports[l.name] = probe.port;
      probe.stop(true);
    }
  }
  return ports;
}

interface Slot {
  id: number;
  /** The worker's last reported load per "pool\0backend": [inflight, websockets]. */
  load: Map<string, [number, number]>;
  worker: Worker | null;
  ready: boolean;
  restarts: number;
  /** The config generation its init carried. */
  generation: number;
}

export interface Primary {
  readonly tether: Tether;
  readonly ports: Record<string, number>;
  reload(next: Config): Promise<void>;
  stop(graceMs: number): Promise<void>;
}

/**
 * Where the worker module is: beside this file in a checkout; in a compiled
 * binary, the second entry point, which Bun stores relative to the entry
 * points' common folder (src/) in its virtual file system.
 */
function workerUrl(): string {
  return isCompiled() ? "/$bunfs/root/workers/worker.ts" : new URL("./worker.ts", import.meta.url).href;
}

export async function startPrimary(
  config: Config,
  count: number,
  log: Logger,
  fallbackKeys: Buffer[],
): Promise<Primary> {
  let ports = settlePorts(config);
  const slots: Slot[] = Array.from({ length: count }, (_, id) => ({
    id,
    worker: null,
    ready: false,
    restarts: 0,
    load: new Map(),
    generation: 0,
  }));
  let stopping = false;
  /** Counts committed reloads: a worker that started on an older config is replaced. */
  let generation = 0;

  const broadcast = (bytes: Uint8Array, except?: Slot) => {
    for (const s of slots) if (s !== except && s.ready) s.worker?.postMessage(bytes);
  };
  const tether = startTether(config, log, {
    role: "primary",
    fallbackKeys,
    onStateChange: (pool, backend, s) =>
      broadcast(encode({ v: PROTOCOL_VERSION, t: "state", pool, backend, state: s.state, until: s.until })),
    onHealthChange: (pool, backend, down) =>
      broadcast(encode({ v: PROTOCOL_VERSION, t: "health", pool, backend, down })),
    // A membership change (DNS, admin API) reaches the workers as a reload does.
    applyMembership: (next) => queueReload(next),
  });

  const waiters = new Map<Slot, Map<string, (m: Message) => void>>();
  const expect = (slot: Slot, type: Message["t"], timeoutMs: number) =>
    new Promise<Message | null>((resolve) => {
      const timer = setTimeout(() => resolve(null), timeoutMs);
      let forSlot = waiters.get(slot);
      if (!forSlot) {
        forSlot = new Map();
        waiters.set(slot, forSlot);
      }
      forSlot.set(type, (m) => {
        clearTimeout(timer);
        resolve(m);
      });
    });

  /** The primary serves no traffic: its backends show the sum of the workers' loads (admin API, metrics). */
  const showLoad = (pool: string, id: string) => {
    const b = tether.runtime.pools.get(pool)?.get(id);
    if (!b) return;
    let inflight = 0;
    let websockets = 0;
    for (const s of slots) {
      const l = s.load.get(`${pool}\0${id}`);
      if (l) {
        inflight += l[0];
        websockets += l[1];
      }
    }
    b.inflight = inflight;
    b.websockets = websockets;
  };

  const onMessage = (slot: Slot, data: unknown) => {
    const m = decode(data);
    if (!m) return;
    const waiter = waiters.get(slot)?.get(m.t);
    if (waiter) {
      waiters.get(slot)?.delete(m.t);
      waiter(m);
    }
    if (m.t === "learn") {
      for (const [pool, table, key, backendId, exp] of learnedEntries(m.e))
        tether.applyLearned(pool, table, key, backendId, exp);
      // The same bytes go to every other worker: no re-encoding.
      broadcast(data as Uint8Array, slot);
    } else if (m.t === "lookup") {
      // A worker's learns leave before its response does (see worker.ts), so an entry another
      // worker learned for a session its client now names is here already.
      const nowSec = Math.floor(Date.now() / 1000);
      const hit = tether.runtime.pools.get(m.pool)?.chain.tables.get(m.table)?.peekHashed(m.key, nowSec);
      slot.worker?.postMessage(
        encode({
          v: PROTOCOL_VERSION,
          t: "found",
          id: m.id,
          backendId: hit?.backendId ?? "",
          exp: hit?.expiresAtSec ?? 0,
        }),
      );
    } else if (m.t === "passive") {
      // Announced here once; the others apply it silently. A second verdict on the same backend is dropped.
      if (tether.applyPassive(m.pool, m.backend, m.untilMs, m.reason)) broadcast(data as Uint8Array, slot);
    } else if (m.t === "audit") {
      tether.audit.emit(m.event as AuditEvent, m.fields);
    } else if (m.t === "metrics") {
      tether.metrics.absorb(m.d);
      const now = Date.now();
      for (const [pool, id, requests, errors, lastPinnedAt] of m.d.backends) {
        const b = tether.runtime.pools.get(pool)?.get(id);
        if (!b) continue;
        b.requests += requests;
        b.errors += errors;
        b.lastPinnedAt = Math.max(b.lastPinnedAt, lastPinnedAt);
      }
      for (const [pool, id, hashes] of m.d.sessions) {
        const b = tether.runtime.pools.get(pool)?.get(id);
        if (b) for (const h of hashes) b.sessions.add(h, now);
      }
      for (const [pool, id, inflight, websockets] of m.d.load ?? []) {
        slot.load.set(`${pool}\0${id}`, [inflight, websockets]);
        showLoad(pool, id);
      }
    }
  };

  const initMessage = (slot: Slot): Uint8Array => {
    const runtime = tether.runtime;
    const health: [string, string, boolean, number][] = [];
    for (const p of runtime.pools.values())
      for (const b of p.backends) health.push([p.name, b.id, b.activeDown, b.passiveDownUntil]);
    const snap = collectSnapshot(runtime, tether.operatorStates);
    slot.generation = generation;
    return encode({
      v: PROTOCOL_VERSION,
      t: "init",
      id: slot.id,
      config: encodeConfig(runtime.config),
      ports,
      keys: fallbackKeys.map((k) => new Uint8Array(k)),
      states: snap.states.map((s) => [s.pool, s.backend, s.state, s.until ?? 0]),
      health,
      tables: snap.tables,
    });
  };

  const spawn = async (slot: Slot): Promise<boolean> => {
    const worker = new Worker(workerUrl());
    slot.worker = worker;
    slot.ready = false;
    // Handlers first: a message posted before they exist is lost.
    worker.onmessage = (ev) => onMessage(slot, ev.data);
    worker.addEventListener("close", () => {
      slot.ready = false;
      slot.worker = null;
      // What it had in flight ended with it.
      const keys = [...slot.load.keys()];
      slot.load.clear();
      for (const key of keys) showLoad(...(key.split("\0") as [string, string]));
      if (stopping) return;
      const delay = Math.min(MAX_BACKOFF_MS, 100 * 2 ** slot.restarts++);
      log.error("worker exited; respawning", { worker: slot.id, delayMs: delay });
      setTimeout(() => void spawn(slot), delay);
    });
    worker.addEventListener("error", (ev) =>
      log.error("worker error", { worker: slot.id, error: String(ev.message) }),
    );
    const ready = expect(slot, "ready", READY_TIMEOUT_MS);
    worker.postMessage(initMessage(slot));
    const m = await ready;
    if (!m) {
      log.error("worker did not become ready", { worker: slot.id });
      return false;
    }
    // A reload committed while it started passed it by: start it again on the current config.
    if (slot.generation !== generation) {
      log.info("worker started on a previous config; restarting it", { worker: slot.id });
      worker.terminate();
      return false;
    }
    slot.ready = true;
    // A worker that stays up a while earns a fresh backoff: only crash loops wait long.
    setTimeout(() => {
      if (slot.worker === worker) slot.restarts = 0;
    }, STABLE_AFTER_MS).unref?.();
    log.info("worker ready", { worker: slot.id });
    return true;
  };

  const reloadAll = async (next: Config) => {
    const mine = await tether.prepare(next);
    const nextPorts = settlePorts(next, ports);
    const live = slots.filter((s) => s.ready);
    const replies = live.map((s) => expect(s, "prepared", PREPARE_TIMEOUT_MS));
    const prepare = encode({
      v: PROTOCOL_VERSION,
      t: "prepare",
      config: encodeConfig(next),
      ports: nextPorts,
    });
    for (const s of live) s.worker?.postMessage(prepare);
    const results = await Promise.all(replies);
    const failures = results.flatMap((r, i) =>
      r?.t === "prepared" && r.ok
        ? []
        : [`worker ${live[i]?.id}: ${r?.t === "prepared" ? r.error : "no answer"}`],
    );
    const word = encode({ v: PROTOCOL_VERSION, t: failures.length ? "abort" : "commit" });
    for (const s of live) s.worker?.postMessage(word);
    if (failures.length) {
      mine.abort();
      throw new Error(`not every thread could take the new config (${failures.join("; ")})`);
    }
    generation++;
    ports = nextPorts;
    mine.commit();
  };
  let reloading: Promise<void> = Promise.resolve();
  /**
   * One reload at a time: the replies of two would cross. Defined before the
   * first worker is spawned: a membership change (a DNS answer, the Redis set)
   * can arrive while they start, and a worker that misses it is restarted.
   */
  function queueReload(next: Config): Promise<void> {
    const run = reloading.then(() => reloadAll(next));
    reloading = run.catch(() => {});
    return run;
  }

  // One at a time: several Workers spawned at once under load have crashed Bun.
  for (const slot of slots) await spawn(slot);
  for (const [name, port] of Object.entries(ports)) {
    const listener = config.listeners.find((l) => l.name === name);
    log.info("listening", {
      name,
      workers: count,
      ...(listener && listener.protocol !== "tls-passthrough" ? { engine: listener.engine } : {}),
      port,
      address: listener?.hostname,
    });
  }

  return {
    tether,
    get ports() {
      return ports;
    },
    reload(next: Config) {
      // Through the membership queue: the backends added while running are merged in.
      return tether.membership ? tether.membership.reload(next) : queueReload(next);
    },
    async stop(graceMs: number) {
      stopping = true;
      const live = slots.filter((s) => s.worker);
      const done = live.map((s) => expect(s, "stopped", graceMs + 2_000));
      for (const s of live) s.worker?.postMessage(encode({ v: PROTOCOL_VERSION, t: "stop", graceMs }));
      await Promise.all(done);
      // Drained: ending them now cuts nothing.
      for (const s of live) s.worker?.terminate();
      await tether.stop(graceMs);
    },
  };
}
