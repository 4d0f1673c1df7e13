/**
 * A worker thread: serves every traffic listener (reusePort shares the
 * ports), learns sessions, and trades state with the primary thread in
 * msgpack messages. Listed as an entry point of the compiled binary.
 */
import { type Config, decodeConfig } from "../config/load.ts";
import { createLogger } from "../log.ts";
import { type PreparedReload, startTether, type Tether } from "../server/app.ts";
import { LearnBatcher, learnedEntries } from "../state/learn-batch.ts";
import { SiblingLookup } from "../state/sibling-lookup.ts";
import { decode, encode, type Message, type MetricDeltas, PROTOCOL_VERSION } from "./messages.ts";

declare const self: Worker;

const METRICS_EVERY_MS = 1000;

let tether: Tether | null = null;
/** A reload prepared here, waiting for the primary's commit or abort. */
let prepared: PreparedReload | null = null;
let workerId = "?";
const pending: Message[] = [];
const post = (m: Message) => self.postMessage(encode(m));
/**
 * Learned entries leave at the end of the task that learned them, before the
 * response that names the session reaches its client: the client's next
 * request may arrive on another worker, which asks the primary (siblings).
 */
const batcher = new LearnBatcher((e) => post({ v: PROTOCOL_VERSION, t: "learn", e }), { maxDelayMs: 0 });
const siblings = new SiblingLookup((pool, table, key, id) =>
  post({ v: PROTOCOL_VERSION, t: "lookup", id, pool, table, key }),
);

// Set before any await: Bun drops messages that arrive before a handler exists.
self.onmessage = (ev: MessageEvent) => {
  const m = decode(ev.data);
  if (!m) return;
  if (!tether && m.t !== "init") {
    pending.push(m);
    return;
  }
  void handle(m);
};

const log = createLogger((line) => {
  // Tag each line with the worker it came from.
  process.stdout.write(line.replace(/^\{/, `{"worker":"${workerId}",`));
});

function withPorts(config: Config, ports: Record<string, number>): Config {
  return { ...config, listeners: config.listeners.map((l) => ({ ...l, port: ports[l.name] ?? l.port })) };
}

/** Counters since the last report, and the load last reported, for the primary's admin API and metrics. */
const sent = new Map<string, [number, number, number, number]>();
function deltas(t: Tether): MetricDeltas {
  const backends: MetricDeltas["backends"] = [];
  const sessions: MetricDeltas["sessions"] = [];
  const load: MetricDeltas["load"] = [];
  for (const pool of t.runtime.pools.values()) {
    for (const b of pool.backends) {
      const key = `${pool.name}\0${b.id}`;
      const [r0, e0, i0, w0] = sent.get(key) ?? [0, 0, 0, 0];
      if (b.requests !== r0 || b.errors !== e0)
        backends.push([pool.name, b.id, b.requests - r0, b.errors - e0, b.lastPinnedAt]);
      if (b.inflight !== i0 || b.websockets !== w0) load.push([pool.name, b.id, b.inflight, b.websockets]);
      sent.set(key, [b.requests, b.errors, b.inflight, b.websockets]);
      if (!b.sessions.tap) b.sessions.tap = [];
      if (b.sessions.tap.length) {
        sessions.push([pool.name, b.id, b.sessions.tap]);
        b.sessions.tap = [];
      }
    }
  }
  return { ...t.metrics.drain(), backends, sessions, load };
}

async function handle(m: Message): Promise<void> {
  switch (m.t) {
    case "init": {
      workerId = String(m.id);
      const config = withPorts(decodeConfig(m.config), m.ports);
      const t = startTether(config, log, {
        role: "worker",
        audit: {
          emit: (event, fields) =>
            post({ v: PROTOCOL_VERSION, t: "audit", event, fields: { ...fields, worker: m.id } }),
        },
        fallbackKeys: m.keys.map((k) => Buffer.from(k)),
        onLearned: (pool, table, key, backendId, exp) => batcher.add(pool, table, key, backendId, exp),
        flushLearned: () => batcher.flush(),
        siblings,
        onPassiveVerdict: (pool, backend, untilMs, reason) =>
          post({ v: PROTOCOL_VERSION, t: "passive", pool, backend, untilMs, reason }),
      });
      tether = t;
      for (const [pool, backend, state, until] of m.states) t.applyState(pool, backend, { state, until });
      for (const [pool, backend, down, passiveUntil] of m.health) {
        t.applyHealth(pool, backend, down);
        if (passiveUntil > Date.now()) t.applyPassive(pool, backend, passiveUntil, "");
      }
      for (const table of m.tables) {
        for (let i = 0; i + 2 < table.entries.length; i += 3) {
          t.applyLearned(
            table.pool,
            table.table,
            table.entries[i] as number,
            table.entries[i + 1] as string,
            table.entries[i + 2] as number,
          );
        }
      }
      deltas(t); // start the session taps
      setInterval(
        () => post({ v: PROTOCOL_VERSION, t: "metrics", d: deltas(t) }),
        METRICS_EVERY_MS,
      ).unref?.();
      const ports = Object.fromEntries([...t.listeners].map(([name, h]) => [name, h.server.port ?? 0]));
      post({ v: PROTOCOL_VERSION, t: "ready", ports });
      for (const p of pending.splice(0)) void handle(p);
      return;
    }
    case "learn":
      for (const [pool, table, key, backendId, exp] of learnedEntries(m.e))
        tether?.applyLearned(pool, table, key, backendId, exp);
      return;
    case "found":
      siblings.answer(m.id, m.backendId, m.exp);
      return;
    case "state":
      tether?.applyState(m.pool, m.backend, { state: m.state, until: m.until });
      return;
    case "health":
      tether?.applyHealth(m.pool, m.backend, m.down);
      return;
    case "passive":
      tether?.applyPassive(m.pool, m.backend, m.untilMs, m.reason);
      return;
    case "prepare": {
      try {
        prepared?.abort();
        prepared = null;
        const next = withPorts(decodeConfig(m.config), m.ports);
        prepared = (await tether?.prepare(next)) ?? null;
        post({ v: PROTOCOL_VERSION, t: "prepared", ok: prepared !== null });
      } catch (e) {
        post({ v: PROTOCOL_VERSION, t: "prepared", ok: false, error: String(e) });
      }
      return;
    }
    case "commit":
      prepared?.commit();
      prepared = null;
      return;
    case "abort":
      prepared?.abort();
      prepared = null;
      return;
    case "stop": {
      batcher.flush();
      await tether?.stop(m.graceMs);
      post({ v: PROTOCOL_VERSION, t: "stopped" });
      return;
    }
    default:
      return;
  }
}
