/** Medians per peer, same-round ratios against tether, and the Markdown table. */
import type { H2loadResult } from "./h2load.ts";
import type { PeerName } from "./options.ts";
import type { WrkResult } from "./wrk.ts";

export interface RunRecord {
  round: number;
  peer: PeerName;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  requests: number;
  errors: number;
  /** null where no process is measured (direct). */
  cpuUsPerReq: number | null;
  /** Proxy CPU time over the wall time of the run, in % of one core. */
  cpuPct: number | null;
  rssMiB: number | null;
  /** Others' user time plus steal during the run, % of one core: on the proxy core and on the load core. */
  noisePct: { proxy: number | null; load: number | null };
  sticky: boolean;
  /** The HTTP/1.1 mode's load tool output. */
  wrk?: WrkResult;
  /** The h2 mode's: h2load, one returning client's cookie on every request. */
  h2?: {
    h2load: H2loadResult;
    cookie: string;
    /** false: the proxy set no cookie, so the harness made one up. */
    cookieIssued: boolean;
    /** The backend that answered the cookie before the run: where its requests should go. */
    cookieBackend: string;
    /** Requests each backend answered during the measured run, by backend id. */
    backendRequests: Record<string, number>;
  };
}

export interface PeerSummary {
  peer: PeerName;
  runs: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  cpuUsPerReq: number | null;
  cpuPct: number | null;
  rssMiB: number | null;
  /** The worst run's noise per core: one spoiled run is worth knowing about even when the median hides it. */
  noisePctMax: { proxy: number | null; load: number | null };
  errors: number;
  /** Every run passed the stickiness probe. */
  sticky: boolean;
  /** Clients made up by the Lua script because the proxy set no cookie. */
  clientMadeCookies: boolean;
}

export interface Ratio {
  against: PeerName;
  rounds: number;
  rps: number;
  p99: number;
  cpuUsPerReq: number | null;
  rssMiB: number | null;
}

export function median(xs: number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

function medianOrNull(xs: (number | null)[]): number | null {
  const v = xs.filter((x): x is number => x !== null);
  return v.length ? median(v) : null;
}

function maxOrNull(xs: (number | null)[]): number | null {
  const v = xs.filter((x): x is number => x !== null);
  return v.length ? Math.max(...v) : null;
}

export function summarize(records: RunRecord[], order: PeerName[]): PeerSummary[] {
  const out: PeerSummary[] = [];
  for (const peer of order) {
    const rs = records.filter((r) => r.peer === peer);
    if (rs.length === 0) continue;
    out.push({
      peer,
      runs: rs.length,
      rps: median(rs.map((r) => r.rps)),
      p50Ms: median(rs.map((r) => r.p50Ms)),
      p99Ms: median(rs.map((r) => r.p99Ms)),
      cpuUsPerReq: medianOrNull(rs.map((r) => r.cpuUsPerReq)),
      cpuPct: medianOrNull(rs.map((r) => r.cpuPct)),
      rssMiB: medianOrNull(rs.map((r) => r.rssMiB)),
      noisePctMax: {
        proxy: maxOrNull(rs.map((r) => r.noisePct.proxy)),
        load: maxOrNull(rs.map((r) => r.noisePct.load)),
      },
      errors: rs.reduce((n, r) => n + r.errors, 0),
      sticky: rs.every((r) => r.sticky),
      clientMadeCookies: rs.some(
        (r) => (r.wrk?.clients.synthesizedThreads ?? 0) > 0 || r.h2?.cookieIssued === false,
      ),
    });
  }
  return out;
}

const div = (a: number | null, b: number | null) => (a === null || b === null || b === 0 ? null : a / b);

/**
 * tether ÷ peer, computed within each round and then the median taken: runs of
 * the same round are minutes apart at most, so machine noise cancels better
 * than in a ratio of two medians.
 */
export function ratios(records: RunRecord[], against: PeerName[]): Ratio[] {
  const out: Ratio[] = [];
  for (const peer of against) {
    const pairs: [RunRecord, RunRecord][] = [];
    for (const t of records.filter((r) => r.peer === "tether")) {
      const p = records.find((r) => r.peer === peer && r.round === t.round);
      if (p) pairs.push([t, p]);
    }
    if (pairs.length === 0) continue;
    out.push({
      against: peer,
      rounds: pairs.length,
      rps: median(pairs.map(([t, p]) => t.rps / p.rps)),
      p99: median(pairs.map(([t, p]) => t.p99Ms / p.p99Ms)),
      cpuUsPerReq: medianOrNull(pairs.map(([t, p]) => div(t.cpuUsPerReq, p.cpuUsPerReq))),
      rssMiB: medianOrNull(pairs.map(([t, p]) => div(t.rssMiB, p.rssMiB))),
    });
  }
  return out;
}

const fmt = (x: number | null, digits: number) => (x === null || Number.isNaN(x) ? "—" : x.toFixed(digits));
const times = (x: number | null) => (x === null ? "—" : `${x.toFixed(2)}×`);

export function summaryTable(rows: PeerSummary[]): string {
  const head = [
    "| proxy | req/s | p50 ms | p99 ms | CPU µs/req | proxy CPU % | RSS MiB | errors | sticky | noise % proxy/load | runs |",
    "|---|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|",
  ];
  const body = rows.map((r) => {
    const sticky = r.peer === "direct" ? "—" : r.sticky ? "yes" : "no";
    return `| ${r.peer} | ${fmt(r.rps, 0)} | ${fmt(r.p50Ms, 2)} | ${fmt(r.p99Ms, 2)} | ${fmt(r.cpuUsPerReq, 1)} | ${fmt(r.cpuPct, 0)} | ${fmt(r.rssMiB, 1)} | ${r.errors} | ${sticky} | ${fmt(r.noisePctMax.proxy, 0)}/${fmt(r.noisePctMax.load, 0)} | ${r.runs} |`;
  });
  return [...head, ...body].join("\n");
}

export function ratioTable(rs: Ratio[]): string {
  if (rs.length === 0) return "";
  const head = ["| tether ÷ | req/s | p99 | CPU µs/req | RSS | rounds |", "|---|---:|---:|---:|---:|---:|"];
  const body = rs.map(
    (r) =>
      `| ${r.against} | ${times(r.rps)} | ${times(r.p99)} | ${times(r.cpuUsPerReq)} | ${times(r.rssMiB)} | ${r.rounds} |`,
  );
  return [...head, ...body].join("\n");
}

export interface BackendSpread {
  peer: PeerName;
  /** Requests each backend answered during the measured runs, summed over rounds. */
  byBackend: Record<string, number>;
  /** Of all those, the share answered by the backend the run's cookie named (1: every request stuck). */
  toCookieBackend: number;
}

/** h2 mode: where each peer's requests went, from the backends' own counts. */
export function backendSpread(records: RunRecord[], order: PeerName[]): BackendSpread[] {
  const out: BackendSpread[] = [];
  for (const peer of order) {
    const runs = records.filter((r) => r.peer === peer && r.h2);
    if (runs.length === 0) continue;
    const byBackend: Record<string, number> = {};
    let total = 0;
    let stuck = 0;
    for (const r of runs) {
      const h2 = r.h2 as NonNullable<RunRecord["h2"]>;
      for (const [id, n] of Object.entries(h2.backendRequests)) {
        byBackend[id] = (byBackend[id] ?? 0) + n;
        total += n;
      }
      stuck += h2.backendRequests[h2.cookieBackend] ?? 0;
    }
    out.push({ peer, byBackend, toCookieBackend: total > 0 ? stuck / total : Number.NaN });
  }
  return out;
}

export function backendTable(rows: BackendSpread[]): string {
  if (rows.length === 0) return "";
  const ids = [...new Set(rows.flatMap((r) => Object.keys(r.byBackend)))].sort();
  const head = [
    `| proxy | ${ids.join(" | ")} | to the cookie's backend |`,
    `|---|${ids.map(() => "---:|").join("")}---:|`,
  ];
  const body = rows.map(
    (r) =>
      `| ${r.peer} | ${ids.map((id) => (r.byBackend[id] ?? 0).toLocaleString("en-US")).join(" | ")} | ${fmt(r.toCookieBackend * 100, 1)}% |`,
  );
  return [...head, ...body].join("\n");
}
