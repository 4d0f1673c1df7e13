/**
 * The summary table as a chart: three panels side by side (req/s, CPU µs per
 * request, p99 ms), one horizontal bar per peer in each, the value written on
 * the bar, and a title with the date, the machine and the job's settings.
 */
import type { Machine } from "./machine.ts";
import type { Options } from "./options.ts";
import type { PeerSummary } from "./report.ts";
import { el, svgDocument, text } from "./svg.ts";

export type ChartMachine = Pick<Machine, "date" | "cpuModel" | "nproc">;
export type ChartOptions = Pick<Options, "connections" | "threads" | "durationS" | "rounds" | "keepAlive"> &
  Partial<Pick<Options, "h2" | "streams">>;

interface Panel {
  title: string;
  value: (r: PeerSummary) => number | null;
  label: (x: number) => string;
}

const PANELS: Panel[] = [
  {
    title: "requests/s (higher is better)",
    value: (r) => r.rps,
    label: (x) => Math.round(x).toLocaleString("en-US"),
  },
  { title: "CPU µs per request (lower is better)", value: (r) => r.cpuUsPerReq, label: (x) => x.toFixed(1) },
  { title: "p99 latency ms (lower is better)", value: (r) => r.p99Ms, label: (x) => x.toFixed(2) },
];

const WIDTH = 960;
const NAMES_W = 84;
const GAP = 28;
const RIGHT = 16;
const PANEL_W = (WIDTH - NAMES_W - RIGHT - GAP * (PANELS.length - 1)) / PANELS.length;
const BARS_TOP = 88;
const BAR_H = 22;
const ROW = 32;
/** Width of one character of the 12 px labels, near enough to decide whether a label fits in its bar. */
const CHAR_W = 7;

const TETHER = "#1f5fbf";
const OTHER = "#9a9a9a";

/** "2026-11-25T14:03:12.345Z" → "2026-11-25 14:03 UTC". */
function when(iso: string): string {
  const m = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2})/.exec(iso);
  return m ? `${m[1]} ${m[2]} UTC` : iso;
}

function settings(o: ChartOptions): string {
  return [
    o.h2
      ? `HTTP/2, h2load -t${o.threads} -c${o.connections} -m${o.streams}`
      : `wrk -t${o.threads} -c${o.connections}`,
    `${o.durationS} s per run`,
    `${o.rounds} interleaved round${o.rounds === 1 ? "" : "s"}, medians`,
    ...(o.keepAlive === 0 ? ["client keep-alive off"] : []),
  ].join(" · ");
}

const finite = (x: number | null): x is number => x !== null && Number.isFinite(x);

function panel(p: Panel, left: number, rows: PeerSummary[]): string[] {
  const out = [text(left, BARS_TOP - 14, p.title, { "font-weight": "bold" })];
  const max = Math.max(0, ...rows.map(p.value).filter(finite));
  rows.forEach((r, i) => {
    const y = BARS_TOP + i * ROW;
    const mid = { "dominant-baseline": "middle" };
    const v = p.value(r);
    if (!finite(v)) {
      // Not measured (direct has no proxy process): no bar, as the table shows "—".
      out.push(text(left + 4, y + BAR_H / 2, "—", { ...mid, fill: "#777" }));
      return;
    }
    const w = max > 0 ? (v / max) * PANEL_W : 0;
    const label = p.label(v);
    const fill = r.peer === "tether" ? TETHER : OTHER;
    out.push(el("rect", { x: left, y, width: w, height: BAR_H, fill, "data-peer": r.peer }));
    if (label.length * CHAR_W + 12 <= w)
      out.push(text(left + w - 6, y + BAR_H / 2, label, { ...mid, "text-anchor": "end", fill: "white" }));
    else out.push(text(left + w + 6, y + BAR_H / 2, label, { ...mid, fill: "#333" }));
  });
  const bottom = BARS_TOP + rows.length * ROW - (ROW - BAR_H);
  out.push(el("line", { x1: left, x2: left, y1: BARS_TOP - 4, y2: bottom + 4, stroke: "#333" }));
  return out;
}

/** The summary rows (in their order) as an SVG document. */
export function summaryChart(rows: PeerSummary[], m: ChartMachine, o: ChartOptions): string {
  const height = BARS_TOP + rows.length * ROW + 12;
  const heading = `tether bench, ${when(m.date)}`;
  const about = `${m.cpuModel}, ${m.nproc} core${m.nproc === 1 ? "" : "s"} · ${settings(o)}`;
  const body = [
    text(NAMES_W, 22, heading, { "font-size": 15, "font-weight": "bold" }),
    text(NAMES_W, 42, about, { fill: "#555" }),
  ];
  rows.forEach((r, i) => {
    const y = BARS_TOP + i * ROW + BAR_H / 2;
    body.push(text(NAMES_W - 10, y, r.peer, { "text-anchor": "end", "dominant-baseline": "middle" }));
  });
  PANELS.forEach((p, i) => {
    body.push(...panel(p, NAMES_W + i * (PANEL_W + GAP), rows));
  });
  return svgDocument(WIDTH, height, `${heading} — ${about}`, body);
}
