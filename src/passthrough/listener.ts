/**
 * A tls-passthrough listener: Bun.listen on the listener's address, one
 * Tunnel per connection, and one timer that closes idle connections. It
 * presents the same handle as an HTTP listener, so the app opens, reloads
 * and drains it the same way.
 */
import type { SocketHandler } from "bun";
import type { ResolvedListener } from "../config/load.ts";
import type { ListenerHandle, ListenerServer, ProxyDeps, Runtime } from "../contracts.ts";
import { type PassthroughStats, Tunnel, type TunnelContext } from "./tunnel.ts";

export type { PassthroughStats } from "./tunnel.ts";

/** How often idle connections are looked for; clientIdleMs is honoured to within this. */
const SWEEP_MS = 250;

export interface PassthroughHandle extends ListenerHandle {
  stats(): PassthroughStats;
}

export function startPassthroughListener(
  config: ResolvedListener,
  current: () => Runtime,
  deps: ProxyDeps,
  opts: { reusePort?: boolean } = {},
): PassthroughHandle {
  const tunnels = new Set<Tunnel>();
  const stats: PassthroughStats = {
    accepted: 0,
    active: 0,
    rejected: {},
    connectFailures: 0,
    noBackend: 0,
    learnedNew: 0,
    resumed: 0,
    peakQueued: 0,
  };
  let accepting = true;
  const ctx: TunnelContext = {
    config,
    current,
    deps,
    stats,
    finished: (t) => tunnels.delete(t),
  };

  const handlers: SocketHandler<Tunnel> = {
    open(s) {
      if (!accepting) {
        s.terminate();
        return;
      }
      const t = new Tunnel(ctx, s);
      s.data = t;
      tunnels.add(t);
    },
    data(s, chunk) {
      s.data?.onClientData(chunk);
    },
    drain(s) {
      s.data?.onClientDrain();
    },
    end(s) {
      s.data?.onClientEnd();
    },
    close(s, error) {
      s.data?.onClientClose(error);
    },
    error(s, err) {
      s.data?.socketError("client", err);
    },
  };
  // reusePort is honoured by Bun.listen but missing from its option type: passed through a variable.
  const listenOptions = {
    hostname: config.hostname,
    port: config.port,
    reusePort: opts.reusePort ?? false,
    allowHalfOpen: true,
    socket: handlers,
  };
  const listener = Bun.listen<Tunnel>(listenOptions);

  const sweep = setInterval(() => {
    const clock = performance.now();
    for (const t of tunnels) if (clock - t.activeAt >= config.clientIdleMs) t.abort();
  }, SWEEP_MS);

  const server: ListenerServer = {
    port: listener.port,
    hostname: listener.hostname,
    get pendingRequests() {
      return tunnels.size;
    },
    pendingWebSockets: 0,
    stop(closeActive = false) {
      if (accepting) {
        accepting = false;
        listener.stop(false);
      }
      if (closeActive) {
        clearInterval(sweep);
        for (const t of [...tunnels]) t.abort();
        listener.stop(true);
      }
    },
  };
  const snapshot = (): PassthroughStats => {
    let peakQueued = stats.peakQueued;
    for (const t of tunnels) peakQueued = Math.max(peakQueued, t.relay.peakQueued);
    return { ...stats, rejected: { ...stats.rejected }, peakQueued };
  };
  return { config, server, inflight: () => tunnels.size, stats: snapshot };
}
