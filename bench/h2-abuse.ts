/**
 * How much of its request rate a normal HTTP/2 client keeps while tether is
 * under each abuse of test/security/h2-abuse.test.ts.
 *
 *   bun bench/h2-abuse.ts                  # 5 s per phase (~55 s in all)
 *   bun bench/h2-abuse.ts --seconds 10
 *
 * tether (a `bun src/main.ts` child: one https listener, protocols http/1.1
 * and h2, the repo's development certificate, cookie insert) in front of one
 * bench backend (bench/backend.ts, a child of its own). The normal client is
 * node:http2 in this process: one connection, one GET after another, carrying
 * its TETHER cookie, for `--seconds` per phase. Each abuse runs in a child
 * process of its own (this script with --attack), so that its work does not
 * slow the measuring client's event loop, and keeps going for the whole phase:
 *
 * - reset: rapid reset (CVE-2023-44487), HEADERS for GET / each followed at
 *   once by RST_STREAM(CANCEL), on one connection after another as Bun ends
 *   them with GOAWAY;
 * - settings / ping: empty SETTINGS frames / PINGs, as fast as the socket
 *   takes them, reconnecting whenever tether closes the connection;
 * - idle: 1,000 h2 connections opened, their SETTINGS acknowledged, then silent.
 *
 * Phases: a warm-up, then baselines and abuses alternated (baseline, reset,
 * baseline, settings, ... baseline); each abuse's "÷ baseline" is against the
 * mean of the baselines either side of it, so slow drift of a shared machine
 * cancels out. Prints one Markdown table, with each abuser's own counts
 * (frames written, connections opened, and those tether closed or sent GOAWAY
 * on), and the load average before and after. Everything runs on this machine
 * and competes for its cores, so a rate under abuse also shows what the
 * abuser's CPU costs the others. Only 127.0.0.1 is contacted; every process
 * started is stopped.
 */
import { loadavg } from "node:os";
import { join } from "node:path";
import { h2Client, h2Request } from "../test/support/h2.ts";
import {
  FRAME,
  frame,
  type H2Connection,
  h2Connect,
  headersFrame,
  rstStream,
} from "../test/support/h2-frames.ts";
import { REPO, spawnCli, tempDir, writeConfig } from "../test/support/tether.ts";

const ATTACKS = ["reset", "settings", "ping", "idle"] as const;
type Attack = (typeof ATTACKS)[number];
const LABEL: Record<Attack, string> = {
  reset: "rapid reset storm",
  settings: "SETTINGS flood",
  ping: "PING flood",
  idle: "1,000 idle connections",
};

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

// ---- the abuser (a child process) ----

interface AttackStats {
  frames: number;
  connections: number;
  /** Connections tether closed (or sent GOAWAY on) while the abuse ran. */
  closedByServer: number;
}

/** Writes `data` and waits until the socket has taken it (or closed, or `stop` holds). */
async function writeAll(conn: H2Connection, data: Buffer, stop: () => boolean) {
  if (conn.socket.write(data)) return;
  while (!conn.closed && !stop()) {
    const drained = await new Promise<boolean>((resolve) => {
      const t = setTimeout(() => resolve(false), 250);
      conn.socket.once("drain", () => {
        clearTimeout(t);
        resolve(true);
      });
    });
    if (drained) return;
  }
}

async function attack(kind: Attack, port: number) {
  let stopping = false;
  const stop = () => stopping;
  const stats: AttackStats = { frames: 0, connections: 0, closedByServer: 0 };
  const finished = new Promise<void>((resolve) => {
    process.on("SIGTERM", () => {
      stopping = true;
      resolve();
    });
  });
  const authority = `127.0.0.1:${port}`;
  const open = async () => {
    stats.connections++;
    return await h2Connect(port);
  };
  if (kind === "idle") {
    const conns = await Promise.all(Array.from({ length: 1000 }, open));
    console.log(JSON.stringify({ ready: true }));
    await finished;
    stats.closedByServer = conns.filter((c) => c.closed).length;
    for (const c of conns) c.close();
  } else {
    let conn = await open();
    let stream = 1;
    console.log(JSON.stringify({ ready: true }));
    while (!stopping) {
      // Bun answers an abuser with GOAWAY; a new connection carries on.
      if (conn.closed || conn.frames.some((f) => f.type === FRAME.GOAWAY)) {
        stats.closedByServer++;
        conn.close();
        conn = await open();
        stream = 1;
      }
      conn.frames.length = 0;
      const batch: Buffer[] = [];
      for (let i = 0; i < 200; i++) {
        if (kind === "reset") {
          batch.push(
            headersFrame(stream, [
              [":method", "GET"],
              [":scheme", "https"],
              [":authority", authority],
              [":path", "/"],
            ]),
            rstStream(stream),
          );
          stream += 2;
        } else
          batch.push(
            kind === "settings" ? frame(FRAME.SETTINGS, 0, 0) : frame(FRAME.PING, 0, 0, Buffer.alloc(8)),
          );
      }
      stats.frames += batch.length;
      await writeAll(conn, Buffer.concat(batch), stop);
    }
    conn.close();
  }
  console.log(JSON.stringify({ stats }));
  process.exit(0);
}

// ---- the measuring side ----

/** Sequential GETs on one connection for `seconds`: completed requests per second, and failures. */
async function measure(origin: string, seconds: number, cookie: string) {
  const client = h2Client(origin);
  let ok = 0;
  let failed = 0;
  const end = performance.now() + seconds * 1000;
  const start = performance.now();
  try {
    while (performance.now() < end) {
      try {
        const r = await client.request({ ":path": "/", cookie });
        if (r.status === 200) ok++;
        else failed++;
      } catch {
        failed++;
        break;
      }
    }
  } finally {
    client.close();
  }
  return { rate: ok / ((performance.now() - start) / 1000), failed };
}

/** Reads a child's stdout: `next(pred)` resolves with the first JSON line matching. */
function jsonLines(stdout: ReadableStream<Uint8Array>, who: string) {
  const reader = stdout.getReader();
  const seen: Record<string, unknown>[] = [];
  let buf = "";
  return async (pred: (l: Record<string, unknown>) => boolean) => {
    for (;;) {
      const found = seen.find(pred);
      if (found) return found;
      const { value, done } = await reader.read();
      if (done) throw new Error(`${who} ended early`);
      buf += new TextDecoder().decode(value);
      const parts = buf.split("\n");
      buf = parts.pop() ?? "";
      for (const l of parts) if (l.startsWith("{")) seen.push(JSON.parse(l));
    }
  };
}

async function startAbuser(kind: Attack, port: number) {
  const proc = Bun.spawn([process.execPath, import.meta.path, "--attack", kind, "--port", String(port)], {
    stdout: "pipe",
    stderr: "inherit",
  });
  const next = jsonLines(proc.stdout, `abuser ${kind}`);
  await next((l) => l.ready === true);
  return {
    async stop(): Promise<AttackStats> {
      proc.kill("SIGTERM");
      const { stats } = await next((l) => "stats" in l);
      await proc.exited;
      return stats as AttackStats;
    },
  };
}

async function main() {
  const seconds = Number(arg("--seconds") ?? 5);
  const backend = Bun.spawn([process.execPath, join(REPO, "bench/backend.ts"), "--count", "1"], {
    stdout: "pipe",
    stderr: "inherit",
  });
  const { ports } = (await jsonLines(backend.stdout, "backend")((l) => l.ready === true)) as {
    ports: number[];
  };
  const config = writeConfig(tempDir("tether-h2-abuse-"), {
    listeners: [
      {
        name: "secure",
        protocol: "https",
        address: "127.0.0.1:0",
        pool: "app",
        tls: { certificates: [{ cert: join(REPO, "certs/dev.pem"), key: join(REPO, "certs/dev-key.pem") }] },
        protocols: ["http/1.1", "h2"],
      },
    ],
    pools: {
      app: {
        backends: [{ id: "app-1", url: `http://127.0.0.1:${ports[0]}` }],
        persistence: [{ type: "cookie", mode: "insert", name: "TETHER" }],
      },
    },
    snapshot: false,
  });
  const tether = spawnCli(["--config", config]);
  try {
    const port = await tether.listening("secure");
    const origin = `https://127.0.0.1:${port}`;
    const first = await h2Request(origin, { ":path": "/" });
    const cookie = (first.headers["set-cookie"] ?? []).map((c) => c.split(";")[0]).join("; ");
    await measure(origin, 1, cookie); // warm-up
    const load = () =>
      loadavg()
        .map((l) => l.toFixed(2))
        .join(" ");
    const loadBefore = load();
    const baselines = [await measure(origin, seconds, cookie)];
    const rows: { phase: string; rate: number; failed: number; base: number; stats?: AttackStats }[] = [];
    for (const kind of ATTACKS) {
      const abuser = await startAbuser(kind, port);
      const m = await measure(origin, seconds, cookie);
      const stats = await abuser.stop();
      // Let tether finish with the abuser's connections before the next baseline.
      await Bun.sleep(1000);
      const after = await measure(origin, seconds, cookie);
      const before = baselines.at(-1) ?? after;
      baselines.push(after);
      rows.push({ phase: LABEL[kind], ...m, base: (before.rate + after.rate) / 2, stats });
    }
    const n = (x: number) => Math.round(x).toLocaleString("en-US");
    console.log(
      `\n${seconds} s per phase, Bun ${Bun.version}, ${navigator.hardwareConcurrency} CPUs, load average ${loadBefore} before, ${load()} after\n`,
    );
    console.log(
      "| phase | req/s | ÷ baseline | failed | abuser: frames written, connections opened, closed by tether |",
    );
    console.log("|---|---:|---:|---:|---|");
    const failed = baselines.reduce((f, b) => f + b.failed, 0);
    console.log(`| baselines (${baselines.map((b) => n(b.rate)).join(", ")}) | | | ${failed} | |`);
    for (const r of rows) {
      const s = r.stats
        ? `${n(r.stats.frames)}, ${n(r.stats.connections)}, ${n(r.stats.closedByServer)}`
        : "";
      console.log(`| ${r.phase} | ${n(r.rate)} | ${(r.rate / r.base).toFixed(2)} | ${r.failed} | ${s} |`);
    }
  } finally {
    await tether.stop();
    backend.kill("SIGTERM");
    await backend.exited;
  }
}

if (arg("--attack")) await attack(arg("--attack") as Attack, Number(arg("--port")));
else await main();
