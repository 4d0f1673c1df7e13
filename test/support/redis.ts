/**
 * A real redis-server for tests: a free port, a temp dir, no persistence.
 * stop() and restart() keep the port, so clients can reconnect to it.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";

export interface TestRedis {
  url: string;
  port: number;
  /** Stops the server (kept stopped until restart()). */
  stop(): Promise<void>;
  /** Starts it again on the same port and waits until it answers PING. */
  restart(): Promise<void>;
  /** SIGSTOP / SIGCONT: the server keeps its sockets open but answers nothing (a hung Redis). */
  pause(): void;
  resume(): void;
  /** Stops the server and removes its temp dir. */
  close(): Promise<void>;
}

const READY_TIMEOUT_MS = 5000;
const running = new Set<Subprocess>();
// A test run that dies early must not leave servers behind.
process.on("exit", () => {
  for (const p of running) p.kill("SIGKILL");
});

export async function startRedis(): Promise<TestRedis> {
  const bin = Bun.which("redis-server");
  if (!bin) {
    throw new Error(
      "redis-server is not installed: the cluster tests need a real Redis (Debian: apt-get install redis-server)",
    );
  }
  const dir = mkdtempSync(join(tmpdir(), "tether-redis-"));
  const port = await freePort();
  const logFile = join(dir, "redis.log");
  let proc: Subprocess | null = null;

  const spawn = async () => {
    const p = Bun.spawn(
      [
        bin,
        "--port",
        String(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        dir,
        "--logfile",
        logFile,
      ],
      { stdin: "ignore", stdout: "ignore", stderr: "ignore" },
    );
    running.add(p);
    proc = p;
    const deadline = Date.now() + READY_TIMEOUT_MS;
    while (!(await ping(port))) {
      if (p.exitCode !== null || Date.now() > deadline) {
        p.kill("SIGKILL");
        running.delete(p);
        let tail = "";
        try {
          tail = readFileSync(logFile, "utf8").split("\n").slice(-5).join("\n");
        } catch {}
        throw new Error(
          `redis-server on port ${port} did not answer PING within ${READY_TIMEOUT_MS} ms:\n${tail}`,
        );
      }
      await Bun.sleep(20);
    }
  };
  const stop = async () => {
    const p = proc;
    if (!p) return;
    proc = null;
    p.kill("SIGCONT");
    p.kill("SIGKILL");
    await p.exited;
    running.delete(p);
  };

  await spawn();
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    stop,
    pause() {
      (proc as Subprocess | null)?.kill("SIGSTOP");
    },
    resume() {
      (proc as Subprocess | null)?.kill("SIGCONT");
    },
    async restart() {
      await stop();
      await spawn();
    },
    async close() {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A port the kernel just handed out (and took back): free unless someone races for it. */
async function freePort(): Promise<number> {
  const l = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = l.port;
  l.stop(true);
  return port;
}

/** True when a Redis answers PING on the port (raw RESP, so no client library is under test here). */
async function ping(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    let got = "";
    let settled = false;
    // end() runs the close handler synchronously: settle first.
    const done = (ok: boolean, s?: { end(): void }) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(ok);
      s?.end();
    };
    const timer = setTimeout(() => done(false), 500);
    Bun.connect({
      hostname: "127.0.0.1",
      port,
      socket: {
        open(s) {
          s.write("PING\r\n");
        },
        data(s, chunk) {
          got += chunk.toString();
          if (got.includes("\r\n")) done(got.startsWith("+PONG"), s);
        },
        close() {
          done(false);
        },
        error() {
          done(false);
        },
      },
    }).catch(() => done(false));
  });
}
