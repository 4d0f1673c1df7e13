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
): Promise<{ backends: Backend[]; pid: number; child: Child }> {
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
      const ports = (JSON.parse(line) as { ports: number[] }).ports;
      return { backends: ports.map((port, i) => ({ id: `app-${i + 1}`, port })), pid: child.proc.pid, child };
    }
    await sleep(50);
  }
  throw new Error(`backends did not start:\n${await Bun.file(log).text()}`);
}
