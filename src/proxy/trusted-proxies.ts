/**
 * The set of peers whose X-Forwarded-For / Forwarded headers are believed.
 * node:net's BlockList does the CIDR matching for both address families.
 */
import { BlockList, isIP } from "node:net";

export interface TrustedProxies {
  has(ip: string): boolean;
}

/** "::ffff:10.0.0.1" (an IPv4 client on a dual-stack socket) → "10.0.0.1"; "" if not an IP. */
export function normalizeIp(ip: string): string {
  const v4mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  const s = v4mapped?.[1] ?? ip;
  return isIP(s) ? s : "";
}

export function trustedProxies(cidrs: readonly string[]): TrustedProxies {
  const list = new BlockList();
  for (const cidr of cidrs) {
    const [addr = "", bits] = cidr.split("/");
    const family = isIP(addr) === 6 ? "ipv6" : "ipv4";
    const prefix = bits === undefined ? (family === "ipv6" ? 128 : 32) : Number(bits);
    list.addSubnet(addr, prefix, family);
  }
  const empty = cidrs.length === 0;
  return {
    has(ip: string) {
      if (empty) return false;
      const n = normalizeIp(ip);
      if (!n) return false;
      return list.check(n, isIP(n) === 6 ? "ipv6" : "ipv4");
    },
  };
}
