/**
 * The active health check of a tcp:// backend: a TCP connect, or a TLS
 * handshake on top of it. A pool that sends the PROXY protocol sends its
 * LOCAL form first (v2 LOCAL, v1 UNKNOWN: "this connection is the proxy's
 * own"), as a backend that requires the header would refuse a bare check.
 * The certificate is not verified: the check asks whether the backend's TLS
 * stack answers, not whether tether trusts it (tether never terminates this TLS).
 */
import type { Socket } from "bun";
import { serializeProxyHeader } from "./proxy-protocol.ts";

export interface ProbeOptions {
  timeoutMs: number;
  /** Send a PROXY header of this version (LOCAL command) before anything else. */
  proxyProtocol?: "v1" | "v2";
  /** Complete a TLS handshake (with this SNI name, if given) rather than only connect. */
  tlsHandshake?: { serverName?: string };
}

export interface ProbeResult {
  ok: boolean;
  /** "connected", "handshake", or why it failed: "refused", "timeout", "tls-failed", "closed". */
  reason: string;
}

export function probeTcp(hostname: string, port: number, opts: ProbeOptions): Promise<ProbeResult> {
  return new Promise((resolve) => {
    let settled = false;
    let socket: Socket<undefined> | null = null;
    const done = (ok: boolean, reason: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      // A passed check closes politely (the PROXY header still goes out); a failed one at once.
      if (ok) socket?.end();
      else socket?.terminate();
      resolve({ ok, reason });
    };
    const timer = setTimeout(() => done(false, "timeout"), opts.timeoutMs);
    Bun.connect<undefined>({
      hostname,
      port,
      socket: {
        open(s) {
          if (settled) {
            s.terminate();
            return;
          }
          socket = s;
          if (opts.proxyProtocol) {
            const version = opts.proxyProtocol === "v1" ? 1 : 2;
            s.write(
              serializeProxyHeader({
                version,
                command: "local",
                family: "unknown",
                source: null,
                destination: null,
              }),
            );
          }
          if (!opts.tlsHandshake) {
            done(true, "connected");
            return;
          }
          const [, tls] = s.upgradeTLS<undefined>({
            tls: {
              rejectUnauthorized: false,
              ...(opts.tlsHandshake.serverName ? { serverName: opts.tlsHandshake.serverName } : {}),
            },
            socket: {
              // success is the handshake's; an unverified certificate is expected and fine here.
              handshake: (_t, success) => done(success, success ? "handshake" : "tls-failed"),
              data() {},
              error: () => done(false, "tls-failed"),
              close: () => done(false, "closed"),
            },
          });
          socket = tls;
        },
        data() {},
        close: () => done(false, "closed"),
        connectError: () => done(false, "refused"),
      },
    }).catch(() => done(false, "refused"));
  });
}
