/**
 * Allocation per proxied request: bytes and objects that tether allocates for
 * one request of a returning cookie-insert client, after warm-up, over a fixed
 * number of requests. The load comes from another process
 * (bench/lib/fixed-load.ts), so only tether's own allocations are counted.
 *
 *   bun bench/alloc.ts [--base DIR] [--requests 40000] [--window 200] [--windows 9] [--byte-runs 3] [--types]
 *
 * Bytes: tether runs as the CLI with BUN_JSC_logGC=1, and the "bytes allocated
 * this cycle" of every collection in the measured run are summed (bun:jsc's
 * heapStats keeps no running total). Objects: tether runs in the probe
 * (bench/lib/alloc-probe.ts); the heap's object counts are read after a full
 * collection and again after a window of requests short enough that no
 * collection runs in it; the median over the windows is reported. --base DIR
 * measures another checkout the same way, for an A/B.
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import type { Subprocess } from "bun";
import { startBackends } from "./lib/backends.ts";
import { tetherConfig } from "./lib/configs.ts";
import { freePort, waitReady } from "./lib/net.ts";
import { installCleanup, makeTempDir, sleep, stopAll } from "./lib/procs.ts";
import { median } from "./lib/report.ts";

const { values } = parseArgs({
  options: {
    base: { type: "string" },
    requests: { type: "string", default: "40000" },
    window: { type: "string", default: "200" },
    windows: { type: "string", default: "9" },
    persistence: { type: "string", default: "on" },
    types: { type: "boolean", default: false },
    "byte-runs": { type: "string", default: "3" },
  },
});
const REQUESTS = Number(values.requests);
const WINDOW = Number(values.window);
const WINDOWS = Number(values.windows);
const BYTE_RUNS = Number(values["byte-runs"]);
const WARMUP = 5000;
const REPO = join(import.meta.dir, "..");

installCleanup(15 * 60_000);
const dir = makeTempDir("tether-alloc-");
const { backends } = await startBackends(dir, 3, "1");

/** A line-driven child: write a line, wait for the answer line that starts with `expect`. */
class Driven {
  private buf = "";
  private readonly reader: ReadableStreamDefaultReader<Uint8Array>;
  constructor(readonly proc: Subprocess<"pipe", "pipe", "inherit">) {
    this.reader = (
      proc.stdout as ReadableStream<Uint8Array>
    ).getReader() as ReadableStreamDefaultReader<Uint8Array>;
  }
  async line(prefix: string): Promise<string> {
    for (;;) {
      const nl = this.buf.indexOf("\n");
      if (nl !== -1) {
        const l = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        if (l.startsWith(prefix)) return l;
        continue;
      }
      const { value, done } = await this.reader.read();
      if (done) throw new Error(`child ended while waiting for "${prefix}"`);
      this.buf += new TextDecoder().decode(value);
    }
  }
  async ask(cmd: string, prefix: string): Promise<string> {
    this.proc.stdin.write(`${cmd}\n`);
    this.proc.stdin.flush();
    return this.line(prefix);
  }
}

function spawnDriven(cmd: string[], env: Record<string, string> = {}): Driven {
  return new Driven(
    Bun.spawn(cmd, { stdin: "pipe", stdout: "pipe", stderr: "inherit", env: { ...process.env, ...env } }),
  );
}

/** The fixed-count load on `port`, after its warm-up requests. */
async function warmLoad(port: number): Promise<Driven> {
  const load = spawnDriven([
    process.execPath,
    join(import.meta.dir, "lib/fixed-load.ts"),
    "--port",
    String(port),
  ]);
  await load.ask(String(WARMUP), "done");
  return load;
}

function writeConfig(port: number): string {
  const file = join(dir, `config-${port}.json`);
  const cfg = tetherConfig({ port, backends, persistence: values.persistence === "on" });
  Bun.write(file, JSON.stringify(cfg));
  return file;
}

/** tether from `repo`, or (variant) one of bench/price-servers.ts's one-change servers. */
function serverCommand(repo: string, port: number, variant?: string): string[] {
  if (!variant) return [process.execPath, join(repo, "src/main.ts"), "--config", writeConfig(port)];
  const upstream = String(backends[0]?.port);
  const script = join(repo, "bench/price-servers.ts");
  return [process.execPath, script, "--variant", variant, "--port", String(port), "--upstream", upstream];
}

async function bytesPerRequest(repo: string, variant?: string): Promise<number> {
  const port = freePort();
  const gcLog = join(dir, `gc-${port}.log`);
  const proc = Bun.spawn(serverCommand(repo, port, variant), {
    env: { ...process.env, BUN_JSC_logGC: "1" },
    stdout: "ignore",
    stderr: Bun.file(gcLog),
  });
  try {
    const ready = await waitReady(port, null, 10_000);
    if (!ready.ready) throw new Error(`tether did not start: ${ready.reason}`);
    const load = await warmLoad(port);
    await sleep(200);
    const from = (await Bun.file(gcLog).text()).length;
    await load.ask(String(REQUESTS), "done");
    await sleep(200);
    const text = (await Bun.file(gcLog).text()).slice(from);
    load.proc.kill();
    let bytes = 0;
    for (const m of text.matchAll(/bytes allocated this cycle: (\d+)/g)) bytes += Number(m[1]);
    return bytes / REQUESTS;
  } finally {
    proc.kill();
    await proc.exited;
  }
}

/** The byte figure moves ±20% from run to run (where collections fall): the median of --byte-runs runs. */
async function medianBytes(repo: string, variant?: string): Promise<number> {
  const runs: number[] = [];
  for (let i = 0; i < BYTE_RUNS; i++) runs.push(await bytesPerRequest(repo, variant));
  return median(runs);
}

async function objectsPerRequest(
  repo: string,
  variant?: string,
): Promise<{ median: number; collected: number }> {
  const config = writeConfig(freePort());
  const probe = spawnDriven([
    process.execPath,
    join(import.meta.dir, "lib/alloc-probe.ts"),
    "--repo",
    repo,
    "--config",
    config,
    ...(variant ? ["--variant", variant] : []),
  ]);
  try {
    const port = Number((await probe.line("ready")).split(" ")[1]);
    const load = await warmLoad(port);
    const perRequest: number[] = [];
    let collected = 0;
    for (let w = 0; w < WINDOWS; w++) {
      await probe.ask("mark", "marked");
      await load.ask(String(WINDOW), "done");
      const [, count, how, types] = (await probe.ask("count", "count")).split(" ");
      if (how === "collected") collected++;
      else perRequest.push(Number(count) / WINDOW);
      if (values.types && how === "whole" && w === WINDOWS - 1) printTypes(types ?? "");
    }
    load.proc.kill();
    return { median: median(perRequest), collected };
  } finally {
    probe.proc.kill();
    await probe.proc.exited;
  }
}

/** --types: objects per request by JSC type, for the last window (where the objects come from). */
function printTypes(types: string): void {
  for (const entry of types.split(",").filter(Boolean)) {
    const [type, n] = entry.split("=");
    const per = Number(n) / WINDOW;
    if (per >= 0.5) console.log(`  ${type}: ${per.toFixed(1)}`);
  }
}

const peers: [string, string][] = [["tether", REPO]];
if (values.base) peers.push(["base", values.base]);
console.log(
  `allocation per request: ${REQUESTS} requests for bytes, ${WINDOWS} windows of ${WINDOW} for objects, persistence ${values.persistence}`,
);
const rows: string[] = [];
// The floor: bench/price-servers.ts's minimal proxy on tether's upstream client (objects only).
const floorBytes = await medianBytes(REPO, "proxy");
const floor = await objectsPerRequest(REPO, "proxy");
rows.push(`| floor (minimal proxy) | ${Math.round(floorBytes)} | ${floor.median.toFixed(1)} |`);
console.log(`floor: ${Math.round(floorBytes)} bytes, ${floor.median.toFixed(1)} objects per request`);
for (const [name, repo] of peers) {
  const bytes = await medianBytes(repo);
  const objects = await objectsPerRequest(repo);
  const note = objects.collected ? ` (${objects.collected} window(s) with a collection left out)` : "";
  rows.push(`| ${name} | ${Math.round(bytes)} | ${objects.median.toFixed(1)} |${note}`);
  console.log(`${name}: ${Math.round(bytes)} bytes, ${objects.median.toFixed(1)} objects per request${note}`);
}
console.log(["", "| peer | bytes/req | objects/req |", "|---|---:|---:|", ...rows].join("\n"));
await stopAll();
process.exit(0);
