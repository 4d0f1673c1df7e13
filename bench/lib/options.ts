/**
 * Command-line flags and BENCH_* environment variables. A flag beats the
 * environment, which beats --quick, which beats the defaults.
 */
import { type FlagKind, parseFlagValue, readFlags } from "./flags.ts";

export const ALL_PEERS = ["tether", "nginx", "haproxy", "direct"] as const;
export type PeerName = (typeof ALL_PEERS)[number];

export interface Options {
  peers: PeerName[];
  rounds: number;
  durationS: number;
  warmupS: number;
  connections: number;
  threads: number;
  backends: number;
  bodyBytes: number;
  /** taskset CPU list for the proxy under test. */
  proxyCore: string;
  /** taskset CPU list for wrk and the backends. */
  loadCore: string;
  /** Distinct returning clients simulated per wrk thread. */
  clients: number;
  /** 1: wrk keeps its connections open; 0: every request on a new connection (Connection: close). */
  keepAlive: number;
  outDir: string;
  /** Where the chart goes instead of next to the results JSON (relative to the repo root). */
  svgFile: string | null;
  /** tether's "workers" setting (0: one thread). */
  tetherWorkers: number;
  /** Hidden: a stand-in for `bun src/main.ts`; "{config}" is replaced by the config path. */
  tetherCmd: string | null;
  /** HTTP/2 over TLS with h2load instead of HTTP/1.1 with wrk (--h2). */
  h2: boolean;
  /** h2load -m: concurrent streams per connection (h2 mode). */
  streams: number;
  quick: boolean;
  help: boolean;
}

interface Spec {
  key: keyof Options;
  env: string;
  kind: FlagKind;
  min?: number;
  help: string;
}

export const SPECS: Record<string, Spec> = {
  "--peers": {
    key: "peers",
    env: "BENCH_PEERS",
    kind: "peers",
    help: `comma list of ${ALL_PEERS.join(",")}`,
  },
  "--rounds": { key: "rounds", env: "BENCH_ROUNDS", kind: "int", min: 1, help: "interleaved rounds (5)" },
  "--duration": {
    key: "durationS",
    env: "BENCH_DURATION",
    kind: "int",
    min: 1,
    help: "seconds per run (10)",
  },
  "--warmup": {
    key: "warmupS",
    env: "BENCH_WARMUP",
    kind: "int",
    min: 0,
    help: "unmeasured seconds before each run (2)",
  },
  "--connections": {
    key: "connections",
    env: "BENCH_CONNECTIONS",
    kind: "int",
    min: 1,
    help: "wrk -c (64); h2load -c with --h2 (16)",
  },
  "--threads": { key: "threads", env: "BENCH_THREADS", kind: "int", min: 1, help: "wrk -t / h2load -t (1)" },
  "--tether-workers": {
    key: "tetherWorkers",
    env: "BENCH_TETHER_WORKERS",
    kind: "int",
    min: 0,
    help: 'tether "workers" (0)',
  },
  "--streams": {
    key: "streams",
    env: "BENCH_STREAMS",
    kind: "int",
    min: 1,
    help: "h2 mode: h2load -m, streams per connection (4)",
  },
  "--backends": { key: "backends", env: "BENCH_BACKENDS", kind: "int", min: 1, help: "backend servers (3)" },
  "--body-bytes": {
    key: "bodyBytes",
    env: "BENCH_BODY_BYTES",
    kind: "int",
    min: 16,
    help: "response body size (64)",
  },
  "--proxy-core": {
    key: "proxyCore",
    env: "BENCH_PROXY_CORE",
    kind: "string",
    help: "taskset CPU list for the proxy (0)",
  },
  "--load-core": {
    key: "loadCore",
    env: "BENCH_LOAD_CORE",
    kind: "string",
    help: "CPU list for wrk + backends (1)",
  },
  "--clients": {
    key: "clients",
    env: "BENCH_CLIENTS",
    kind: "int",
    min: 1,
    help: "returning clients per wrk thread (64)",
  },
  "--keepalive": {
    key: "keepAlive",
    env: "BENCH_KEEPALIVE",
    kind: "int",
    min: 0,
    help: "1: client keep-alive (1); 0: a new connection per request",
  },
  "--out": { key: "outDir", env: "BENCH_OUT", kind: "string", help: "results folder (bench/results)" },
  "--svg": {
    key: "svgFile",
    env: "BENCH_SVG",
    kind: "string",
    help: "chart file (next to the results JSON)",
  },
  "--tether-cmd": { key: "tetherCmd", env: "BENCH_TETHER_CMD", kind: "string", help: "" },
};

export function defaults(): Options {
  return {
    peers: [...ALL_PEERS],
    rounds: 5,
    durationS: 10,
    warmupS: 2,
    connections: 64,
    threads: 1,
    backends: 3,
    tetherWorkers: 0,
    bodyBytes: 64,
    proxyCore: "0",
    loadCore: "1",
    clients: 64,
    keepAlive: 1,
    outDir: "bench/results",
    svgFile: null,
    tetherCmd: null,
    h2: false,
    streams: 4,
    quick: false,
    help: false,
  };
}

/**
 * --h2: the same in-flight requests as the HTTP/1.1 mode's 64 connections, as
 * 16 connections × 4 streams; no `direct` row, since the backends speak only
 * HTTP/1.1 in cleartext.
 */
const H2: Partial<Options> = { peers: ["tether", "nginx", "haproxy"], connections: 16, streams: 4 };

/** --quick: one short round, enough to see that every peer starts and answers. */
const QUICK: Partial<Options> = { rounds: 1, durationS: 3, warmupS: 1 };

function parseValue(flag: string, spec: Spec, raw: string): Options[keyof Options] {
  return parseFlagValue(flag, spec.kind, spec.min ?? 0, raw, ALL_PEERS);
}

function assign(o: Options, spec: Spec, value: Options[keyof Options]): void {
  (o as unknown as Record<string, unknown>)[spec.key] = value;
}

export function parseOptions(argv: string[], env: Record<string, string | undefined>): Options {
  const fromFlags = new Map<Spec, Options[keyof Options]>();
  const o = defaults();
  const read = readFlags(
    argv.filter((a) => a !== "--h2"),
    (flag) => flag in SPECS,
  );
  if (argv.includes("--h2") || env.BENCH_H2 === "1") Object.assign(o, H2, { h2: true });
  o.quick = read.quick;
  o.help = read.help;
  for (const [flag, raw] of read.values) {
    const spec = SPECS[flag] as Spec;
    fromFlags.set(spec, parseValue(flag, spec, raw));
  }
  if (o.quick || env.BENCH_QUICK === "1") Object.assign(o, QUICK, { quick: true });
  for (const [flag, spec] of Object.entries(SPECS)) {
    const raw = env[spec.env];
    if (raw !== undefined && raw !== "") assign(o, spec, parseValue(flag, spec, raw));
  }
  for (const [spec, value] of fromFlags) assign(o, spec, value);
  return o;
}

export function usage(): string {
  const lines = Object.entries(SPECS)
    .filter(([, s]) => s.help !== "")
    .map(([flag, s]) => `  ${`${flag} <v>`.padEnd(20)} ${s.help.padEnd(44)} env ${s.env}`);
  return [
    "usage: bun run bench [-- options]",
    "",
    `  ${"--quick".padEnd(20)} ${"1 round of 3 s, 1 s warm-up (smoke run)".padEnd(44)} env BENCH_QUICK=1`,
    `  ${"--h2".padEnd(20)} ${"HTTP/2 over TLS with h2load (-c16 -m4, no direct)".padEnd(44)} env BENCH_H2=1`,
    ...lines,
    "",
    "See bench/README.md for what each column means.",
  ].join("\n");
}
