// Pure parts of the bench harness; nothing here starts a process or opens a socket.
import { describe, expect, test } from "bun:test";
import { bodyFor } from "./backend.ts";
import { summaryChart } from "./lib/chart.ts";
import { haproxyConfig, nginxConfig, tetherConfig } from "./lib/configs.ts";
import { parseOptions } from "./lib/options.ts";
import { dsoSplit } from "./lib/perf.ts";
import { median, type PeerSummary, type RunRecord, ratios } from "./lib/report.ts";
import { parseWrkOutput, type WrkResult, wrkCommand } from "./lib/wrk.ts";
import { priceTable, splitTable } from "./price.ts";
import { serveVariant, VARIANTS } from "./price-servers.ts";

const backends = [
  { id: "app-1", port: 9001 },
  { id: "app-2", port: 9002 },
];

describe("options", () => {
  test("defaults", () => {
    const o = parseOptions([], {});
    expect([o.rounds, o.durationS, o.connections, o.threads, o.backends]).toEqual([5, 10, 64, 1, 3]);
    expect(o.peers).toEqual(["tether", "nginx", "haproxy", "direct"]);
  });
  test("flag beats env beats --quick", () => {
    const o = parseOptions(["--quick", "--rounds=3"], { BENCH_ROUNDS: "2", BENCH_DURATION: "4" });
    expect([o.rounds, o.durationS, o.warmupS]).toEqual([3, 4, 1]);
  });
  test("rejects unknown peers and bad numbers", () => {
    expect(() => parseOptions(["--peers", "tether,envoy"], {})).toThrow(/envoy/);
    expect(() => parseOptions(["--rounds", "0"], {})).toThrow(/rounds/);
    expect(() => parseOptions(["--nope"], {})).toThrow(/unknown option/);
  });
  test("--svg names the chart file; without it the chart goes next to the results", () => {
    expect(parseOptions([], {}).svgFile).toBeNull();
    expect(parseOptions(["--svg", "docs/bench.svg"], {}).svgFile).toBe("docs/bench.svg");
    expect(parseOptions([], { BENCH_SVG: "x.svg" }).svgFile).toBe("x.svg");
  });
});

describe("configs", () => {
  test("tether with and without persistence", () => {
    const on = tetherConfig({ port: 8080, backends, persistence: true }) as { pools: { app: object } };
    expect(on.pools.app).toHaveProperty("persistence");
    const off = tetherConfig({ port: 8080, backends, persistence: false }) as { pools: { app: object } };
    expect(off.pools.app).not.toHaveProperty("persistence");
    expect(JSON.stringify(off)).toContain('"url":"http://127.0.0.1:9002"');
  });
  test("nginx hashes the cookie and keeps upstream connections", () => {
    const c = nginxConfig("/tmp/x", 8080, backends);
    for (const line of ["hash $cookie_SRVID consistent;", "keepalive 64;", 'proxy_set_header Connection "";'])
      expect(c).toContain(line);
    expect(c).toContain("listen 127.0.0.1:8080;");
  });
  test("haproxy inserts a cookie per server", () => {
    const c = haproxyConfig(8080, backends);
    expect(c).toContain("cookie SRVID insert indirect nocache");
    expect(c).toContain("server s2 127.0.0.1:9002 cookie s2");
  });
});

describe("wrk", () => {
  test("parses the done() line among wrk's own output", () => {
    const text = `Running 3s test\n  Latency 1ms\n@@BENCH_JSON {"requests":10,"durationUs":1000000,"bytes":5,"latencyUs":{"p50":100,"p90":200,"p99":300,"max":400,"mean":120.5},"errors":{"connect":0,"read":0,"write":0,"status":1,"timeout":0},"clients":{"threads":1,"captured":64,"synthesizedThreads":0,"cookielessSent":64,"setCookies":64}}\n`;
    const r = parseWrkOutput(text);
    expect(r.requests).toBe(10);
    expect(r.latencyUs.p99).toBe(300);
    expect(() => parseWrkOutput("nothing")).toThrow(/BENCH_JSON/);
  });
  test("pins wrk with taskset and passes the client count to the script", () => {
    const cmd = wrkCommand({
      url: "http://127.0.0.1:1/",
      durationS: 3,
      connections: 64,
      threads: 1,
      clients: 32,
      core: "1",
      logPath: "",
    });
    expect(cmd.slice(0, 4)).toEqual(["taskset", "-c", "1", "wrk"]);
    expect(cmd.slice(-2)).toEqual(["--", "32"]);
    expect(cmd).not.toContain("Connection: close");
  });
  test("--keepalive 0 makes wrk open a connection per request", () => {
    expect(parseOptions(["--keepalive", "0"], {}).keepAlive).toBe(0);
    const job = { url: "http://127.0.0.1:1/", durationS: 3, connections: 8, threads: 1, clients: 8 };
    const cmd = wrkCommand({ ...job, core: null, logPath: "", keepAlive: false });
    expect(cmd[cmd.indexOf("-H") + 1]).toBe("Connection: close");
  });
});

describe("report", () => {
  test("median", () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 2, 3])).toBe(2.5);
  });
  test("ratios pair runs of the same round", () => {
    const rec = (peer: "tether" | "nginx", round: number, rps: number): RunRecord => ({
      round,
      peer,
      rps,
      p50Ms: 1,
      p99Ms: 2,
      requests: 1,
      errors: 0,
      cpuUsPerReq: 10,
      cpuPct: 90,
      rssMiB: 5,
      noisePct: { proxy: 0, load: 0 },
      sticky: true,
      wrk: {} as WrkResult,
    });
    const rs = ratios(
      [rec("tether", 1, 50), rec("nginx", 1, 100), rec("tether", 2, 90), rec("nginx", 2, 100)],
      ["nginx"],
    );
    expect(rs[0]?.rounds).toBe(2);
    expect(rs[0]?.rps).toBeCloseTo(0.7);
  });
});

/** Throws unless `xml` is one element whose tags nest, whose attributes are quoted and whose `&` start entities. */
function assertWellFormed(xml: string): void {
  const token = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>|[^<]+/gy;
  const stack: string[] = [];
  let at = 0;
  let roots = 0;
  for (const m of xml.matchAll(token)) {
    at = m.index + m[0].length;
    const [, close, name, , selfClosing] = m;
    if (name === undefined) {
      if (stack.length === 0 && m[0].trim() !== "") throw new Error(`text outside the root: ${m[0]}`);
      continue;
    }
    if (stack.length === 0 && !close) roots++;
    if (close) {
      const open = stack.pop();
      if (open !== name) throw new Error(`</${name}> closes <${open}> at ${m.index}`);
    } else if (!selfClosing) stack.push(name);
  }
  if (at !== xml.length) throw new Error(`not a tag or text at ${at}: ${xml.slice(at, at + 40)}`);
  if (stack.length) throw new Error(`unclosed <${stack.join("> <")}>`);
  if (roots !== 1) throw new Error(`${roots} root elements`);
  const bare = /&(?!(?:amp|lt|gt|quot|apos|#\d+);)/.exec(xml);
  if (bare) throw new Error(`bare & at ${bare.index}`);
}

describe("chart", () => {
  const row = (peer: PeerSummary["peer"], rps: number, cpuUsPerReq: number | null, p99Ms: number) =>
    ({
      peer,
      runs: 5,
      rps,
      p50Ms: p99Ms / 3,
      p99Ms,
      cpuUsPerReq,
      cpuPct: cpuUsPerReq === null ? null : 95,
      rssMiB: cpuUsPerReq === null ? null : 40,
      noisePctMax: { proxy: 1, load: 2 },
      errors: 0,
      sticky: true,
      clientMadeCookies: false,
    }) satisfies PeerSummary;
  const rows = [
    row("tether", 31245.4, 18.43, 3.214),
    row("nginx", 28000, 21.1, 4.5),
    row("haproxy", 35120.2, 12.04, 2.5),
    row("direct", 39000, null, 1.25),
  ];
  const machine = { date: "2026-11-25T14:03:12.345Z", cpuModel: "AMD EPYC 7763 64-Core Processor", nproc: 2 };
  const opts = { connections: 64, threads: 1, durationS: 10, rounds: 5, keepAlive: 1 };
  const svg = summaryChart(rows, machine, opts);
  const bars = (peer: string) => svg.match(new RegExp(`<rect [^>]*data-peer="${peer}"`, "g")) ?? [];
  const width = (peer: string, nth: number) => Number(/ width="([\d.]+)"/.exec(bars(peer)[nth] ?? "")?.[1]);

  test("is one well-formed SVG document", () => {
    expect(svg).toStartWith('<svg xmlns="http://www.w3.org/2000/svg"');
    assertWellFormed(svg);
  });
  test("draws one bar per peer in each of the three panels, none for a value not measured", () => {
    for (const peer of ["tether", "nginx", "haproxy"]) expect(bars(peer)).toHaveLength(3);
    // direct has no proxy process, so no CPU per request: the table's "—", not a zero bar.
    expect(bars("direct")).toHaveLength(2);
    expect(svg).toContain(">—</text>");
    for (const panel of ["requests/s", "CPU µs per request", "p99 latency ms"]) expect(svg).toContain(panel);
    for (const peer of ["tether", "nginx", "haproxy", "direct"]) expect(svg).toContain(`>${peer}</text>`);
  });
  test("bars within a panel are in proportion to the values", () => {
    // p99 is the third panel: tether's third bar, but direct's second (it has no CPU bar).
    expect(width("tether", 0) / width("direct", 0)).toBeCloseTo(31245.4 / 39000, 2);
    expect(width("direct", 1) / width("tether", 2)).toBeCloseTo(1.25 / 3.214, 2);
  });
  test("writes every value on its bar, as the table rounds it", () => {
    for (const label of [
      "31,245",
      "28,000",
      "35,120",
      "39,000",
      "18.4",
      "21.1",
      "12.0",
      "3.21",
      "4.50",
      "1.25",
    ])
      expect(svg).toContain(`>${label}</text>`);
  });
  test("the title carries the date, the machine and the job's settings", () => {
    const title = /<title>(.*)<\/title>/.exec(svg)?.[1] ?? "";
    for (const part of [
      "2026-11-25 14:03 UTC",
      "AMD EPYC 7763 64-Core Processor",
      "2 cores",
      "-c64",
      "10 s per run",
      "5 interleaved rounds",
    ])
      expect(title).toContain(part);
    expect(svg).toContain(">tether bench, 2026-11-25 14:03 UTC</text>");
  });
  test("escapes text it did not write itself", () => {
    const odd = summaryChart(rows.slice(0, 1), { ...machine, cpuModel: 'Fast & "Cheap" <CPU>' }, opts);
    assertWellFormed(odd);
    expect(odd).toContain("Fast &amp; &quot;Cheap&quot; &lt;CPU&gt;");
  });
});

test("backend body has the requested size and names the backend", () => {
  expect(bodyFor("app-1", 64)).toHaveLength(64);
  expect(bodyFor("app-1", 64).startsWith("hello from app-1")).toBe(true);
});

test("every one-change server of bench/price.ts answers through to a backend", async () => {
  const backend = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("from backend") });
  const target = {
    key: `http://127.0.0.1:${backend.port}`,
    hostname: "127.0.0.1",
    port: backend.port as number,
  };
  try {
    for (const variant of VARIANTS) {
      const server = serveVariant(variant, 0, target);
      try {
        const res = await fetch(`http://127.0.0.1:${server.port}/`);
        expect(res.status).toBe(200);
        const body = await res.text();
        if (variant.includes("proxy") || variant === "raw" || variant === "sketch")
          expect(body).toBe("from backend");
        else expect(body).toStartWith("hello from a one-change server");
      } finally {
        server.stop();
      }
    }
  } finally {
    backend.stop(true);
  }
});

test("the price table divides round by round and keeps the quietest round", () => {
  const rounds = (...us: number[]) =>
    us.map((usPerReq) => ({ usPerReq, rps: 1e6 / usPerReq, p99Ms: usPerReq / 10 }));
  const table = priceTable(
    new Map([
      ["haproxy", rounds(30, 60, 30)],
      ["proxy", rounds(40, 90, 40)],
      ["base", rounds(90, 180, 60)],
      ["tether", rounds(60, 180, 60)],
    ]),
  );
  const row = (name: string) => table.split("\n").find((l) => l.startsWith(`| ${name} |`));
  // Same-round ratios (2, 3, 2 against HAProxy) rather than a ratio of medians (60 / 30 = 2 as well, but
  // not in general); the noisy second round moves the median, never the quietest figure.
  // "÷ floor" divides by the minimal proxy ("proxy") of the same round: 1.5, 2, 1.5.
  expect(row("tether")).toBe("| tether | 60.0 | 60.0 | 2.00× | 1.50× | 1.00× | 16667 | 6.00 | 2.00× |");
  expect(row("base")).toBe("| base | 90.0 | 60.0 | 3.00× | 2.00× | 1.00× | 11111 | 9.00 | 3.00× |");
  expect(row("haproxy")).toBe("| haproxy | 30.0 | 30.0 | 1.00× | 0.75× | 0.33× | 33333 | 3.00 | 1.00× |");
});

test("a connection sweep compares each row with HAProxy at the same count", () => {
  const at = (usPerReq: number) => [{ usPerReq, rps: 1e6 / usPerReq, p99Ms: 1 }];
  const table = priceTable(
    new Map([
      ["haproxy@2", at(100)],
      ["haproxy@64", at(30)],
      ["tether@2", at(150)],
      ["tether@64", at(90)],
    ]),
  );
  expect(table).toContain("| tether@2 | 150.0 | 150.0 | 1.50× |");
  expect(table).toContain("| tether@64 | 90.0 | 90.0 | 3.00× |");
});

test("perf's report splits into kernel, the binary, JIT code, libc and the rest", () => {
  const report = [
    "# Overhead  Shared Object",
    "# ........  .................",
    "#",
    "    42.70%  [kernel.kallsyms]",
    "    42.53%  bun.exe          ",
    "    11.32%  [JIT] tid 17435  ",
    "     3.12%  libc.so.6        ",
    "     0.33%  [vdso]           ",
  ].join("\n");
  const split = dsoSplit(report);
  expect(split.kernel).toBeCloseTo(0.427, 6);
  expect(split.binary).toBeCloseTo(0.4253, 6);
  expect(split.jit).toBeCloseTo(0.1132, 6);
  expect(split.libc).toBeCloseTo(0.0312, 6);
  expect(split.other).toBeCloseTo(0.0033, 6);
  expect(dsoSplit("    30.75%  haproxy\n    64.93%  [kernel.kallsyms]").binary).toBeCloseTo(0.3075, 6);
  // Applied to the measured CPU per request: shares times the median.
  const table = splitTable(new Map([["tether", [{ usPerReq: 100, rps: 10_000, p99Ms: 1, split }]]]));
  expect(table).toContain("| tether | 100.0 | 42.7 | 42.5 | 11.3 | 3.1 | 0.3 |");
});
