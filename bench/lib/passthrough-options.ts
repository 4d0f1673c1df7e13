/**
 * Flags of `bun bench/passthrough.ts`. A flag beats --quick, which beats the
 * defaults. The defaults keep the whole run under about two minutes.
 */
import { type FlagKind, parseFlagValue, readFlags } from "./flags.ts";

export const PT_PEERS = ["tether", "haproxy", "direct"] as const;
export type PtPeerName = (typeof PT_PEERS)[number];

export interface PtOptions {
  peers: PtPeerName[];
  rounds: number;
  /** Seconds per measured s_time run (s_time's -time; it runs up to one second longer). */
  durationS: number;
  /** Unmeasured s_time seconds before the measured runs (0 = none). */
  warmupS: number;
  /** Parallel s_time processes for the handshake runs. */
  clients: number;
  /** Size of the file downloaded in the bulk run, MiB. */
  fileMiB: number;
  proxyCore: string;
  loadCore: string;
  outDir: string;
  quick: boolean;
  help: boolean;
}

export function ptDefaults(): PtOptions {
  return {
    peers: [...PT_PEERS],
    rounds: 3,
    durationS: 2,
    warmupS: 1,
    clients: 2,
    fileMiB: 256,
    proxyCore: "0",
    loadCore: "1",
    outDir: "bench/results",
    quick: false,
    help: false,
  };
}

/** --quick: one short round, enough to see that every peer starts, sticks and carries bytes. */
const QUICK: Partial<PtOptions> = { rounds: 1, durationS: 1, warmupS: 0, fileMiB: 64 };

const FLAGS: Record<string, { key: keyof PtOptions; kind: FlagKind; min?: number; help: string }> = {
  "--peers": { key: "peers", kind: "peers", help: `comma list of ${PT_PEERS.join(",")}` },
  "--rounds": { key: "rounds", kind: "int", min: 1, help: "interleaved rounds (3)" },
  "--duration": { key: "durationS", kind: "int", min: 1, help: "s_time -time per measured run (2)" },
  "--warmup": { key: "warmupS", kind: "int", min: 0, help: "unmeasured s_time seconds first (1)" },
  "--clients": { key: "clients", kind: "int", min: 1, help: "parallel s_time for handshakes (2)" },
  "--file-mib": { key: "fileMiB", kind: "int", min: 1, help: "bulk download size in MiB (256)" },
  "--proxy-core": { key: "proxyCore", kind: "string", help: "taskset CPU list for the proxy (0)" },
  "--load-core": { key: "loadCore", kind: "string", help: "CPU list for clients + backends (1)" },
  "--out": { key: "outDir", kind: "string", help: "results folder (bench/results)" },
};

export function parsePtOptions(argv: string[]): PtOptions {
  const o = ptDefaults();
  const set = new Map<keyof PtOptions, PtOptions[keyof PtOptions]>();
  const read = readFlags(argv, (flag) => flag in FLAGS);
  o.quick = read.quick;
  o.help = read.help;
  for (const [flag, raw] of read.values) {
    const spec = FLAGS[flag] as (typeof FLAGS)[string];
    set.set(
      spec.key,
      parseFlagValue(flag, spec.kind, spec.min ?? 0, raw, PT_PEERS) as PtOptions[keyof PtOptions],
    );
  }
  if (o.quick) Object.assign(o, QUICK);
  for (const [key, value] of set) (o as unknown as Record<string, unknown>)[key] = value;
  return o;
}

export function ptUsage(): string {
  return [
    "usage: bun bench/passthrough.ts [options]",
    "",
    `  ${"--quick".padEnd(18)} 1 round, 1 s runs, no warm-up, 64 MiB file (smoke run)`,
    ...Object.entries(FLAGS).map(([flag, s]) => `  ${`${flag} <v>`.padEnd(18)} ${s.help}`),
    "",
    'See bench/README.md, "TLS passthrough bench".',
  ].join("\n");
}
