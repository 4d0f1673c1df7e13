/**
 * DNS discovery's decisions, pure: what a lookup's answer does to the set of
 * discovered backends. Nothing here resolves names or keeps time.
 *
 * - A failed lookup or an empty answer changes nothing: DNS trouble must
 *   never empty a pool (the caller logs and counts it).
 * - A record that appears is added; one that changes address or weight is
 *   updated (same id: its sessions stay).
 * - A record missing from `holdCount` consecutive answers is removed (it then
 *   drains before it leaves); one that comes back before that is simply kept.
 *   A hold rides out a resolver that rotates a long answer or a record
 *   briefly flapping.
 * - At most `maxBackends` are kept: backends already in the pool first, then
 *   new records in id order, so a runaway answer cannot grow the pool and the
 *   same answer gives the same set in every instance.
 * - SRV: only the best (lowest) priority with any backend not known down is
 *   used (RFC 2782: lower priorities are for when the better ones fail).
 */
import { createHash } from "node:crypto";

export interface DnsRecord {
  /** Stable: from address and port (A/AAAA) or SRV target and port. */
  id: string;
  url: string;
  weight: number;
  /** SRV priority; 0 for A/AAAA. */
  priority: number;
  /** The name that resolved to it (SRV target, or the name looked up): https backends are checked against it. */
  serverName?: string;
}

export interface Held {
  record: DnsRecord;
  /** Consecutive answers it was missing from. */
  missing: number;
}

export interface ReconcileInput {
  /** The discovered backends in the pool now, by id. */
  current: ReadonlyMap<string, Held>;
  /** The records answered; null when the lookup failed. */
  answer: readonly DnsRecord[] | null;
  holdCount: number;
  maxBackends: number;
  /** Known down by health checks (SRV priority fallback); unknown ids count as healthy. */
  isDown?: (id: string) => boolean;
}

export interface ReconcileResult {
  outcome: "ok" | "failed" | "empty";
  /** The set after this answer (held records included). */
  next: Map<string, Held>;
  /** New or changed records. */
  upsert: DnsRecord[];
  /** Ids missing for holdCount answers. */
  remove: string[];
  /** Records ignored because of maxBackends. */
  capped: number;
}

const byId = (a: { id: string }, b: { id: string }) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

export function reconcile(input: ReconcileInput): ReconcileResult {
  const { current, answer, holdCount, maxBackends } = input;
  if (answer === null || answer.length === 0)
    return {
      outcome: answer === null ? "failed" : "empty",
      next: new Map(current),
      upsert: [],
      remove: [],
      capped: 0,
    };
  const seen = new Map<string, DnsRecord>();
  for (const r of usable(answer, input.isDown)) if (!seen.has(r.id)) seen.set(r.id, r);

  const next = new Map<string, Held>();
  const upsert: DnsRecord[] = [];
  const remove: string[] = [];
  for (const [id, held] of current) {
    const r = seen.get(id);
    if (r) {
      next.set(id, { record: r, missing: 0 });
      if (r.url !== held.record.url || r.weight !== held.record.weight) upsert.push(r);
    } else if (held.missing + 1 >= holdCount) remove.push(id);
    else next.set(id, { record: held.record, missing: held.missing + 1 });
  }
  const fresh = [...seen.values()].filter((r) => !current.has(r.id)).sort(byId);
  const room = Math.max(0, maxBackends - next.size);
  for (const r of fresh.slice(0, room)) {
    next.set(r.id, { record: r, missing: 0 });
    upsert.push(r);
  }
  return { outcome: "ok", next, upsert, remove, capped: Math.max(0, fresh.length - room) };
}

/** The records of the best priority that has a backend not known down (all of them for A/AAAA). */
function usable(answer: readonly DnsRecord[], isDown: ((id: string) => boolean) | undefined): DnsRecord[] {
  const levels = [...new Set(answer.map((r) => r.priority))].sort((a, b) => a - b);
  if (levels.length <= 1) return [...answer];
  for (const p of levels) {
    const level = answer.filter((r) => r.priority === p);
    if (!isDown || level.some((r) => !isDown(r.id))) return level;
  }
  return answer.filter((r) => r.priority === levels[0]);
}

/**
 * A backend id from a host (an address or an SRV target) and port, the same
 * in every lookup, restart and instance. Ids may not hold ':' (cluster keys
 * split on it), so an IPv6 address's colons become '-' ("fd00::1" →
 * "fd00--1_8080"); IPv4 addresses and host names have no ':' and keep their
 * form. A name too long for an id (63 characters) keeps its head and a hash.
 */
export function discoveredId(host: string, port: number): string {
  const h = host.replace(/\.$/, "").toLowerCase().replaceAll(":", "-");
  const id = `${h}_${port}`;
  if (id.length <= 63 && /^[a-z0-9]/.test(id)) return id;
  const digest = createHash("sha256").update(`${host}:${port}`).digest("hex").slice(0, 12);
  return `d${h.replace(/^[^a-z0-9]+/, "").slice(0, 36)}.${digest}_${port}`;
}

/** The backend URL for an address and port. */
export function discoveredUrl(scheme: string, address: string, port: number): string {
  return `${scheme}://${address.includes(":") ? `[${address}]` : address}:${port}`;
}

/** When to look again: the answer's smallest TTL, but never sooner than intervalMs. */
export function nextLookupMs(intervalMs: number, ttlSec: number | undefined): number {
  return ttlSec === undefined ? intervalMs : Math.max(intervalMs, ttlSec * 1000);
}
