/**
 * Fault tests' support: backends in child processes that can be killed or
 * frozen, cookie-jar clients that run concurrently for a while and record
 * every request, and a few summaries over those records.
 */
import { join } from "node:path";
import type { Subprocess } from "bun";
import type { ConfigInput } from "../../src/config/schema.ts";
import { BUN, REPO } from "../support/files.ts";
import { type Running, startInProcess } from "../support/tether.ts";

export const KEY = Buffer.alloc(32, 9).toString("base64");
const BACKEND_SCRIPT = join(REPO, "test/faults/backend-proc.ts");

const live = new Set<Subprocess>();
// A test run that dies early must not leave backends behind.
process.on("exit", () => {
  for (const p of live) {
    p.kill("SIGCONT");
    p.kill("SIGKILL");
  }
});

/** A backend process (test/faults/backend-proc.ts) that answers with its name. */
export interface ProcBackend {
  name: string;
  port: number;
  url: string;
  proc: Subprocess;
  /** SIGKILL, and wait until it is gone. */
  kill(): Promise<void>;
  /** SIGSTOP: connections are still accepted by the kernel, but nothing is answered. */
  freeze(): void;
  thaw(): void;
  /** Starts it again on the same port (after kill()). */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

async function spawnBackend(name: string, port: number): Promise<{ proc: Subprocess; port: number }> {
  const proc = Bun.spawn([BUN, BACKEND_SCRIPT, name, String(port)], {
    cwd: REPO,
    stdin: "ignore",
    stdout: "pipe",
    stderr: "inherit",
  });
  live.add(proc);
  const reader = (proc.stdout as ReadableStream<Uint8Array>).getReader();
  let text = "";
  const deadline = Date.now() + 10_000;
  while (!text.includes("\n")) {
    const chunk = await Promise.race([reader.read(), Bun.sleep(Math.max(0, deadline - Date.now()))]);
    if (!chunk || chunk.done) {
      proc.kill("SIGKILL");
      throw new Error(`backend ${name} did not start (port ${port})`);
    }
    text += new TextDecoder().decode(chunk.value);
  }
  reader.releaseLock();
  const ready = JSON.parse(text.slice(0, text.indexOf("\n"))) as { port: number };
  return { proc, port: ready.port };
}

/** Starts a backend process on `port` (0: any free port). */
export async function procBackend(name: string, port = 0): Promise<ProcBackend> {
  const first = await spawnBackend(name, port);
  const b: ProcBackend = {
    name,
    port: first.port,
    url: `http://127.0.0.1:${first.port}`,
    proc: first.proc,
    async kill() {
      b.proc.kill("SIGKILL");
      await b.proc.exited;
      live.delete(b.proc);
    },
    freeze: () => b.proc.kill("SIGSTOP"),
    thaw: () => b.proc.kill("SIGCONT"),
    async restart() {
      // The port was just released by a killed process: retry briefly if the kernel still holds it.
      for (let attempt = 0; ; attempt++) {
        try {
          b.proc = (await spawnBackend(name, b.port)).proc;
          return;
        } catch (e) {
          if (attempt >= 20) throw e;
          await Bun.sleep(50);
        }
      }
    },
    async stop() {
      b.proc.kill("SIGCONT");
      b.proc.kill("SIGKILL");
      await b.proc.exited;
      live.delete(b.proc);
    },
  };
  return b;
}

/** A tiny cookie jar for one client. */
export class Jar {
  readonly cookies = new Map<string, string>();
  header(): string {
    return [...this.cookies].map(([k, v]) => `${k}=${v}`).join("; ");
  }
  take(res: Response): void {
    for (const sc of res.headers.getSetCookie()) {
      const [pair = ""] = sc.split(";");
      const eq = pair.indexOf("=");
      if (eq > 0) this.cookies.set(pair.slice(0, eq), pair.slice(eq + 1));
    }
  }
}

/** One request as a client saw it. */
export interface Sample {
  client: number;
  seq: number;
  path: string;
  /** performance.now() at send and at the end of the body (or the error). */
  start: number;
  end: number;
  /** 0 when no response arrived. */
  status: number;
  backend: string | null;
  /** The response (or its body) failed: the error's text. */
  error: string | null;
  /** The response carried a new session cookie. */
  newCookie: boolean;
  /** Body bytes received (when the body was read to its end). */
  bytes: number;
}

export interface ClientOptions {
  /** Base URL of the proxy. */
  url: string;
  clients: number;
  durationMs: number;
  /** The path (and query) of client c's n-th request. */
  path?: (client: number, seq: number) => string;
  /** Extra request headers. */
  headers?: Record<string, string>;
  /** No request may take longer than this: past it, the sample records a "hang" error. */
  maxRequestMs?: number;
  /** Pause between one client's requests. */
  thinkMs?: number;
}

/**
 * Runs `clients` concurrent clients, each with its own cookie jar, sending one
 * request at a time until `durationMs` has passed. Every request is recorded.
 */
export async function runClients(opts: ClientOptions): Promise<Sample[]> {
  const samples: Sample[] = [];
  const until = performance.now() + opts.durationMs;
  const maxMs = opts.maxRequestMs ?? 10_000;
  const one = async (client: number) => {
    const jar = new Jar();
    for (let seq = 0; performance.now() < until; seq++) {
      const path = opts.path?.(client, seq) ?? `/c${client}/r${seq}`;
      const start = performance.now();
      const s: Sample = {
        client,
        seq,
        path,
        start,
        end: start,
        status: 0,
        backend: null,
        error: null,
        newCookie: false,
        bytes: 0,
      };
      try {
        const res = await fetch(`${opts.url}${path}`, {
          headers: { ...opts.headers, cookie: jar.header() },
          signal: AbortSignal.timeout(maxMs),
        });
        s.status = res.status;
        s.backend = res.headers.get("x-backend");
        // Backends echo the path they received: another request's path means crossed wires.
        const echoed = res.headers.get("x-path");
        if (echoed !== null && echoed !== path.split("?")[0])
          s.error = `wrong request: backend saw ${echoed}`;
        s.newCookie = res.headers.getSetCookie().length > 0;
        jar.take(res);
        s.bytes = (await res.arrayBuffer()).byteLength;
      } catch (e) {
        s.error = e instanceof Error && e.name === "TimeoutError" ? "hang" : String(e);
      }
      s.end = performance.now();
      samples.push(s);
      if (opts.thinkMs) await Bun.sleep(opts.thinkMs);
    }
  };
  await Promise.all(Array.from({ length: opts.clients }, (_, c) => one(c)));
  return samples;
}

/** Per client, the backends that answered it, in order, with consecutive repeats collapsed. */
export function backendRuns(samples: Sample[]): Map<number, string[]> {
  const out = new Map<number, string[]>();
  for (const s of [...samples].sort((a, b) => a.client - b.client || a.seq - b.seq)) {
    if (s.backend === null) continue;
    const runs = out.get(s.client) ?? [];
    if (runs[runs.length - 1] !== s.backend) runs.push(s.backend);
    out.set(s.client, runs);
  }
  return out;
}

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
}

/** A short description of failed samples for assertion messages. */
export function describe(samples: Sample[], limit = 10): string {
  return samples
    .slice(0, limit)
    .map(
      (s) =>
        `client ${s.client} #${s.seq} ${s.path}: status ${s.status} backend ${s.backend} error ${s.error} (${Math.round(s.end - s.start)} ms)`,
    )
    .join("\n");
}

/** tether in this process, with its audit events collected. */
export type InProcess = Running;
export const startWithAudit = (input: ConfigInput): InProcess => startInProcess(input);
