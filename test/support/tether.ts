/**
 * Test support: start tether in this process from a config object, or as a
 * child process through the real CLI, on port 0.
 */
import { join } from "node:path";
import { createAudit } from "../../src/audit.ts";
import { type Config, resolveConfig } from "../../src/config/load.ts";
import type { ConfigInput } from "../../src/config/schema.ts";
import { createLogger, type Logger } from "../../src/log.ts";
import { startTether, type Tether } from "../../src/server/app.ts";

import { BUN, REPO } from "./files.ts";

export { BUN, REPO, tempDir, writeConfig } from "./files.ts";

/** A logger that keeps lines for assertions instead of printing them. */
export function memoryLogger(): Logger & { lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const logger = createLogger((line) => lines.push(JSON.parse(line)), "debug");
  return Object.assign(logger, { lines });
}

export function config(input: ConfigInput, baseDir = REPO): Config {
  return resolveConfig(input, { baseDir, env: process.env });
}

/** A one-listener, one-pool config pointing at the given backend URLs. */
export function simpleConfig(
  urls: string[],
  extra: Partial<ConfigInput> = {},
  pool: Record<string, unknown> = {},
) {
  return {
    listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
    pools: { app: { backends: urls.map((url, i) => ({ id: `b${i + 1}`, url })), ...pool } },
    ...extra,
  } as ConfigInput;
}

/** The two HTTP/1.1 front ends a listener can run ("engine"); suites that cover both loop over these. */
export const ENGINES = ["tether", "bun"] as const;
export type Engine = (typeof ENGINES)[number];

/** A describe label's suffix: nothing for tether's own (the default), " (engine bun)" for Bun.serve. */
export const engineLabel = (engine: Engine): string => (engine === "tether" ? "" : ` (engine ${engine})`);

/** The config with every http and https listener on `engine`. */
export function onEngine<T>(input: T, engine: Engine): T {
  const c = input as { listeners?: { protocol?: string }[] };
  if (!c.listeners) return input;
  return {
    ...c,
    listeners: c.listeners.map((l) => (l.protocol === "tls-passthrough" ? l : { ...l, engine })),
  } as T;
}

export interface Running {
  tether: Tether;
  log: ReturnType<typeof memoryLogger>;
  /** Audit events, as objects. */
  audit: Record<string, unknown>[];
  /** Base URL of the named listener (default: the first). */
  url(listener?: string): string;
  port(listener?: string): number;
  stop(): Promise<void>;
}

/** tether in this process, its log and audit events kept for assertions. */
export function startInProcess(input: ConfigInput, baseDir = REPO): Running {
  const log = memoryLogger();
  const audit: Record<string, unknown>[] = [];
  const tether = startTether(config(input, baseDir), log, {
    audit: createAudit(undefined, (line) => audit.push(JSON.parse(line))),
  });
  const first = () => [...tether.listeners.values()][0];
  const handle = (name?: string) => (name ? tether.listeners.get(name) : first());
  return {
    tether,
    log,
    audit,
    port: (name) => handle(name)?.server.port ?? 0,
    url: (name) => {
      const h = handle(name);
      return `${h?.config.protocol}://127.0.0.1:${h?.server.port}`;
    },
    stop: () => tether.stop(200),
  };
}

export interface Child {
  proc: ReturnType<typeof Bun.spawn>;
  /** JSON log lines seen so far. */
  lines: Record<string, unknown>[];
  stderr(): string;
  /** Resolves with the port of the named listener once it logs "listening". */
  listening(name: string, timeoutMs?: number): Promise<number>;
  waitFor(
    pred: (line: Record<string, unknown>) => boolean,
    timeoutMs?: number,
  ): Promise<Record<string, unknown>>;
  stop(): Promise<number>;
}

/** Runs the real CLI (`bun [bunArgs] src/main.ts ...`) and collects its JSON log lines. */
export function spawnCli(args: string[], env: Record<string, string> = {}, bunArgs: string[] = []): Child {
  const proc = Bun.spawn([BUN, ...bunArgs, join(REPO, "src/main.ts"), ...args], {
    cwd: REPO,
    env: { ...process.env, ...env },
    stdout: "pipe",
    stderr: "pipe",
  });
  const lines: Record<string, unknown>[] = [];
  let errText = "";
  const waiters = new Set<() => void>();
  (async () => {
    const decoder = new TextDecoder();
    let buf = "";
    for await (const chunk of proc.stdout as ReadableStream<Uint8Array>) {
      buf += decoder.decode(chunk, { stream: true });
      let nl = buf.indexOf("\n");
      while (nl !== -1) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        try {
          lines.push(JSON.parse(line));
        } catch {
          lines.push({ raw: line });
        }
        nl = buf.indexOf("\n");
      }
      for (const w of waiters) w();
    }
  })();
  (async () => {
    for await (const chunk of proc.stderr as ReadableStream<Uint8Array>)
      errText += new TextDecoder().decode(chunk);
  })();
  const waitFor: Child["waitFor"] = (pred, timeoutMs = 10_000) =>
    new Promise((resolve, reject) => {
      const check = () => {
        const found = lines.find(pred);
        if (found) {
          waiters.delete(check);
          clearTimeout(timer);
          resolve(found);
        }
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(
          new Error(`timed out; log so far:\n${lines.map((l) => JSON.stringify(l)).join("\n")}\n${errText}`),
        );
      }, timeoutMs);
      waiters.add(check);
      check();
    });
  return {
    proc,
    lines,
    stderr: () => errText,
    waitFor,
    listening: async (name, timeoutMs) =>
      Number((await waitFor((l) => l.msg === "listening" && l.name === name, timeoutMs)).port),
    async stop() {
      proc.kill("SIGTERM");
      return await proc.exited;
    },
  };
}

/** The port of a listener once a CLI with worker threads says every worker serves it. */
export async function workersListening(
  child: Child,
  workers = 2,
  name = "web",
  timeoutMs = 15_000,
): Promise<number> {
  const line = await child.waitFor(
    (l) => l.msg === "listening" && l.name === name && l.workers === workers,
    timeoutMs,
  );
  return Number(line.port);
}
