/**
 * Child processes of the harness: spawn with output to a log file, read CPU
 * time and memory from /proc, and stop everything we started — on success,
 * on errors and on Ctrl-C. Processes are only ever ended by the pids we
 * spawned (and their descendants, checked by start time against pid reuse).
 */
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";

export interface Child {
  readonly name: string;
  readonly proc: Subprocess;
  readonly logPath: string;
}

const live = new Set<Child>();

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Spawns `cmd` with stdout and stderr both going to `logPath`, and tracks it for cleanup. */
export function spawnLogged(name: string, cmd: string[], logPath: string, cwd?: string): Child {
  // One fd shared by stdout and stderr keeps the two interleaved in order in one file.
  const fd = openSync(logPath, "w");
  try {
    const proc = Bun.spawn(cmd, { cwd, stdin: "ignore", stdout: fd, stderr: fd });
    const child = { name, proc, logPath };
    live.add(child);
    return child;
  } finally {
    closeSync(fd);
  }
}

/** Last lines of a child's log, for error messages. */
export function logTail(child: Child, lines = 15): string {
  try {
    return readFileSync(child.logPath, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

export const isRunning = (child: Child) => child.proc.exitCode === null && child.proc.signalCode === null;

/** Fields of /proc/<pid>/stat after the command name (which may contain spaces and parens). */
function statFields(pid: number): string[] | null {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, "utf8");
    return s.slice(s.lastIndexOf(")") + 2).split(" ");
  } catch {
    return null;
  }
}

// Indexes into statFields(): field N of proc(5) is at N - 3.
const PPID = 1;
const UTIME = 11;
const STIME = 12;
const STARTTIME = 19;

/** Direct children of `pid`. */
export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const f = statFields(Number(entry));
    if (f && Number(f[PPID]) === pid) out.push(Number(entry));
  }
  return out;
}

/** `pid` and all its descendants. */
export function processTree(pid: number): number[] {
  const tree = [pid];
  for (let i = 0; i < tree.length; i++) tree.push(...childrenOf(tree[i] as number));
  return tree;
}

/** utime and stime of the whole process (all threads), in clock ticks; zeros if it is gone. */
export function cpuTimes(pid: number): { user: number; system: number } {
  const f = statFields(pid);
  return f ? { user: Number(f[UTIME]), system: Number(f[STIME]) } : { user: 0, system: 0 };
}

/** Time a CPU was not idle (user, nice, system, irq, softirq, and steal by the hypervisor), in clock ticks. */
export interface CoreTimes {
  busy: number;
}

/** From /proc/stat's "cpuN" line; null if `cpu` is not a single online CPU. */
export function coreTimes(cpu: string): CoreTimes | null {
  if (!/^\d+$/.test(cpu)) return null;
  const line = readFileSync("/proc/stat", "utf8")
    .split("\n")
    .find((l) => l.startsWith(`cpu${cpu} `));
  if (!line) return null;
  // cpuN user nice system idle iowait irq softirq steal ...
  const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = line
    .trim()
    .split(/\s+/)
    .slice(1)
    .map(Number);
  return { busy: user + nice + system + irq + softirq + steal };
}

/** VmRSS of a process in KiB; 0 if it is gone. */
export function rssKiB(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

const startTime = (pid: number) => statFields(pid)?.[STARTTIME] ?? null;

/** Snapshot of a tree as pid → start time, so a later SIGKILL never hits a reused pid. */
function snapshotTree(pid: number): Map<number, string> {
  const m = new Map<number, string>();
  for (const p of processTree(pid)) {
    const t = startTime(p);
    if (t !== null) m.set(p, t);
  }
  return m;
}

function killSnapshot(snap: Map<number, string>): void {
  for (const [pid, t] of snap) {
    if (startTime(pid) !== t) continue;
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
}

/** SIGTERM, wait up to `graceMs`, then SIGKILL whatever of its tree is left. */
export async function stopChild(child: Child, graceMs = 3000): Promise<void> {
  live.delete(child);
  if (!isRunning(child)) return;
  // Taken before SIGTERM: nginx's workers must be known while the master still owns them.
  const snap = snapshotTree(child.proc.pid);
  child.proc.kill("SIGTERM");
  const exited = await Promise.race([child.proc.exited.then(() => true), sleep(graceMs).then(() => false)]);
  if (!exited) child.proc.kill("SIGKILL");
  killSnapshot(snap);
}

export async function stopAll(): Promise<void> {
  await Promise.all([...live].map((c) => stopChild(c)));
}

const tempDirs = new Set<string>();

/** A scratch folder that is removed when the harness exits, however it exits. */
export function makeTempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  tempDirs.add(dir);
  return dir;
}

/** For a synchronous 'exit' handler: no waiting, SIGKILL every tracked tree, remove scratch folders. */
export function cleanupSync(): void {
  for (const c of live) if (isRunning(c)) killSnapshot(snapshotTree(c.proc.pid));
  live.clear();
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
  tempDirs.clear();
}

/** Runs a short command and returns its stdout+stderr (used for versions and machine facts). */
export function capture(cmd: string[]): string {
  try {
    const r = Bun.spawnSync(cmd, { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
    return `${r.stdout.toString()}${r.stderr.toString()}`.trim();
  } catch {
    return "";
  }
}

/** Stops everything we started on Ctrl-C, SIGTERM, an uncaught error or a blown time budget. */
export function installCleanup(budgetMs: number): void {
  let stopping = false;
  const bail = async (why: string, code: number) => {
    if (stopping) return;
    stopping = true;
    console.error(`\n${why}: stopping every process the bench started...`);
    await stopAll();
    cleanupSync();
    process.exit(code);
  };
  process.on("SIGINT", () => void bail("interrupted", 130));
  process.on("SIGTERM", () => void bail("terminated", 143));
  process.on("uncaughtException", (e) => void bail(`error: ${e.stack ?? e}`, 1));
  process.on("unhandledRejection", (e) => void bail(`error: ${(e as Error)?.stack ?? e}`, 1));
  process.on("exit", cleanupSync);
  setTimeout(
    () => void bail(`time budget of ${Math.round(budgetMs / 1000)} s exceeded`, 124),
    budgetMs,
  ).unref();
}
