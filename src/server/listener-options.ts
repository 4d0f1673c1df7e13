/**
 * What both HTTP front ends (Bun.serve's and tether's own) take from a
 * listener's config: TLS options and the Strict-Transport-Security value.
 */
import type { TLSOptions } from "bun";
import type { ResolvedListener } from "../config/load.ts";

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
