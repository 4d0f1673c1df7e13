/**
 * One DNS lookup for a pool's discover block, through node:dns's Resolver
 * (setServers reaches a resolver on any address and port; Bun 1.4.5 gives
 * A/AAAA TTLs but no SRV TTL, so SRV answers are looked up every intervalMs).
 * SRV targets are resolved through the same resolver, never the system's.
 */
import { Resolver } from "node:dns/promises";
import type { DiscoverConfig } from "../config/schema.ts";
import { type DnsRecord, discoveredId, discoveredUrl } from "./reconcile.ts";

export type LookupResult = { records: DnsRecord[]; ttlSec?: number } | { error: string };

export function createResolver(d: DiscoverConfig): Resolver {
  // tries: 1: a timeout is a failed lookup (the last set stays), not a longer wait.
  const r = new Resolver({ timeout: d.timeoutMs, tries: 1 });
  if (d.resolver) r.setServers([d.resolver]);
  return r;
}

export async function lookup(r: Resolver, d: DiscoverConfig): Promise<LookupResult> {
  try {
    if (d.type === "SRV") return { records: await srv(r, d) };
    const answer =
      d.type === "A" ? await r.resolve4(d.dns, { ttl: true }) : await r.resolve6(d.dns, { ttl: true });
    const port = d.port ?? 0;
    const records = answer.map((a) => ({
      id: discoveredId(a.address, port),
      url: discoveredUrl(d.scheme, a.address, port),
      weight: 1,
      priority: 0,
      serverName: hostName(d.dns),
    }));
    const ttls = answer.map((a) => a.ttl);
    return ttls.length ? { records, ttlSec: Math.min(...ttls) } : { records };
  } catch (e) {
    return { error: errorCode(e) };
  }
}

async function srv(r: Resolver, d: DiscoverConfig): Promise<DnsRecord[]> {
  const answer = await r.resolveSrv(d.dns);
  const out: DnsRecord[] = [];
  for (const s of answer) {
    const address = await targetAddress(r, s.name);
    if (!address) continue;
    out.push({
      id: discoveredId(s.name, s.port),
      url: discoveredUrl(d.scheme, address, s.port),
      // SRV weights run 0-65535; a backend's 0-1000, where 0 would take no sessions at all.
      weight: Math.min(1000, Math.max(1, s.weight)),
      priority: s.priority,
      // The target, not its address: that is the name its certificate carries.
      serverName: hostName(s.name),
    });
  }
  return out;
}

/** The target's first address (IPv4 first, then IPv6), or null when it has none. */
async function targetAddress(r: Resolver, name: string): Promise<string | null> {
  for (const family of [4, 6] as const) {
    try {
      const list = family === 4 ? await r.resolve4(name) : await r.resolve6(name);
      // Sorted: every instance picks the same address for the same answer.
      const first = [...list].sort()[0];
      if (first) return first;
    } catch {
      // No address of this family: try the other.
    }
  }
  return null;
}

/** A DNS name as a TLS server name: no trailing dot, lower case. */
const hostName = (name: string) => name.replace(/\.$/, "").toLowerCase();

function errorCode(e: unknown): string {
  const code = (e as { code?: unknown }).code;
  return typeof code === "string" ? code : String((e as Error).message ?? e);
}
