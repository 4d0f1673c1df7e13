/**
 * What both HTTP front ends (Bun.serve's and tether's own) take from a
 * listener's config: TLS options, the Strict-Transport-Security value, the
 * redirect to https; and the client's address as both report it.
 */
import type { TLSOptions } from "bun";
import type { ResolvedListener } from "../config/load.ts";
import { normalizeIp } from "../proxy/trusted-proxies.ts";

/**
 * TLS 1.2 suites: AEAD with forward secrecy only (Mozilla "intermediate").
 * Bun's default list still offers CBC, SHA-1 and static-RSA suites. TLS 1.3
 * suites are all AEAD and are not affected by this list.
 */
export const TLS12_CIPHERS = [
  "ECDHE-ECDSA-AES128-GCM-SHA256",
  "ECDHE-RSA-AES128-GCM-SHA256",
  "ECDHE-ECDSA-AES256-GCM-SHA384",
  "ECDHE-RSA-AES256-GCM-SHA384",
  "ECDHE-ECDSA-CHACHA20-POLY1305",
  "ECDHE-RSA-CHACHA20-POLY1305",
].join(":");

export function tlsOptions(l: ResolvedListener): TLSOptions[] | undefined {
  if (l.protocol !== "https") return undefined;
  return l.certificates.map((c) => ({
    cert: c.cert,
    key: c.key,
    ciphers: TLS12_CIPHERS,
    ...(c.serverName ? { serverName: c.serverName } : {}),
  }));
}

export function hstsValue(l: ResolvedListener): string | null {
  if (l.protocol !== "https" || l.hsts === false) return null;
  const h = l.hsts === true ? { maxAgeMs: 31_536_000_000, includeSubDomains: false, preload: false } : l.hsts;
  let v = `max-age=${Math.floor(h.maxAgeMs / 1000)}`;
  if (h.includeSubDomains) v += "; includeSubDomains";
  if (h.preload) v += "; preload";
  return v;
}

/**
 * The 308 answer an http listener with redirectToHttps gives (308 keeps the
 * method and body, RFC 9110 15.4.9), or null: none asked for, or no Host to
 * name (the request is then proxied as it is).
 */
export function redirectToHttps(host: string | null, target: string, l: ResolvedListener): Response | null {
  if (l.protocol !== "http" || l.redirectToHttps === false || !host) return null;
  // The port goes: the https URL names its own (or none, for 443).
  const name = host.startsWith("[") ? host.slice(0, host.indexOf("]") + 1) : host.split(":")[0];
  const port = typeof l.redirectToHttps === "object" ? `:${l.redirectToHttps.port}` : "";
  return new Response(null, { status: 308, headers: { location: `https://${name}${port}${target}` } });
}

/** The client's address; an IPv4 peer (the common case) needs no normalizing. */
export function peerAddress(address: string | undefined, ipv4: boolean): string {
  if (address === undefined) return "0.0.0.0";
  return ipv4 ? address : normalizeIp(address) || "0.0.0.0";
}
