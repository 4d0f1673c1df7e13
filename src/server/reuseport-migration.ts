/**
 * net.ipv4.tcp_migrate_req: what lets a reload reopen a listener without
 * resetting connections. Closing an SO_REUSEPORT socket resets the
 * connections the kernel has already queued on it; with this setting
 * (Linux 5.14+) they move to another listener on the same port instead.
 */
import { readFileSync, writeFileSync } from "node:fs";
import type { Logger } from "../log.ts";

export const MIGRATE_REQ = "/proc/sys/net/ipv4/tcp_migrate_req";
/** Why the kernel will not migrate queued connections (null: it will, or not Linux); settled once per process. */
let migrateProblem: { msg: string; error?: string } | null | undefined;
let migrateWarned = false;

/**
 * A reload that reopens a listener closes the old SO_REUSEPORT socket while
 * the kernel is still queueing connections on it; Linux resets those unless
 * net.ipv4.tcp_migrate_req (5.14+) moves them to another listener on the
 * port. Turned on once per process when it may be. When it cannot, the
 * warning is logged once, where it matters: at start with worker threads
 * (there every reopening reload reset connections, measured), with one
 * thread at the first reload that reopens a listener.
 */
export function ensureMigrateReq(log: Logger, warn: boolean): void {
  if (migrateProblem === undefined) migrateProblem = enableMigrateReq(log);
  if (!warn || !migrateProblem || migrateWarned) return;
  migrateWarned = true;
  log.warn(migrateProblem.msg, {
    consequence: "a reload that reopens a listener can reset connections queued on the old one",
    fix: "sysctl -w net.ipv4.tcp_migrate_req=1",
    ...(migrateProblem.error ? { error: migrateProblem.error } : {}),
  });
}

function enableMigrateReq(log: Logger): { msg: string; error?: string } | null {
  if (process.platform !== "linux") return null;
  try {
    if (readFileSync(MIGRATE_REQ, "utf8").trim() === "1") return null;
  } catch {
    return { msg: "net.ipv4.tcp_migrate_req is not available (Linux 5.14+)" };
  }
  try {
    writeFileSync(MIGRATE_REQ, "1");
    log.info("set net.ipv4.tcp_migrate_req=1", {
      why: "reopened listeners hand their queued connections on",
    });
    return null;
  } catch (e) {
    return {
      msg: "net.ipv4.tcp_migrate_req is 0 and could not be set",
      error: (e as NodeJS.ErrnoException).code ?? String(e),
    };
  }
}
