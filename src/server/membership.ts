/**
 * The running set of dynamic backends (config/members.ts) and how changes to
 * it are applied: each change merges the overlay into the current base
 * config and hands the result to `apply`, which is a reload (prepare/commit
 * in every worker thread). Changes are applied one after another; each apply
 * merges the latest overlay, so a burst of changes costs at most one reload
 * each and none is lost. Lives in the thread that owns the control plane
 * (the primary, or the only thread).
 *
 * Removal: the member is marked removing (merged as "drain", with its drain
 * deadline: the pool's drainDeadlineMs from now, removal.ts), then a sweep
 * lets it leave once removal.ts says so. At the deadline every thread has
 * already put it in maintenance and closed its WebSockets (server/app.ts);
 * its sessions move once, to their next choice.
 */
import type { Audit } from "../audit.ts";
import type { Config } from "../config/load.ts";
import { composeConfig, type Member, memberKey, memberProblem } from "../config/members.ts";
import type { Runtime } from "../contracts.ts";
import type { Logger } from "../log.ts";
import { removalDeadlineMs, removalVerdict } from "../pool/removal.ts";

const SWEEP_MS = 250;

export interface MembershipOptions {
  log: Logger;
  audit: Audit;
  current(): Runtime;
  /** Makes every thread serve this config (a reload). */
  apply(config: Config): Promise<void>;
  /** How stale the primary's view of a backend's load may be (removal.ts). */
  settleMs: number;
  /** Told of every API member added or gone here, to share it (Redis); not of those shared by others. */
  onApiChange?(member: Member, present: boolean): void;
}

export type AddResult = { ok: true } | { ok: false; conflict: boolean; reason: string };

export class Membership {
  private base: Config;
  private readonly members = new Map<string, Member>();
  /** Removing members: when their drain began. */
  private readonly draining = new Map<string, number>();
  private chain: Promise<void> = Promise.resolve();
  private sweeper: ReturnType<typeof setInterval> | null = null;
  private readonly reportedSkips = new Set<string>();
  /** Removing members whose removal another instance made (and audited): logged here, not audited. */
  private readonly removedElsewhere = new Set<string>();

  constructor(
    base: Config,
    private readonly opts: MembershipOptions,
  ) {
    this.base = base;
  }

  /** The base config with the overlay merged in; skipped members are logged once. */
  compose(): Config {
    const { config, skipped } = composeConfig(this.base, this.members.values());
    for (const { member, reason } of skipped) {
      const k = `${memberKey(member.pool, member.id)}\0${reason}`;
      if (this.reportedSkips.has(k)) continue;
      this.reportedSkips.add(k);
      this.opts.log.warn("backend left out", {
        pool: member.pool,
        backend: member.id,
        source: member.source,
        reason,
      });
    }
    return config;
  }

  /** A new config file (SIGHUP): the overlay is merged into it from now on. */
  setBase(config: Config): void {
    this.base = config;
    this.reportedSkips.clear();
  }

  get baseConfig(): Config {
    return this.base;
  }

  list(): Member[] {
    return [...this.members.values()];
  }

  get(pool: string, id: string): Member | undefined {
    return this.members.get(memberKey(pool, id));
  }

  /** Members known before anything serves (a snapshot): merged by the caller's first build. */
  restore(members: Iterable<Member>): number {
    let n = 0;
    for (const m of members) {
      if (memberProblem(this.base, m)) continue;
      this.members.set(memberKey(m.pool, m.id), { ...m, removing: false });
      n++;
    }
    return n;
  }

  /**
   * Adds a member, or updates one of the same source (a changed address or
   * weight; a removing one is kept). A member of another source with the
   * same id is a conflict. Resolves once every thread serves it.
   * `elsewhere`: another instance made the change (shared through Redis),
   * and audited it; here it is logged, and not shared again.
   */
  async add(m: Omit<Member, "removing">, by: string = m.source, elsewhere = false): Promise<AddResult> {
    const problem = memberProblem(this.base, m);
    if (problem) return { ok: false, conflict: problem.includes("is in the config file"), reason: problem };
    const key = memberKey(m.pool, m.id);
    const old = this.members.get(key);
    if (old && old.source !== m.source)
      return { ok: false, conflict: true, reason: `backend "${m.id}" was added by ${old.source}` };
    if (old && !old.removing && old.url === m.url && old.weight === m.weight) return { ok: true };
    this.members.set(key, { ...m, removing: false });
    this.draining.delete(key);
    this.removedElsewhere.delete(key);
    const fields = { pool: m.pool, backend: m.id, url: m.url, weight: m.weight, source: m.source, by };
    this.opts.log.info(old ? "backend updated" : "backend added", fields);
    if (!elsewhere) this.opts.audit.emit(old ? "backend.updated" : "backend.added", fields);
    if (m.source === "api" && !elsewhere) this.opts.onApiChange?.({ ...m }, true);
    await this.applyLogged();
    return { ok: true };
  }

  /**
   * Several changes from one source in one apply (a DNS answer): members
   * added or updated, others starting their removal. A member that cannot
   * join (an id of another source, a bad URL) is logged and left out.
   */
  async batch(
    pool: string,
    source: Member["source"],
    upsert: { id: string; url: string; weight: number }[],
    remove: string[],
  ): Promise<void> {
    let changed = false;
    for (const u of upsert) {
      const m = { pool, source, ...u };
      const key = memberKey(pool, u.id);
      const old = this.members.get(key);
      const problem =
        memberProblem(this.base, m) ?? (old && old.source !== source ? `added by ${old.source}` : null);
      if (problem) {
        this.opts.log.warn("backend left out", { pool, backend: u.id, source, reason: problem });
        continue;
      }
      if (old && !old.removing && old.url === u.url && old.weight === u.weight) continue;
      this.members.set(key, { ...m, removing: false });
      this.draining.delete(key);
      changed = true;
      const fields = { pool, backend: u.id, url: u.url, weight: u.weight, source, by: source };
      this.opts.log.info(old ? "backend updated" : "backend added", fields);
      this.opts.audit.emit(old ? "backend.updated" : "backend.added", fields);
    }
    for (const id of remove) {
      const m = this.members.get(memberKey(pool, id));
      if (!m || m.source !== source || m.removing) continue;
      const until = this.startRemoval(m);
      changed = true;
      const fields = { pool, backend: id, source, by: source, deadline: new Date(until).toISOString() };
      this.opts.log.info("backend removing", fields);
      this.opts.audit.emit("backend.removing", fields);
    }
    if (this.draining.size) this.startSweeper();
    if (changed) await this.applyLogged();
  }

  /** Drops every member of a source from a pool at once (its discovery was turned off). */
  async forgetSource(pool: string, source: Member["source"]): Promise<void> {
    let changed = false;
    for (const [key, m] of this.members)
      if (m.pool === pool && m.source === source) {
        this.members.delete(key);
        this.draining.delete(key);
        changed = true;
      }
    if (changed) await this.applyLogged();
  }

  /**
   * Starts removing a member: it drains, then leaves (see removal.ts). False
   * when it is no member. `elsewhere` as for add().
   */
  async remove(pool: string, id: string, by: string, elsewhere = false): Promise<boolean> {
    const key = memberKey(pool, id);
    const m = this.members.get(key);
    if (!m) return false;
    if (m.removing) return true;
    const until = this.startRemoval(m);
    const fields = { pool, backend: id, source: m.source, by, deadline: new Date(until).toISOString() };
    this.opts.log.info("backend removing", fields);
    if (elsewhere) this.removedElsewhere.add(key);
    else this.opts.audit.emit("backend.removing", fields);
    if (m.source === "api" && !elsewhere) this.opts.onApiChange?.({ ...m }, false);
    this.startSweeper();
    await this.applyLogged();
    return true;
  }

  /** Drops a member at once, without a drain (another instance removed it, or its pool is gone). */
  async forget(pool: string, id: string): Promise<void> {
    const key = memberKey(pool, id);
    if (!this.members.delete(key)) return;
    this.draining.delete(key);
    await this.applyLogged();
  }

  /**
   * A new config file (SIGHUP): every thread serves it with the overlay
   * merged in, and it becomes the base only once that worked (a failed
   * reload leaves the previous base in force). Rejects when it failed.
   */
  reload(next: Config): Promise<void> {
    return this.enqueue(() => {
      const { config } = composeConfig(next, this.members.values());
      return this.opts.apply(config).then(() => this.setBase(next));
    });
  }

  stop(): void {
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = null;
  }

  /** Runs after every change queued before it; rejects when it failed (the queue goes on). */
  private enqueue(step: () => Promise<void> = () => this.opts.apply(this.compose())): Promise<void> {
    const run = this.chain.then(step);
    this.chain = run.catch(() => {});
    return run;
  }

  /** A membership change that could not be applied is logged; the next change retries the merge. */
  private async applyLogged(): Promise<void> {
    try {
      await this.enqueue();
    } catch (e) {
      this.opts.log.error("backend change not applied", { error: String(e) });
    }
  }

  /** Marks a member removing, with its drain deadline; returns the deadline. */
  private startRemoval(m: Member, now = Date.now()): number {
    m.removing = true;
    m.removeUntil = now + removalDeadlineMs(this.base.pools[m.pool]?.drainDeadlineMs);
    this.draining.set(memberKey(m.pool, m.id), now);
    return m.removeUntil;
  }

  private startSweeper(): void {
    if (this.sweeper) return;
    this.sweeper = setInterval(() => this.sweep(), SWEEP_MS);
  }

  /** Lets every removing member whose drain is over leave its pool. */
  sweep(now = Date.now()): void {
    let changed = false;
    for (const [key, since] of this.draining) {
      const m = this.members.get(key);
      if (!m) {
        this.draining.delete(key);
        continue;
      }
      const pool = this.opts.current().pools.get(m.pool);
      const b = pool?.get(m.id);
      const verdict = removalVerdict({
        now,
        since,
        until: m.removeUntil ?? since,
        load: b ? b.inflight + b.websockets : 0,
        settleMs: this.opts.settleMs,
      });
      if (verdict === "wait") continue;
      this.draining.delete(key);
      this.members.delete(key);
      changed = true;
      const fields = { pool: m.pool, backend: m.id, source: m.source, after: verdict };
      this.opts.log.info("backend removed", fields);
      if (!this.removedElsewhere.delete(key)) this.opts.audit.emit("backend.removed", fields);
    }
    if (this.draining.size === 0) this.stop();
    if (changed) void this.applyLogged();
  }
}
