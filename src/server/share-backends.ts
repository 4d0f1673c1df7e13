/**
 * Backends added through the admin API, shared with the other instances on
 * the same Redis: changes they make are applied here as membership changes
 * (logged, audited only where they were made), and the shared set read
 * after every (re)connect brings this instance up to date
 * (state/shared-backends.ts decides what changes). While Redis is down
 * nothing here runs: the last known set stays.
 */
import type { Logger } from "../log.ts";
import type { ClusterSync } from "../state/cluster.ts";
import { type SharedBackend, syncShared } from "../state/shared-backends.ts";
import type { Membership } from "./membership.ts";

const BY = "another instance";

export function shareApiBackends(cluster: ClusterSync, membership: Membership, log: Logger): void {
  const add = async (b: SharedBackend) => {
    const r = await membership.add({ ...b, source: "api" }, BY, true);
    if (!r.ok)
      log.warn("shared backend left out", { pool: b.pool, backend: b.id, url: b.url, reason: r.reason });
  };
  const remove = (b: { pool: string; id: string }) => membership.remove(b.pool, b.id, BY, true);
  cluster.shareBackends({
    applyBackend(b, present) {
      void (present ? add(b) : remove(b));
    },
    syncBackends(shared) {
      const local = membership.list().filter((m) => m.source === "api");
      const { upsert, remove: gone, seed } = syncShared(local, shared);
      if (seed.length) log.info("cluster: sharing this instance's API backends", { backends: seed.length });
      for (const b of seed) cluster.publishBackend(b, true);
      for (const b of upsert) void add(b);
      for (const b of gone) void remove(b);
    },
  });
}
