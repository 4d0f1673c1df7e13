/**
 * client-ip: a hash of the client address, masked so that clients behind one
 * NAT pool can stay together (ipv4Prefix 24) and an IPv6 client's changing
 * interface identifier does not move it (ipv6Prefix 64).
 */
import { isIP } from "node:net";
import type { Decision, RequestFacts, Rule } from "./types.ts";

function maskV4(ip: string, bits: number): string {
  const n = ip.split(".").reduce((acc, part) => (acc << 8) | Number(part), 0) >>> 0;
  const masked = bits === 0 ? 0 : (n & (0xffffffff << (32 - bits))) >>> 0;
  return `${masked >>> 24}.${(masked >>> 16) & 255}.${(masked >>> 8) & 255}.${masked & 255}/${bits}`;
}

function expandV6(ip: string): number[] {
  const [head = "", tail] = ip.split("::");
  const h = head ? head.split(":") : [];
  const t = tail ? tail.split(":") : [];
  const fill = tail === undefined ? [] : Array(8 - h.length - t.length).fill("0");
  return [...h, ...fill, ...t].map((g) => Number.parseInt(g || "0", 16));
}

function maskV6(ip: string, bits: number): string {
  const groups = expandV6(ip);
  const out = groups.map((g, i) => {
    const keep = Math.max(0, Math.min(16, bits - i * 16));
    return keep === 0 ? 0 : g & (0xffff << (16 - keep)) & 0xffff;
  });
  return `${out.map((g) => g.toString(16)).join(":")}/${bits}`;
}

export function maskedAddress(ip: string, ipv4Prefix: number, ipv6Prefix: number): string | null {
  const family = isIP(ip);
  if (family === 4) return maskV4(ip, ipv4Prefix);
  if (family === 6) return maskV6(ip, ipv6Prefix);
  return null;
}

export class ClientIpRule implements Rule {
  readonly name = "client-ip" as const;

  constructor(
    private readonly ipv4Prefix: number,
    private readonly ipv6Prefix: number,
  ) {}

  decide(req: RequestFacts): Decision {
    const key = maskedAddress(req.clientIp, this.ipv4Prefix, this.ipv6Prefix);
    return key === null
      ? { kind: "none", rule: this.name }
      : { kind: "hash", key: `ip:${key}`, rule: this.name };
  }
}
