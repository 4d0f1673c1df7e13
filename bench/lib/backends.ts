/** The HTTP backends process (bench/backend.ts), shared by the benchmark scripts. */
import { join } from "node:path";
import type { Backend } from "./configs.ts";
import { pin } from "./peers.ts";
import { type Child, sleep, spawnLogged } from "./procs.ts";

/**
 * Starts `count` backends in one process pinned to `core` and reads the ports
 * they chose from its {"ready":true,"ports":[...]} line.
 */
export async function startBackends(
  dir: string,
  count: number,
  core: string,
  bodyBytes = 64,
): Promise<{ backends: Backend[]; pid: number; child: Child; countPort: number }> {
  const log = join(dir, "backends.log");
  const script = join(import.meta.dir, "..", "backend.ts");
  const cmd = [
    ...pin(core),
    process.execPath,
    script,
    "--count",
    String(count),
    "--body-bytes",
    String(bodyBytes),
  ];
  const child = spawnLogged("backends", cmd, log);
  for (let waited = 0; waited < 10_000; waited += 50) {
    const line = (await Bun.file(log).text()).split("\n").find((l) => l.startsWith('{"ready"'));
    if (line) {
      const { ports, countPort } = JSON.parse(line) as { ports: number[]; countPort: number };
      const backends = ports.map((port, i) => ({ id: `app-${i + 1}`, port }));
      return { backends, pid: child.proc.pid, child, countPort };
    }
    await sleep(50);
  }
  throw new Error(`backends did not start:\n${await Bun.file(log).text()}`);
}

/** Requests each backend has answered since it started, by id (from the backends' count server). */
export async function backendCounts(countPort: number): Promise<Record<string, number>> {
  const res = await fetch(`http://127.0.0.1:${countPort}/`, { signal: AbortSignal.timeout(2000) });
  return (await res.json()) as Record<string, number>;
}

/** What each backend answered between two readings of backendCounts(). */
export function countsBetween(a: Record<string, number>, b: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(b).map(([id, n]) => [id, n - (a[id] ?? 0)]));
}
