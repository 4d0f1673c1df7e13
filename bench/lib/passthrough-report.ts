/** Records of the passthrough bench, medians per peer, same-round ratios and the Markdown table. */
import type { PtPeerName } from "./passthrough-options.ts";
import { median } from "./report.ts";

export interface Measure {
  connections: number;
  bytes: number;
  /** 'r' and '*' marks of s_time: sessions the server resumed, and full handshakes. */
  resumed: number;
  full: number;
  wallS: number;
  /** Proxy CPU (user + system) during the run, seconds; null where no proxy runs (direct). */
  cpuS: number | null;
  /** Others' CPU time on the proxy core and on the load core, % of the run. */
  noisePct: { proxy: number | null; load: number | null };
}

export interface PtRecord {
  round: number;
  peer: PtPeerName;
  sticky: { ok: boolean; detail: string } | null;
  full: Measure | null;
  resumed: Measure | null;
  bulk: Measure | null;
  /** Session IDs in the proxy's table after the runs. */
  learned: number | null;
  rssMiB: number | null;
  errors: string[];
}

type Get = (r: PtRecord) => number | null;

const perSecond = (m: Measure | null) => (m && m.wallS > 0 ? m.connections / m.wallS : null);
const cpuPerConnUs = (m: Measure | null) =>
  m && m.cpuS !== null && m.connections > 0 ? (m.cpuS * 1e6) / m.connections : null;
const cpuPct = (m: Measure | null) => (m && m.cpuS !== null && m.wallS > 0 ? (m.cpuS / m.wallS) * 100 : null);

interface Row {
  label: string;
  get: Get;
  digits: number;
  /** Whether a tether ÷ haproxy ratio means something here. */
  ratio: boolean;
}

export const ROWS: Row[] = [
  { label: "full handshakes/s (s_time -new)", get: (r) => perSecond(r.full), digits: 0, ratio: true },
  {
    label: "proxy CPU µs per full handshake",
    get: (r) => cpuPerConnUs(r.full),
    digits: 0,
    ratio: true,
  },
  { label: "proxy CPU % during -new", get: (r) => cpuPct(r.full), digits: 0, ratio: true },
  { label: "resumed handshakes/s (s_time -reuse)", get: (r) => perSecond(r.resumed), digits: 0, ratio: true },
  {
    label: "…of which the backend resumed, %",
    get: (r) =>
      r.resumed ? (100 * r.resumed.resumed) / Math.max(1, r.resumed.resumed + r.resumed.full) : null,
    digits: 1,
    ratio: false,
  },
  {
    label: "proxy CPU µs per resumed handshake",
    get: (r) => cpuPerConnUs(r.resumed),
    digits: 0,
    ratio: true,
  },
  { label: "proxy CPU % during -reuse", get: (r) => cpuPct(r.resumed), digits: 0, ratio: true },
  {
    label: "bulk MB/s (s_time -www, one connection at a time)",
    get: (r) => (r.bulk && r.bulk.wallS > 0 ? r.bulk.bytes / 1e6 / r.bulk.wallS : null),
    digits: 0,
    ratio: true,
  },
  {
    label: "proxy CPU s per GB (bulk)",
    get: (r) =>
      r.bulk && r.bulk.cpuS !== null && r.bulk.bytes > 0 ? r.bulk.cpuS / (r.bulk.bytes / 1e9) : null,
    digits: 2,
    ratio: true,
  },
  { label: "proxy CPU % during bulk", get: (r) => cpuPct(r.bulk), digits: 0, ratio: true },
  { label: "RSS MiB after the runs", get: (r) => r.rssMiB, digits: 1, ratio: true },
  { label: "session IDs in the stick table after the runs", get: (r) => r.learned, digits: 0, ratio: false },
];

export interface PtSummary {
  peer: PtPeerName;
  runs: number;
  values: (number | null)[];
  sticky: boolean | null;
  noiseMax: { proxy: number | null; load: number | null };
  errors: number;
}

function medianOrNull(xs: (number | null)[]): number | null {
  const v = xs.filter((x): x is number => x !== null && Number.isFinite(x));
  return v.length ? median(v) : null;
}

function maxOrNull(xs: (number | null)[]): number | null {
  const v = xs.filter((x): x is number => x !== null);
  return v.length ? Math.max(...v) : null;
}

const measures = (r: PtRecord) => [r.full, r.resumed, r.bulk].filter((m): m is Measure => m !== null);

export function summarizePt(records: PtRecord[], order: PtPeerName[]): PtSummary[] {
  const out: PtSummary[] = [];
  for (const peer of order) {
    const rs = records.filter((r) => r.peer === peer);
    if (rs.length === 0) continue;
    const probes = rs.map((r) => r.sticky).filter((s) => s !== null);
    out.push({
      peer,
      runs: rs.length,
      values: ROWS.map((row) => medianOrNull(rs.map(row.get))),
      sticky: probes.length ? probes.every((s) => s.ok) : null,
      noiseMax: {
        proxy: maxOrNull(rs.flatMap((r) => measures(r).map((m) => m.noisePct.proxy))),
        load: maxOrNull(rs.flatMap((r) => measures(r).map((m) => m.noisePct.load))),
      },
      errors: rs.reduce((n, r) => n + r.errors.length, 0),
    });
  }
  return out;
}

/** tether ÷ haproxy per row: the ratio within each round, then the median of those ratios. */
export function ptRatios(records: PtRecord[]): { values: (number | null)[]; rounds: number } {
  const pairs: [PtRecord, PtRecord][] = [];
  for (const t of records.filter((r) => r.peer === "tether")) {
    const h = records.find((r) => r.peer === "haproxy" && r.round === t.round);
    if (h) pairs.push([t, h]);
  }
  const values = ROWS.map((row) => {
    if (!row.ratio) return null;
    return medianOrNull(
      pairs.map(([t, h]) => {
        const a = row.get(t);
        const b = row.get(h);
        return a === null || b === null || b === 0 ? null : a / b;
      }),
    );
  });
  return { values, rounds: pairs.length };
}

const fmt = (x: number | null, digits: number) =>
  x === null || Number.isNaN(x)
    ? "—"
    : x.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });

export function ptTable(summary: PtSummary[], ratio: { values: (number | null)[]; rounds: number }): string {
  const withRatio =
    summary.some((s) => s.peer === "tether") && summary.some((s) => s.peer === "haproxy") && ratio.rounds > 0;
  // The ratio column goes right after haproxy (direct, the ceiling, comes last).
  const at = withRatio ? summary.findIndex((s) => s.peer === "haproxy") + 1 : summary.length;
  const row = (label: string, cells: string[], r: string) => {
    const all = withRatio ? [...cells.slice(0, at), r, ...cells.slice(at)] : cells;
    return `| ${label} | ${all.join(" | ")} |`;
  };
  const head = [
    row(
      "",
      summary.map((s) => s.peer),
      "tether ÷ haproxy",
    ),
    `|---|${new Array(summary.length + (withRatio ? 1 : 0)).fill("---:").join("|")}|`,
  ];
  const body = ROWS.map((r, i) =>
    row(
      r.label,
      summary.map((s) => fmt(s.values[i] ?? null, r.digits)),
      r.ratio && ratio.values[i] != null ? `${(ratio.values[i] as number).toFixed(2)}×` : "—",
    ),
  );
  body.push(
    row(
      "sticky probe (1 new + 5 resumed on the issuer)",
      summary.map((s) => (s.sticky === null ? "—" : s.sticky ? "yes" : "NO")),
      "—",
    ),
    row(
      "worst noise % proxy core / load core",
      summary.map((s) => `${fmt(s.noiseMax.proxy, 0)}/${fmt(s.noiseMax.load, 0)}`),
      "—",
    ),
    row(
      "runs (errors)",
      summary.map((s) => `${s.runs} (${s.errors})`),
      `${ratio.rounds} rounds`,
    ),
  );
  return [...head, ...body].join("\n");
}
