/**
 * Header rules for a forwarding proxy (RFC 9110 §7.6.1, RFC 9112, RFC 7239).
 * Pure functions: they take headers and facts and return the header list to send.
 */
import { normalizeIp, type TrustedProxies } from "./trusted-proxies.ts";

/** Hop-by-hop headers (RFC 9110 §7.6.1), plus framing that we re-do ourselves. */
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "proxy-authenticate",
  "proxy-authorization",
]);

/** Request headers that we set ourselves and never copy from the client. */
const FORWARDING = new Set(["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"]);

const isReserved = (name: string) =>
  HOP_BY_HOP.has(name) || FORWARDING.has(name) || name === "content-length";

/** Names listed in Connection are hop-by-hop too (RFC 9110 §7.6.1). */
function connectionListed(connection: string | null): Set<string> | null {
  if (!connection) return null;
  const names = new Set<string>();
  for (const token of connection.split(",")) {
    const t = token.trim().toLowerCase();
    if (t) names.add(t);
  }
  return names;
}

/** The request asks for the connection to close after its response (RFC 9112 §9.6). */
export function asksToClose(headers: Headers): boolean {
  return connectionListed(headers.get("connection"))?.has("close") ?? false;
}

export interface ForwardFacts {
  /** The TCP peer (the client, or a proxy in front of us). */
  peerIp: string;
  /** Whether the peer is in trustedProxies, so its X-Forwarded-* are believed. */
  peerTrusted: boolean;
  /** "http" or "https": how the client reached this listener. */
  proto: string;
  /** Host header as the client sent it. */
  host: string;
}

/** RFC 7239 §6: IPv6 addresses are bracketed and quoted; other values quoted when needed. */
function forwardedNode(ip: string): string {
  return ip.includes(":") ? `"[${ip}]"` : ip;
}

/** The last Host seen and its quoted form: a listener sees the same few Hosts over and over. */
let lastHost = "";
let lastHostValue = "";

function forwardedValue(v: string): string {
  if (v === lastHost) return lastHostValue;
  const quoted = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(v) ? v : `"${v.replace(/(["\\])/g, "\\$1")}"`;
  lastHost = v;
  lastHostValue = quoted;
  return quoted;
}

/**
 * Headers for the backend: hop-by-hop removed, Content-Length removed (the
 * upstream client frames the body), forwarding headers set. Values a client
 * sent are kept (and appended to) only when the peer is a trusted proxy.
 * `keepUpgrade` keeps Upgrade/Connection for a WebSocket handshake.
 */
export function backendRequestHeaders(
  headers: Headers,
  facts: ForwardFacts,
  keepUpgrade = false,
  /** Replaces the Cookie header (persistence rules remove their own cookies); "" drops it. */
  cookie?: string | null,
): [string, string][] {
  const out: [string, string][] = [];
  const listed = connectionListed(headers.get("connection"));
  for (const [name, value] of headers) {
    if (HOP_BY_HOP.has(name) || FORWARDING.has(name) || name === "content-length") continue;
    // A client's Connection tokens never take Host from the backend (RFC 9112 §3.2 requires it); the
    // forwarding headers are tether's own and are set below whatever the client listed.
    if (listed?.has(name) && name !== "host") continue;
    // CGI-style backends read "_" as "-": Transfer_Encoding or X_Forwarded_For would reach them as
    // framing or forwarding headers tether never checked (nginx drops every underscore name).
    if (name.includes("_") && isReserved(name.replaceAll("_", "-"))) continue;
    if (name === "cookie" && cookie !== undefined) {
      if (cookie) out.push(["cookie", cookie]);
      continue;
    }
    out.push([name, value]);
  }
  if (keepUpgrade) {
    out.push(["connection", "upgrade"], ["upgrade", headers.get("upgrade") ?? "websocket"]);
  }
  const priorXff = facts.peerTrusted ? headers.get("x-forwarded-for") : null;
  out.push(["x-forwarded-for", priorXff ? `${priorXff}, ${facts.peerIp}` : facts.peerIp]);
  const priorProto = facts.peerTrusted ? headers.get("x-forwarded-proto") : null;
  out.push(["x-forwarded-proto", priorProto ?? facts.proto]);
  const priorHost = facts.peerTrusted ? headers.get("x-forwarded-host") : null;
  const host = priorHost ?? facts.host;
  if (host) out.push(["x-forwarded-host", host]);
  const priorForwarded = facts.peerTrusted ? headers.get("forwarded") : null;
  let element = `for=${forwardedNode(facts.peerIp)};proto=${facts.proto}`;
  if (facts.host) element += `;host=${forwardedValue(facts.host)}`;
  out.push(["forwarded", priorForwarded ? `${priorForwarded}, ${element}` : element]);
  return out;
}

/**
 * Headers for the client: hop-by-hop and framing removed (Bun.serve frames the
 * response itself). Content-Length is re-added by the caller when the body
 * length is known, so HEAD answers keep it. Pairs rather than a Headers
 * object: Response builds its own from them in one native call instead of
 * one per field. The pairs are the backend's own: replace them, never edit.
 */
export function clientResponseHeaders(headers: readonly [string, string][]): [string, string][] {
  let listed: Set<string> | null = null;
  for (const [name, value] of headers) {
    if (name.length === 10 && name.toLowerCase() === "connection") {
      listed = connectionListed(value);
      break;
    }
  }
  const out: [string, string][] = [];
  for (const field of headers) {
    const lower = field[0].toLowerCase();
    if (HOP_BY_HOP.has(lower) || lower === "content-length" || listed?.has(lower)) continue;
    out.push(field);
  }
  return out;
}

/**
 * The client's address as far as we can trust it: walk X-Forwarded-For from the
 * right while each hop is a trusted proxy (the leftmost entries are whatever
 * the client wrote and prove nothing).
 */
export function clientAddress(peerIp: string, xff: string | null, trusted: TrustedProxies): string {
  if (!xff || !trusted.has(peerIp)) return peerIp;
  const hops = xff.split(",");
  let client = peerIp;
  for (let i = hops.length - 1; i >= 0; i--) {
    const hop = normalizeIp(hops[i]?.trim() ?? "");
    if (!hop) break;
    client = hop;
    if (!trusted.has(hop)) break;
  }
  return client;
}
