/**
 * Which Bun.serve servers a listener's "protocols" need, as data. HTTP/1.1
 * and HTTP/2 share the TCP socket (ALPN picks one over TLS; a cleartext
 * connection that opens with the HTTP/2 preface gets h2c). HTTP/3 gets a
 * Bun.serve of its own on the same port number (UDP only, since it serves
 * neither HTTP/1.1 nor HTTP/2): Bun adds `Alt-Svc: h3=":<bound port>"` to
 * every TCP response of a server that has http3 on, even beside an Alt-Svc
 * already set, and that port is wrong behind a port mapping. With the two
 * apart Bun adds none, and tether sends its own, once, naming `altSvcPort`.
 */
import type { ResolvedListener } from "../config/load.ts";

export interface ServePlan {
  /** The TCP server's Bun.serve flags, or null when the listener serves HTTP/3 only. */
  tcp: { http1: boolean; http2: boolean } | null;
  /** An HTTP/3 server beside it on the same port. */
  quic: boolean;
}

export function servePlan(l: Pick<ResolvedListener, "protocols">): ServePlan {
  const has = (p: string) => l.protocols.includes(p as ResolvedListener["protocols"][number]);
  const http1 = has("http/1.1");
  const http2 = has("h2") || has("h2c");
  return { tcp: http1 || http2 ? { http1, http2 } : null, quic: has("h3") };
}

/** Alt-Svc names HTTP/3's UDP port; a day is what Bun and most servers send (RFC 7838 §3.1). */
export function altSvcValue(l: Pick<ResolvedListener, "protocols" | "altSvcPort">, boundPort: number) {
  if (!l.protocols.includes("h3")) return null;
  return `h3=":${l.altSvcPort ?? boundPort}"; ma=86400`;
}

/**
 * The protocol label of a request served by one of the listener's servers.
 * Bun does not tell a handler which HTTP version a request came over, so the
 * TCP server's requests are labelled by what it accepts ("http/1.1", "h2",
 * or "http/1.1+h2" when ALPN may pick either); the QUIC server's are "h3".
 */
export function protocolLabel(l: Pick<ResolvedListener, "protocols">, quic: boolean): string {
  if (quic) return "h3";
  return l.protocols.filter((p) => p !== "h3").join("+");
}
