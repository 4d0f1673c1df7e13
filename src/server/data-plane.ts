/**
 * The data plane: the traffic listeners of one thread (all of them in a
 * worker or a single thread, none in the primary), opened, replaced on
 * reload and drained. It reads the live Runtime per request through
 * `current`; it owns no state beyond its sockets.
 */
import type { Config, ResolvedListener } from "../config/load.ts";
import type { ListenerHandle, ProxyDeps, Runtime } from "../contracts.ts";
import type { Logger } from "../log.ts";
import { startPassthroughListener } from "../passthrough/listener.ts";
import { startListener } from "./listener.ts";

/** A reload that has opened what it needs and waits for the word. */
export interface PreparedReload {
  /** Swaps the new config in and drains the listeners it retires. */
  commit(): void;
  /** Closes the listeners prepare() opened; the current config goes on serving. */
  abort(): void;
}

export interface DataPlane {
  readonly listeners: ReadonlyMap<string, ListenerHandle>;
  /**
   * Opens the listeners `next` adds or whose socket settings it changes,
   * beside the old ones; throws, with nothing left open, when it cannot.
   * commit() puts them in place and drains the ones retired.
   */
  prepare(next: Config): PreparedReload & {
    /** It opens a listener and closes another (a replacement, or one swapped for another). */
    readonly replaces: boolean;
  };
  /** Stops accepting, lets in-flight requests finish for up to graceMs, then closes. */
  stop(graceMs: number): Promise<void>;
}

/**
 * Keys a running listener cannot change: a change to any of them opens a new
 * listener (Bun keeps a listener's certificate and socket options for life).
 * Routes and the default pool are read per request and change in place.
 */
function socketSettings(l: ResolvedListener): string {
  const { routes: _r, pool: _p, ...rest } = l;
  return JSON.stringify({ ...rest, certificates: l.certificates.map((c) => [c.cert, c.key, c.serverName]) });
}

export async function drain(handle: ListenerHandle, graceMs: number): Promise<void> {
  handle.server.stop(false);
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline) {
    if (
      handle.inflight() === 0 &&
      handle.server.pendingRequests === 0 &&
      handle.server.pendingWebSockets === 0
    )
      break;
    await Bun.sleep(20);
  }
  await handle.server.stop(true);
}

/** Opens every listener of `listeners` (none for the primary); throws, with nothing left open, if one fails. */
export function startDataPlane(
  listeners: readonly ResolvedListener[],
  current: () => Runtime,
  deps: ProxyDeps,
  log: Logger,
): DataPlane {
  const open = new Map<string, ListenerHandle>();
  // reusePort lets a replacement listener bind the same port before the old one closes, so a reload drops nothing.
  const openListener = (l: ResolvedListener) =>
    l.protocol === "tls-passthrough"
      ? startPassthroughListener(l, current, deps, { reusePort: true })
      : startListener(l, current, deps, { reusePort: true });
  const logListening = (h: ListenerHandle) =>
    log.info("listening", {
      name: h.config.name,
      protocol: h.config.protocol,
      // Which front end reads its HTTP (tls-passthrough reads none).
      ...(h.config.protocol === "tls-passthrough" ? {} : { engine: h.config.engine }),
      address: h.server.hostname,
      port: h.server.port,
    });

  try {
    for (const l of listeners) {
      const h = openListener(l);
      open.set(l.name, h);
      logListening(h);
    }
  } catch (e) {
    for (const h of open.values()) h.server.stop(true);
    throw e;
  }

  return {
    listeners: open,
    prepare(next) {
      const nextNames = new Set(next.listeners.map((l) => l.name));
      const retiring = [...open.values()].filter((h) => !nextNames.has(h.config.name));
      const opened: ListenerHandle[] = [];
      try {
        for (const l of next.listeners) {
          const old = open.get(l.name);
          if (old && socketSettings(old.config) === socketSettings(l)) continue;
          opened.push(openListener(l));
          if (old) retiring.push(old);
        }
      } catch (e) {
        // Could not bind a new listener: the current set keeps serving.
        for (const h of opened) h.server.stop(true);
        throw e;
      }
      let settled = false;
      return {
        replaces: opened.length > 0 && retiring.length > 0,
        commit() {
          if (settled) return;
          settled = true;
          for (const h of retiring) open.delete(h.config.name);
          for (const h of opened) {
            open.set(h.config.name, h);
            logListening(h);
          }
          for (const h of retiring) {
            log.info("listener closing", { name: h.config.name, port: h.server.port });
            void drain(h, next.shutdownGraceMs);
          }
        },
        abort() {
          if (settled) return;
          settled = true;
          // The kernel may have handed them connections already: let those finish.
          for (const h of opened) void drain(h, current().config.shutdownGraceMs);
        },
      };
    },
    async stop(graceMs) {
      await Promise.all([...open.values()].map((h) => drain(h, graceMs)));
      open.clear();
    },
  };
}
