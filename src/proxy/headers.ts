/**
 * Header rules for a forwarding proxy (RFC 9110 §7.6.1, RFC 9112, RFC 7239).
 * Pure functions: they take headers and facts and return the header list to send.
 */
import { normalizeIp, type TrustedProxies } from "./trusted-proxies.ts";
import { equalsLower } from "./upstream/parser.ts";

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

const CLOSE: ReadonlySet<string> = new Set(["close"]);

/** Request headers that we set ourselves and never copy from the client. */
const FORWARDING = new Set(["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"]);

const isReserved = (name: string) =>
  HOP_BY_HOP.has(name) || FORWARDING.has(name) || name === "content-length";

/** Names listed in Connection are hop-by-hop too (RFC 9110 §7.6.1). */
function connectionListed(connection: string | null): ReadonlySet<string> | null {
  if (!connection) return null;
  // What clients send nearly always: one token that names no header field, and no Set to build.
  if (connection === "keep-alive" || connection === "close") return connection === "close" ? CLOSE : null;
  const names = new Set<string>();
  for (const token of connection.split(",")) {
    const t = token.trim().toLowerCase();
    if (t) names.add(t);
  }
  return names;
}

/** A request whose Connection header is this asks for the connection to close after its response (RFC 9112 §9.6). */
export function asksToClose(connection: string | null): boolean {
  return connection !== null && (connectionListed(connection)?.has("close") ?? false);
}

/** Who sent the request and how it reached the listener: what the forwarding fields say. */
export interface ForwardFacts {
  /** The TCP peer (the client, or a proxy in front of us). */
  peerIp: string;
  /** Whether the peer is in trustedProxies, so its X-Forwarded-* are believed. */
  peerTrusted: boolean;
  /** "http" or "https": how the client reached this listener. */
  proto: string;
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
 * A request's header fields as Bun hands them over in one native call
 * (Headers.toJSON): lowercase names, repeated fields joined (Cookie lines with
 * "; "), Set-Cookie as a list. One object for the whole head, where iterating
 * the Headers makes a pair and an iterator result per field.
 */
export type FieldRecord = Record<string, string | string[]>;

/** What the pass over a request's fields finds, besides the fields that go to the backend as they are. */
export interface ScannedHead {
  host: string | null;
  /** The Cookie header as sent (several lines joined with "; "). */
  cookie: string | null;
  connection: string | null;
  upgrade: string | null;
  contentLength: string | null;
  xForwardedFor: string | null;
  xForwardedProto: string | null;
  xForwardedHost: string | null;
  forwarded: string | null;
}

export function emptyHead(): ScannedHead {
  return {
    host: null,
    cookie: null,
    connection: null,
    upgrade: null,
    contentLength: null,
    xForwardedFor: null,
    xForwardedProto: null,
    xForwardedHost: null,
    forwarded: null,
  };
}

/** What the pass over a request's fields does with one field, by its name. */
enum Field {
  /** Goes to the backend as it is. */
  Pass,
  /** Never goes to the backend: hop-by-hop, or a reserved name spelled with "_". */
  Drop,
  Host,
  Cookie,
  Connection,
  Upgrade,
  ContentLength,
  XForwardedFor,
  XForwardedProto,
  XForwardedHost,
  Forwarded,
  SetCookie,
}

const KNOWN_FIELDS: [string, Field][] = [
  ["host", Field.Host],
  ["cookie", Field.Cookie],
  ["connection", Field.Connection],
  ["upgrade", Field.Upgrade],
  ["content-length", Field.ContentLength],
  ["x-forwarded-for", Field.XForwardedFor],
  ["x-forwarded-proto", Field.XForwardedProto],
  ["x-forwarded-host", Field.XForwardedHost],
  ["forwarded", Field.Forwarded],
  ["set-cookie", Field.SetCookie],
];

/**
 * Field names already classified. A client sends the same few names request
 * after request, so a Map lookup replaces the string tests; names beyond the
 * bound (a client making names up) are classified each time, not stored.
 */
const fieldKinds = new Map<string, Field>();
const FIELD_KINDS_MAX = 4096;
for (const name of HOP_BY_HOP) fieldKinds.set(name, Field.Drop);
for (const [name, kind] of KNOWN_FIELDS) fieldKinds.set(name, kind);

function fieldKind(name: string): Field {
  const known = fieldKinds.get(name);
  if (known !== undefined) return known;
  // CGI-style backends read "_" as "-": Transfer_Encoding or X_Forwarded_For would reach them as
  // framing or forwarding headers tether never checked (nginx drops every underscore name).
  const kind = name.includes("_") && isReserved(name.replaceAll("_", "-")) ? Field.Drop : Field.Pass;
  if (fieldKinds.size < FIELD_KINDS_MAX) fieldKinds.set(name, kind);
  return kind;
}

/**
 * One pass over the request's fields: into `out` (flat: name, value, name,
 * value ...) the fields that go to the backend as they are (hop-by-hop,
 * framing, forwarding fields and the Cookie left out), and into `head` what
 * tether reads of the rest. The Cookie goes to the backend once the pool's
 * rules have taken their own cookies out of it (appendBackendFields).
 */
export function scanRequestFields(fields: FieldRecord, head: ScannedHead, out: string[]): void {
  for (const name in fields) {
    const value = fields[name] as string;
    switch (fieldKind(name)) {
      case Field.Pass:
        out.push(name, value);
        break;
      case Field.Host:
        head.host = value;
        out.push(name, value);
        break;
      case Field.Cookie:
        head.cookie = value;
        break;
      case Field.Connection:
        head.connection = value;
        break;
      case Field.Upgrade:
        head.upgrade = value;
        break;
      case Field.ContentLength:
        head.contentLength = value;
        break;
      case Field.XForwardedFor:
        head.xForwardedFor = value;
        break;
      case Field.XForwardedProto:
        head.xForwardedProto = value;
        break;
      case Field.XForwardedHost:
        head.xForwardedHost = value;
        break;
      case Field.Forwarded:
        head.forwarded = value;
        break;
      case Field.SetCookie:
        // The one field Bun keeps as a list: each line goes on as it came.
        for (const line of fields[name] as unknown as string[]) out.push(name, line);
        break;
    }
  }
  if (head.connection !== null) dropListed(out, head.connection);
}

/**
 * Names listed in Connection are hop-by-hop too (RFC 9110 §7.6.1), removed
 * in place. A client's tokens never take Host from the backend (RFC 9112
 * §3.2 requires it); the forwarding fields and the Cookie are tether's own
 * and are added after this.
 */
function dropListed(out: string[], connection: string): void {
  const listed = connectionListed(connection);
  if (listed === null) return;
  let kept = 0;
  for (let i = 0; i < out.length; i += 2) {
    const name = out[i] as string;
    if (name !== "host" && listed.has(name)) continue;
    out[kept++] = name;
    out[kept++] = out[i + 1] as string;
  }
  out.length = kept;
}

/**
 * Appends the backend's Cookie (persistence rules take their own cookies
 * out; "" or null: none) and the forwarding fields. Values a client sent are
 * kept (and appended to) only when the peer is a trusted proxy.
 */
export function appendBackendFields(
  out: string[],
  head: ScannedHead,
  facts: ForwardFacts,
  cookie: string | null,
): string[] {
  if (cookie) out.push("cookie", cookie);
  // An HTTP/1.0 client may send no Host; an HTTP/1.1 request must carry one, empty when the
  // target has no authority (RFC 9112 3.2), or the backend refuses it.
  if (head.host === null) out.push("host", "");
  const trusted = facts.peerTrusted;
  const hostHeader = head.host ?? "";
  const priorXff = trusted ? head.xForwardedFor : null;
  out.push("x-forwarded-for", priorXff ? `${priorXff}, ${facts.peerIp}` : facts.peerIp);
  out.push("x-forwarded-proto", (trusted ? head.xForwardedProto : null) ?? facts.proto);
  const host = (trusted ? head.xForwardedHost : null) ?? hostHeader;
  if (host) out.push("x-forwarded-host", host);
  const priorForwarded = trusted ? head.forwarded : null;
  const element = forwardedElement(facts.peerIp, facts.proto, hostHeader);
  out.push("forwarded", priorForwarded ? `${priorForwarded}, ${element}` : element);
  return out;
}

/** The last Forwarded element built: a keep-alive client sends request after request with the same one. */
let lastElement = { ip: "", proto: "", host: "", value: "" };

function forwardedElement(ip: string, proto: string, host: string): string {
  const last = lastElement;
  if (last.ip === ip && last.host === host && last.proto === proto) return last.value;
  let value = `for=${forwardedNode(ip)};proto=${proto}`;
  if (host) value += `;host=${forwardedValue(host)}`;
  lastElement = { ip, proto, host, value };
  return value;
}

/**
 * Fields for the backend (flat: name, value, ...): hop-by-hop removed,
 * Content-Length removed (the upstream client frames the body), forwarding
 * fields set. `keepUpgrade` keeps Upgrade/Connection for a WebSocket
 * handshake.
 */
export function backendRequestFields(
  headers: Headers,
  facts: ForwardFacts,
  keepUpgrade = false,
  /** Replaces the Cookie header (persistence rules remove their own cookies); "" drops it. */
  cookie?: string | null,
): string[] {
  const head = emptyHead();
  const out: string[] = [];
  scanRequestFields(headers.toJSON(), head, out);
  if (keepUpgrade) out.push("connection", "upgrade", "upgrade", head.upgrade ?? "websocket");
  return appendBackendFields(out, head, facts, cookie === undefined ? head.cookie : cookie);
}

/**
 * Headers for the client: hop-by-hop and framing removed (Bun.serve frames the
 * response itself). Content-Length is re-added by the caller when the body
 * length is known, so HEAD answers keep it. Appended one by one into a
 * Headers: cheaper for Response to take than a list of pairs, which it walks
 * through the iterator protocol.
 */
export function clientResponseHeaders(headers: readonly [string, string][]): Headers {
  const listed = listedInConnection(headers);
  const out = new Headers();
  for (const [name, value] of headers) if (passesToClient(name, listed)) out.append(name, value);
  return out;
}

/** The names the backend's Connection field lists (hop-by-hop for this response), or null. */
export function listedInConnection(headers: readonly [string, string][]): ReadonlySet<string> | null {
  for (const [name, value] of headers)
    if (name.length === 10 && equalsLower(name, 0, "connection")) return connectionListed(value);
  return null;
}

/** Whether a backend's response field goes on to the client (`listed`: listedInConnection's answer). */
export function passesToClient(name: string, listed: ReadonlySet<string> | null): boolean {
  return !droppedTowardsClient(name) && !listed?.has(name.toLowerCase());
}

/**
 * Response fields never passed to the client, by name length: hop-by-hop,
 * Content-Length (Bun frames the response itself) and Alt-Svc (it names the
 * backend's origin, not tether's: RFC 7838 §2). Looked up by length and
 * compared ignoring case in place, so no field name is lowercased.
 */
const DROPPED_BY_LENGTH: string[][] = [];
for (const name of [...HOP_BY_HOP, "content-length", "alt-svc"]) {
  const same = DROPPED_BY_LENGTH[name.length] ?? [];
  same.push(name);
  DROPPED_BY_LENGTH[name.length] = same;
}

function droppedTowardsClient(name: string): boolean {
  const candidates = DROPPED_BY_LENGTH[name.length];
  if (candidates === undefined) return false;
  for (const c of candidates) if (equalsLower(name, 0, c)) return true;
  return false;
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
