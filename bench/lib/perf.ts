/**
 * Where a proxy's CPU goes, from Linux perf: samples taken while the measured
 * wrk run is going, split by what was executing (the kernel, the program's
 * own binary, JIT-compiled JavaScript, libc, anything else). perf is optional
 * (Debian's linux-perf); without it the split is simply not reported.
 */
import { join } from "node:path";
import { capture, spawnLogged, stopChild } from "./procs.ts";

export type Part = "kernel" | "binary" | "jit" | "libc" | "other";
export const PARTS: readonly Part[] = ["kernel", "binary", "jit", "libc", "other"];
export type Split = Record<Part, number>;

export function perfAvailable(): boolean {
  return capture(["perf", "--version"]).startsWith("perf version");
}

/** Samples the processes until the returned function is called; it resolves with the split (shares 0..1). */
export function recordPerf(pids: number[], dir: string, label: string): () => Promise<Split | null> {
  const data = join(dir, `${label}.perf.data`);
  const child = spawnLogged(
    `perf-${label}`,
    ["perf", "record", "-q", "-o", data, "-p", pids.join(",")],
    join(dir, `${label}.perf.log`),
  );
  return async () => {
    // SIGTERM is perf record's "stop and write the file" (as Ctrl-C is).
    await stopChild(child, 10_000);
    const report = capture(["perf", "report", "-i", data, "--no-children", "--sort", "dso", "--stdio"]);
    return report.includes("%") ? dsoSplit(report) : null;
  };
}

/** Parses `perf report --sort dso --stdio`: "  42.70%  [kernel.kallsyms]" lines into the five parts. */
export function dsoSplit(report: string): Split {
  const split: Split = { kernel: 0, binary: 0, jit: 0, libc: 0, other: 0 };
  for (const line of report.split("\n")) {
    const m = /^\s*([\d.]+)%\s+(.+?)\s*$/.exec(line);
    if (!m) continue;
    split[partOf(m[2] as string)] += Number(m[1]) / 100;
  }
  return split;
}

function partOf(dso: string): Part {
  if (dso.startsWith("[kernel")) return "kernel";
  if (dso.startsWith("[JIT]") || /^jitted-\d+/.test(dso)) return "jit";
  if (/^(bun|bun\.exe|tether|haproxy|nginx)$/.test(dso)) return "binary";
  if (/^(libc|ld-linux|libm|libpthread)[.-]/.test(dso)) return "libc";
  return "other";
}
