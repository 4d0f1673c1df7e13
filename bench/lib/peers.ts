/**
 * The peers under test. Each start() launches one fresh process pinned to the
 * proxy core, waits until it answers through to a backend, and says which pids
 * to charge CPU and memory to.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  type Backend,
  haproxyConfig,
  nginxConfig,
  nginxHasHttp2Directive,
  type TlsFiles,
  tetherConfig,
} from "./configs.ts";
import { freePort, waitReady } from "./net.ts";
import type { Options, PeerName } from "./options.ts";
import { type Child, capture, childrenOf, logTail, processTree, spawnLogged, stopChild } from "./procs.ts";

export interface StartContext {
  /** Scratch folder for this run's configs and logs. */
  dir: string;
  backends: Backend[];
  /** The backends process, which shares the load core with wrk. */
  backendsPid: number;
  opts: Options;
  repoRoot: string;
  /**
   * h2 mode: every proxy listens with TLS on this certificate and offers h2
   * and http/1.1 by ALPN (readiness and stickiness probes use https/1.1).
   */
  tls?: TlsFiles;
}

export interface Running {
  port: number;
  /** Processes whose CPU time and RSS are charged to this peer. */
  measuredPids(): number[];
  stop(): Promise<void>;
}

export interface Peer {
  readonly name: PeerName;
  /** Why it cannot run here, or null. */
  unavailable(): string | null;
  version(): string;
  /** Things a reader of the results must know (configuration limits, fallbacks). */
  readonly notes: Set<string>;
  /** The config text last generated, kept in the results file. */
  lastConfig: string;
  start(ctx: StartContext): Promise<Running>;
}

export class StartError extends Error {
  constructor(
    message: string,
    readonly exitCode: number | null,
  ) {
    super(message);
  }
}

const READY_TIMEOUT_MS = 15_000;

/** Prefix that pins a command to `core`, or nothing when taskset is missing. */
export function pin(core: string): string[] {
  return Bun.which("taskset") ? ["taskset", "-c", core] : [];
}

/** The log line that most likely says why a start failed (taskset refusing a core, a config error, ...). */
export function reasonLine(log: string): string {
  const lines = log
    .split("\n")
    .map((l) => l.trim())
    .filter(Boolean);
  const telling = lines.findLast((l) =>
    /error|cannot|can't|failed|invalid|refused|denied|in use|unknown/i.test(l),
  );
  return (telling ?? lines.at(-1) ?? "").slice(0, 200);
}

/** Starts a server process and waits for it to proxy; on failure it is stopped and its log tail reported. */
async function launch(
  name: string,
  cmd: string[],
  logPath: string,
  port: number,
  cwd?: string,
  tls = false,
): Promise<Child> {
  const child = spawnLogged(name, cmd, logPath, cwd);
  const r = await waitReady(port, child, READY_TIMEOUT_MS, tls);
  if (r.ready) return child;
  await stopChild(child);
  const tail = logTail(child);
  const why = reasonLine(tail);
  throw new StartError(`${name} did not start: ${r.reason}${why ? ` — ${why}` : ""}\n${tail}`, r.exitCode);
}

function running(port: number, child: Child, measured: () => number[]): Running {
  return { port, measuredPids: measured, stop: () => stopChild(child) };
}

function tetherCommand(opts: Options, configPath: string): string[] {
  if (opts.tetherCmd === null) return [process.execPath, "src/main.ts", "--config", configPath];
  const parts = opts.tetherCmd.split(/\s+/).filter(Boolean);
  return parts.includes("{config}")
    ? parts.map((p) => (p === "{config}" ? configPath : p))
    : [...parts, "--config", configPath];
}

/** A log line that explains a config rejection, for the note. */
function configProblem(log: string): string {
  // Line 0 is our own "did not start" summary; the log tail follows it.
  const line = log
    .split("\n")
    .slice(1)
    .find((l) => /persistence|unknown key|problem/i.test(l));
  return line ? `: ${line.trim().slice(0, 200)}` : "";
}

function tetherVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(join(import.meta.dir, "../../package.json"), "utf8")) as {
      version?: string;
    };
    return pkg.version ?? "?";
  } catch {
    return "?";
  }
}

/**
 * tether; `persistence: false` runs it with no persistence rule (bench/price.ts's "tether-plain"),
 * `engine: "bun"` on Bun.serve's front end instead of tether's own ("tether-bun").
 */
export function tetherPeer({
  persistence: wanted = true,
  engine,
}: {
  persistence?: boolean;
  engine?: "bun" | "tether";
} = {}): Peer {
  // Tried with cookie persistence first; once tether rejects it (exit 2), later rounds go without.
  let persistence = wanted;
  const peer: Peer = {
    name: "tether",
    notes: new Set(),
    lastConfig: "",
    unavailable: () => null,
    version: () => tetherVersion(),
    async start(ctx) {
      if (ctx.opts.tetherCmd === null && !existsSync(join(ctx.repoRoot, "src/main.ts"))) {
        throw new StartError("src/main.ts does not exist yet", null);
      }
      try {
        return await startTether(ctx, persistence);
      } catch (e) {
        if (!(e instanceof StartError) || e.exitCode !== 2 || !persistence) throw e;
        persistence = false;
        peer.notes.add(
          `persistence was OFF for tether: the config with cookie persistence was rejected (exit 2)${configProblem(e.message)}`,
        );
        return await startTether(ctx, false);
      }
    },
  };

  async function startTether(ctx: StartContext, withPersistence: boolean): Promise<Running> {
    const port = freePort();
    const cfg = JSON.stringify(
      tetherConfig({
        port,
        backends: ctx.backends,
        persistence: withPersistence,
        workers: ctx.opts.tetherWorkers,
        ...(ctx.tls ? { tls: ctx.tls, protocols: ["http/1.1", "h2"] } : {}),
        ...(engine ? { engine } : {}),
      }),
      null,
      2,
    );
    const configPath = join(ctx.dir, "tether.json");
    writeFileSync(configPath, cfg);
    peer.lastConfig = cfg;
    const cmd = [...pin(ctx.opts.proxyCore), ...tetherCommand(ctx.opts, configPath)];
    const child = await launch("tether", cmd, join(ctx.dir, "tether.log"), port, ctx.repoRoot, !!ctx.tls);
    // Whole tree: tether may run Workers (threads, same pid) or helper processes later.
    return running(port, child, () => processTree(child.proc.pid));
  }
  return peer;
}

function nginxPeer(): Peer {
  const version = () => /nginx\/(\S+)/.exec(capture(["nginx", "-v"]))?.[1] ?? "?";
  const peer: Peer = {
    name: "nginx",
    notes: new Set([
      "nginx OSS cannot insert a cookie: it hashes a cookie the client brings (hash $cookie_SRVID consistent); the load client makes one up",
    ]),
    lastConfig: "",
    unavailable: () => (Bun.which("nginx") ? null : "nginx is not installed (apt-get install nginx)"),
    version,
    async start(ctx) {
      const port = freePort();
      const dir = join(ctx.dir, "nginx");
      mkdirSync(dir, { recursive: true });
      const h2 = ctx.tls ? { tls: ctx.tls, directive: nginxHasHttp2Directive(version()) } : undefined;
      const conf = nginxConfig(dir, port, ctx.backends, h2);
      writeFileSync(join(dir, "nginx.conf"), conf);
      peer.lastConfig = conf;
      // -e: otherwise nginx opens its compiled-in error log before reading the config.
      const cmd = [
        ...pin(ctx.opts.proxyCore),
        "nginx",
        "-p",
        dir,
        "-e",
        join(dir, "nginx-error.log"),
        "-c",
        join(dir, "nginx.conf"),
      ];
      const child = await launch("nginx", cmd, join(ctx.dir, "nginx.log"), port, undefined, !!ctx.tls);
      // The worker does the work; the master only waits. Charge the worker(s).
      return running(port, child, () => childrenOf(child.proc.pid));
    },
  };
  return peer;
}

function haproxyPeer(): Peer {
  const peer: Peer = {
    name: "haproxy",
    notes: new Set(),
    lastConfig: "",
    unavailable: () => (Bun.which("haproxy") ? null : "haproxy is not installed (apt-get install haproxy)"),
    version: () => /version (\S+)/.exec(capture(["haproxy", "-v"]))?.[1] ?? "?",
    async start(ctx) {
      const port = freePort();
      const cfg = ctx.tls
        ? haproxyConfig(port, ctx.backends, ctx.tls.pem, "h2,http/1.1")
        : haproxyConfig(port, ctx.backends);
      const path = join(ctx.dir, "haproxy.cfg");
      writeFileSync(path, cfg);
      peer.lastConfig = cfg;
      // -db: stay in the foreground as one process (no master-worker), so its pid is the one that works.
      const cmd = [...pin(ctx.opts.proxyCore), "haproxy", "-db", "-f", path];
      const child = await launch("haproxy", cmd, join(ctx.dir, "haproxy.log"), port, undefined, !!ctx.tls);
      return running(port, child, () => processTree(child.proc.pid));
    },
  };
  return peer;
}

/** wrk straight at the first backend: the ceiling the load core allows, to put proxy overhead in context. */
function directPeer(h2: boolean): Peer {
  return {
    name: "direct",
    notes: new Set(["direct: wrk straight at backend app-1, no proxy; CPU and RSS are not measured"]),
    lastConfig: "",
    unavailable: () =>
      h2 ? "the backends speak HTTP/1.1 in cleartext only: no direct row in the h2 mode" : null,
    version: () => "",
    async start(ctx) {
      const first = ctx.backends[0];
      if (!first) throw new StartError("no backends", null);
      return { port: first.port, measuredPids: () => [], stop: async () => {} };
    },
  };
}

export function makePeers(names: PeerName[], { h2 = false } = {}): Peer[] {
  const all: Record<PeerName, () => Peer> = {
    tether: tetherPeer,
    nginx: nginxPeer,
    haproxy: haproxyPeer,
    direct: () => directPeer(h2),
  };
  return names.map((n) => all[n]());
}
