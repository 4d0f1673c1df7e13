/**
 * The client side of the WebSocket opening handshake (RFC 6455 4.1), pure:
 * the request's header list, and the checks a 101 answer must pass. No
 * extension is offered, so frames are never compressed; a backend that
 * answers with one anyway fails the handshake.
 */
import { createHash } from "node:crypto";
import { ProxyError } from "../errors.ts";
import type { ResponseHead } from "./parser.ts";
import type { UpstreamTarget } from "./types.ts";

/** RFC 6455 1.3: appended to the key before hashing. */
const ACCEPT_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/**
 * Fields the handshake sets itself; a caller's copies are dropped. The
 * caller's Sec-WebSocket-Protocol is kept: it is the client's offer.
 */
const OWN_FIELDS = new Set([
  "connection",
  "upgrade",
  "sec-websocket-key",
  "sec-websocket-version",
  "sec-websocket-accept",
  "sec-websocket-extensions",
  "content-length",
  "transfer-encoding",
]);

/** A fresh Sec-WebSocket-Key: 16 random bytes, base64 (RFC 6455 4.1, item 7). */
export function newKey(): string {
  return Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString("base64");
}

/** The Sec-WebSocket-Accept a server must answer `key` with (RFC 6455 4.2.2, item 5.4). */
export function acceptFor(key: string): string {
  return createHash("sha1")
    .update(key + ACCEPT_GUID)
    .digest("base64");
}

/** Host for the target: the port is left out when it is the scheme's default (RFC 9110 7.2). */
export function hostFor(target: UpstreamTarget): string {
  const host = target.hostname.includes(":") ? `[${target.hostname}]` : target.hostname;
  return target.port === (target.tls ? 443 : 80) ? host : `${host}:${target.port}`;
}

/**
 * The upgrade request's fields: the caller's (a Host among them is kept,
 * else one is made from the target), then Upgrade, Connection, the version
 * and the key.
 */
export function handshakeHeaders(
  target: UpstreamTarget,
  headers: readonly [string, string][],
  key: string,
): [string, string][] {
  const out: [string, string][] = [];
  let host = false;
  for (const field of headers) {
    const name = field[0].toLowerCase();
    if (OWN_FIELDS.has(name)) continue;
    if (name === "host") host = true;
    out.push(field);
  }
  if (!host) out.unshift(["Host", hostFor(target)]);
  out.push(
    ["Upgrade", "websocket"],
    ["Connection", "Upgrade"],
    ["Sec-WebSocket-Version", "13"],
    ["Sec-WebSocket-Key", key],
  );
  return out;
}

/** The subprotocols offered in Sec-WebSocket-Protocol fields (RFC 6455 11.3.4: a comma-separated list). */
export function offeredProtocols(headers: readonly [string, string][]): string[] {
  const out: string[] = [];
  for (const [name, value] of headers) {
    if (name.toLowerCase() !== "sec-websocket-protocol") continue;
    for (const element of value.split(",")) {
      const protocol = element.trim();
      if (protocol !== "") out.push(protocol);
    }
  }
  return out;
}

/**
 * Checks a 101 answer as a client must (RFC 6455 4.1, the items after
 * "If the status code received from the server is not 101"): Upgrade:
 * websocket, Connection: upgrade, the accept value for our key, no
 * extension (none was offered), and a subprotocol only from the offer.
 * Returns the chosen subprotocol; throws ProxyError BAD_RESPONSE.
 */
export function checkSwitch(head: ResponseHead, key: string, offered: readonly string[]): string | null {
  let upgrade: string | null = null;
  let connection = "";
  let accept: string | null = null;
  let protocol: string | null = null;
  for (const [name, value] of head.headers) {
    switch (name.toLowerCase()) {
      case "upgrade":
        upgrade = value;
        break;
      case "connection":
        connection += `${value},`;
        break;
      case "sec-websocket-accept":
        if (accept !== null) refuse("more than one Sec-WebSocket-Accept");
        accept = value;
        break;
      case "sec-websocket-extensions":
        if (value.trim() !== "") refuse("an extension that was not offered");
        break;
      case "sec-websocket-protocol":
        if (protocol !== null) refuse("more than one Sec-WebSocket-Protocol");
        protocol = value.trim();
        break;
    }
  }
  if (upgrade?.trim().toLowerCase() !== "websocket") refuse("101 without Upgrade: websocket");
  if (!connection.split(",").some((token) => token.trim().toLowerCase() === "upgrade")) {
    refuse("101 without Connection: upgrade");
  }
  if (accept === null) refuse("101 without Sec-WebSocket-Accept");
  if (accept.trim() !== acceptFor(key)) refuse("Sec-WebSocket-Accept does not match the key");
  if (protocol !== null && !offered.includes(protocol)) refuse(`subprotocol "${protocol}" was not offered`);
  return protocol;
}

function refuse(detail: string): never {
  throw new ProxyError("BAD_RESPONSE", `websocket handshake: ${detail}`);
}
