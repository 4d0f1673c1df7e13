/**
 * Memory of tether (issue 7 targets: idle RSS <= 60 MB; 1M learned sessions
 * <= 120 MB per copy of the stick table).
 *
 *   bun bench/memory.ts                      # both parts, 5 starts per command
 *   bun bench/memory.ts --rounds 9 --entries 1000000
 *   bun bench/memory.ts --cmd "smol=bun --smol src/main.ts --config {config}"
 *
 * Idle: each command is started fresh, `rounds` times, interleaved, with one
 * http listener, one pool of 3 backends, cookie insert, workers 0, snapshot
 * false (bench/lib/configs.ts). After the first 200 through it and 20 more
 * requests (half presenting the cookie), VmRSS is read from
 * /proc/<pid>/status. A bare Bun.serve hello world (bench/backend.ts with one
 * server) is measured the same way as Bun's own floor. Medians are reported.
 *
 * Table: a fresh process fills one StickTable with `entries` session IDs
 * through set() (the cookie-learn path, HMAC and all), with Bun.gc(true)
 * before each RSS reading.
 */
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { StickTable } from "../src/persistence/stick-table.ts";
import { startBackends } from "./lib/backends.ts";
import { tetherConfig } from "./lib/configs.ts";
import { readFlags } from "./lib/flags.ts";
import { machineInfo } from "./lib/machine.ts";
import { freePort, HOST, waitReady } from "./lib/net.ts";
import { pin } from "./lib/peers.ts";
import {
  capture,
  cleanupSync,
  makeTempDir,
  rssKiB,
  sleep,
  spawnLogged,
  stopAll,
  stopChild,
} from "./lib/procs.ts";
import { median } from "./lib/report.ts";

const REPO_ROOT = resolve(import.meta.dir, "..");

/** Child mode: fill one table and print {"beforeMiB","afterMiB","size"} as JSON. */
async function fillTable(entries: number): Promise<void> {
  const rss = () => rssKiB(process.pid) / 1024;
  const table = new StickTable(Buffer.alloc(32, 7), 30 * 60_000, entries);
  const ids = ["app-1", "app-2", "app-3"];
  Bun.gc(true);
  const beforeMiB = rss();
  const now = Math.floor(Date.now() / 1000);
  for (let i = 0; i < entries; i++) table.set(`session-${i}`, ids[i % 3] as string, now);
  Bun.gc(true);
  const afterMiB = rss();
  console.log(JSON.stringify({ beforeMiB, afterMiB, size: table.size }));
}

interface Command {
  label: string;
  /** null: the bare Bun.serve hello world. */
  argv: string[] | null;
}

function defaultCommands(): Command[] {
  const cmds: Command[] = [
    { label: "Bun.serve hello world", argv: null },
    { label: "bun src/main.ts", argv: [process.execPath, "src/main.ts", "--config", "{config}"] },
  ];
  if (existsSync(join(REPO_ROOT, "dist/tether")))
    cmds.push({ label: "dist/tether", argv: ["dist/tether", "--config", "{config}"] });
  else console.error("dist/tether missing (bun run build): the binary is not measured");
  return cmds;
}

/** One fresh start: wait for the first proxied 200, 20 more requests, then VmRSS. */
async function idleOnce(
  cmd: Command,
  dir: string,
  backends: Awaited<ReturnType<typeof startBackends>>["backends"],
  core: string,
) {
  let port: number;
  let stop: () => Promise<void>;
  let pid: number;
  if (cmd.argv === null) {
    const helloDir = join(dir, "hello");
    mkdirSync(helloDir, { recursive: true });
    const hello = await startBackends(helloDir, 1, core);
    port = (hello.backends[0] as { port: number }).port;
    pid = hello.pid;
    stop = () => stopChild(hello.child);
  } else {
    port = freePort();
    const config = join(dir, "tether.json");
    writeFileSync(config, JSON.stringify(tetherConfig({ port, backends, persistence: true })));
    const argv = cmd.argv.map((a) => (a === "{config}" ? config : a));
    const child = spawnLogged("tether", [...pin(core), ...argv], join(dir, "tether.log"), REPO_ROOT);
    const ready = await waitReady(port, child, 15_000);
    if (!ready.ready) throw new Error(`${cmd.label} did not start: ${ready.reason}`);
    pid = child.proc.pid;
    stop = () => stopChild(child);
  }
  let cookie = "";
  for (let i = 0; i < 20; i++) {
    const headers: Record<string, string> = i % 2 && cookie ? { cookie } : {};
    const res = await fetch(`http://${HOST}:${port}/`, { headers });
    await res.text();
    cookie ||= res.headers.get("set-cookie")?.split(";")[0] ?? "";
  }
  await sleep(300);
  const mib = rssKiB(pid) / 1024;
  await stop();
  return mib;
}

async function main(): Promise<void> {
  const flags = readFlags(Bun.argv.slice(2), (f) =>
    ["--rounds", "--entries", "--cmd", "--core", "--fill"].includes(f),
  );
  const get = (f: string) => flags.values.findLast(([k]) => k === f)?.[1];
  if (flags.help) {
    console.log(
      "usage: bun bench/memory.ts [--rounds 5] [--entries 1000000] [--core 0] [--cmd 'label=argv ... {config}']...",
    );
    return;
  }
  const fill = get("--fill");
  if (fill) return fillTable(Number(fill));

  const rounds = Number(get("--rounds") ?? 5);
  const entries = Number(get("--entries") ?? 1_000_000);
  const core = get("--core") ?? "0";
  const extra = flags.values.filter(([k]) => k === "--cmd").map(([, v]) => v);
  const commands = extra.length
    ? [
        { label: "Bun.serve hello world", argv: null },
        ...extra.map((v) => {
          const eq = v.indexOf("=");
          return {
            label: v.slice(0, eq),
            argv: v
              .slice(eq + 1)
              .split(/\s+/)
              .filter(Boolean),
          };
        }),
      ]
    : defaultCommands();
  const m = machineInfo("bench/memory.ts");
  console.log(
    `# tether memory, ${m.date}\n\n- ${m.cpuModel}, nproc ${m.nproc}, ${m.kernel}, Bun ${m.bun}, load ${m.loadAvg.join(" ")}\n`,
  );

  const dir = makeTempDir("tether-memory-");
  process.on("SIGINT", () => {
    cleanupSync();
    process.exit(130);
  });
  try {
    const { backends } = await startBackends(dir, 3, core === "0" ? "1" : "0");
    const rss = new Map<string, number[]>(commands.map((c) => [c.label, []]));
    for (let r = 0; r < rounds; r++) {
      for (const c of commands) {
        const mib = await idleOnce(c, dir, backends, core);
        rss.get(c.label)?.push(mib);
        console.error(`round ${r + 1}: ${c.label} ${mib.toFixed(1)} MiB`);
      }
    }
    console.log(`Idle RSS after the first proxied 200 and 20 more requests, median of ${rounds} starts:\n`);
    console.log("| command | median MiB | min | max |\n|---|---:|---:|---:|");
    for (const [label, xs] of rss)
      console.log(
        `| ${label} | ${median(xs).toFixed(1)} | ${Math.min(...xs).toFixed(1)} | ${Math.max(...xs).toFixed(1)} |`,
      );
  } finally {
    await stopAll();
    cleanupSync();
  }

  if (entries > 0) {
    const out = capture([process.execPath, join(import.meta.dir, "memory.ts"), "--fill", String(entries)]);
    const t = JSON.parse(out.split("\n").findLast((l) => l.startsWith("{")) ?? "null") as {
      beforeMiB: number;
      afterMiB: number;
      size: number;
    } | null;
    if (!t) throw new Error(`table fill failed:\n${out}`);
    console.log(
      `\nStick table, ${t.size.toLocaleString("en")} entries through set(): RSS ${t.beforeMiB.toFixed(1)} → ${t.afterMiB.toFixed(1)} MiB, +${(t.afterMiB - t.beforeMiB).toFixed(1)} MiB (${Math.round(((t.afterMiB - t.beforeMiB) * 1048576) / t.size)} bytes an entry)`,
    );
  }
}

await main();
