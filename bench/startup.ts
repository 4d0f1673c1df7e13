/**
 * Start time (issue 7 target: <= 100 ms from launching dist/tether to the
 * first proxied response), measured with hyperfine against HAProxy in the
 * same run.
 *
 *   bun run build && bun bench/startup.ts [--runs 30] [--warmup 3]
 *   bun bench/startup.ts --cmd "label=/path/to/tether --config {config}"
 *
 * Each timed command is bench/lib/first-response.sh: it launches the proxy
 * (pinned to the proxy core), polls GET / until a 200 comes back through a
 * backend, then SIGKILLs it. The config is the bench's usual one: one http
 * listener, 3 backends, cookie insert, workers 0, snapshot false. "poller
 * only" launches `true` and polls a backend directly: the harness's own cost.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { startBackends } from "./lib/backends.ts";
import { haproxyConfig, tetherConfig } from "./lib/configs.ts";
import { readFlags } from "./lib/flags.ts";
import { machineInfo, pinHarness } from "./lib/machine.ts";
import { freePort } from "./lib/net.ts";
import { pin } from "./lib/peers.ts";
import { cleanupSync, makeTempDir, stopAll } from "./lib/procs.ts";

const REPO_ROOT = resolve(import.meta.dir, "..");
const PROBE = join(import.meta.dir, "lib/first-response.sh");

interface HyperfineResult {
  command: string;
  median: number;
  min: number;
  max: number;
  times: number[];
}

async function main(): Promise<void> {
  const known = ["--runs", "--warmup", "--cmd", "--proxy-core", "--load-core"];
  const argv = Bun.argv.slice(2);
  const flags = readFlags(argv, (f) => known.includes(f));
  const get = (f: string) => flags.values.findLast(([k]) => k === f)?.[1];
  if (flags.help) {
    console.log(
      "usage: bun bench/startup.ts [--runs 30] [--warmup 3] [--proxy-core 0] [--load-core 1] [--cmd 'label=argv ... {config}']...",
    );
    return;
  }
  if (!Bun.which("hyperfine")) throw new Error("hyperfine is not installed (apt-get install hyperfine)");
  const runs = Number(get("--runs") ?? 30);
  const warmup = Number(get("--warmup") ?? 3);
  const proxyCore = get("--proxy-core") ?? "0";
  const loadCore = get("--load-core") ?? "1";
  const m = machineInfo("bench/startup.ts");
  console.log(
    `# tether start time, ${m.date}\n\n- ${m.cpuModel}, nproc ${m.nproc}, ${m.kernel}, Bun ${m.bun}, load ${m.loadAvg.join(" ")}\n`,
  );
  // The poller busy-polls: keep it and hyperfine off the proxy's core.
  pinHarness(loadCore);

  const dir = makeTempDir("tether-startup-");
  try {
    const { backends } = await startBackends(dir, 3, loadCore);
    const tetherPort = freePort();
    const tetherCfg = join(dir, "tether.json");
    writeFileSync(tetherCfg, JSON.stringify(tetherConfig({ port: tetherPort, backends, persistence: true })));
    const commands: [string, string[], number][] = [
      ["poller only", ["true"], (backends[0] as { port: number }).port],
    ];
    const extra = flags.values.filter(([k]) => k === "--cmd").map(([, v]) => v);
    for (const v of extra) {
      const eq = v.indexOf("=");
      const argv = v
        .slice(eq + 1)
        .split(/\s+/)
        .filter(Boolean)
        .map((a) => (a === "{config}" ? tetherCfg : a));
      commands.push([v.slice(0, eq), argv, tetherPort]);
    }
    if (!extra.length) {
      if (existsSync(join(REPO_ROOT, "dist/tether")))
        commands.push(["dist/tether", ["dist/tether", "--config", tetherCfg], tetherPort]);
      else console.log("- dist/tether missing (bun run build): the binary is not measured");
      commands.push([
        "bun src/main.ts",
        [process.execPath, "src/main.ts", "--config", tetherCfg],
        tetherPort,
      ]);
    }
    if (Bun.which("haproxy")) {
      const port = freePort();
      const cfg = join(dir, "haproxy.cfg");
      writeFileSync(cfg, haproxyConfig(port, backends));
      commands.push(["HAProxy", ["haproxy", "-db", "-f", cfg], port]);
    }
    const json = join(dir, "hyperfine.json");
    const args = [
      "hyperfine",
      "-N",
      "--warmup",
      String(warmup),
      "--runs",
      String(runs),
      "--export-json",
      json,
    ];
    for (const [label, argv, port] of commands)
      args.push("-n", label, ["bash", PROBE, String(port), ...pin(proxyCore), ...argv].join(" "));
    const p = Bun.spawn(args, { cwd: REPO_ROOT, stdout: "inherit", stderr: "inherit" });
    if ((await p.exited) !== 0) throw new Error("hyperfine failed");
    const results = (JSON.parse(readFileSync(json, "utf8")) as { results: HyperfineResult[] }).results;
    const ms = (s: number) => (s * 1000).toFixed(1);
    console.log(`\nLaunch to first proxied 200, ${runs} runs each (hyperfine -N):\n`);
    console.log("| command | median ms | min | max |\n|---|---:|---:|---:|");
    for (const r of results) console.log(`| ${r.command} | ${ms(r.median)} | ${ms(r.min)} | ${ms(r.max)} |`);
    const hap = results.find((r) => r.command === "HAProxy");
    if (hap)
      for (const r of results)
        if (r !== hap && r.command !== "poller only")
          console.log(`\n${r.command} ÷ HAProxy (medians): ${(r.median / hap.median).toFixed(2)}×`);
  } finally {
    await stopAll();
    cleanupSync();
  }
}

await main();
