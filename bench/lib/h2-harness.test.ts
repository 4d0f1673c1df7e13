// The h2 mode of bench/run.ts: its options, generated configs (checked by the peers' own
// parsers where installed), h2load's command and output, and where requests went.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeCert, run } from "../../test/support/certs.ts";
import { quicSessionStarts } from "../h3-reload.ts";
import { countsBetween } from "./backends.ts";
import { summaryChart } from "./chart.ts";
import {
  haproxyConfig,
  nginxConfig,
  nginxHasHttp2Directive,
  type TlsFiles,
  tetherConfig,
} from "./configs.ts";
import { durationUs, h2loadCommand, h2loadErrorCount, logPercentiles, parseH2loadOutput } from "./h2load.ts";
import { parseOptions } from "./options.ts";
import { backendSpread, backendTable, type RunRecord } from "./report.ts";

const backends = [
  { id: "app-1", port: 9001 },
  { id: "app-2", port: 9002 },
];

let dir = "";
let tls: TlsFiles;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "tether-h2-harness-"));
  const c = await makeCert(dir, "localhost", ["IP:127.0.0.1"]);
  const pem = join(dir, "proxy.pem");
  writeFileSync(pem, (await Bun.file(c.cert).text()) + (await Bun.file(c.key).text()));
  tls = { ...c, pem };
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("--h2 options", () => {
  test("turn on the h2 mode with 16 connections × 4 streams and no direct row", () => {
    const o = parseOptions(["--h2"], {});
    expect([o.h2, o.connections, o.streams]).toEqual([true, 16, 4]);
    expect(o.peers).toEqual(["tether", "nginx", "haproxy"]);
  });
  test("flags and BENCH_* still beat the h2 defaults, and BENCH_H2=1 is --h2", () => {
    const o = parseOptions(["--h2", "--connections", "8", "--streams=10"], { BENCH_ROUNDS: "2" });
    expect([o.connections, o.streams, o.rounds]).toEqual([8, 10, 2]);
    expect(parseOptions([], { BENCH_H2: "1" }).h2).toBe(true);
    expect(parseOptions([], {}).h2).toBe(false);
  });
});

describe("h2 configs", () => {
  test("tether: an https listener offering HTTP/1.1 and h2, cookie insert on", () => {
    const cfg = tetherConfig({ port: 8443, backends, persistence: true, tls, protocols: ["http/1.1", "h2"] });
    const json = JSON.parse(JSON.stringify(cfg));
    expect(json.listeners[0]).toMatchObject({
      protocol: "https",
      protocols: ["http/1.1", "h2"],
      tls: { certificates: [{ cert: tls.cert, key: tls.key }] },
    });
    expect(json.pools.app.persistence[0]).toEqual({ type: "cookie", mode: "insert", name: "TETHER" });
  });

  test("tether's own check accepts it", async () => {
    const cfg = tetherConfig({ port: 8443, backends, persistence: true, tls, protocols: ["http/1.1", "h2"] });
    const path = join(dir, "tether.json");
    writeFileSync(path, JSON.stringify(cfg));
    const r = await run([
      process.execPath,
      join(import.meta.dir, "../../src/main.ts"),
      "check",
      "--config",
      path,
    ]);
    expect(r.out).not.toContain("invalid");
    expect(r.code).toBe(0);
  });

  test("HAProxy: TLS with ALPN h2,http/1.1 on the bind, cookie insert kept", () => {
    const c = haproxyConfig(8443, backends, tls.pem, "h2,http/1.1");
    expect(c).toContain(`bind 127.0.0.1:8443 ssl crt ${tls.pem} alpn h2,http/1.1`);
    expect(c).toContain("cookie SRVID insert indirect nocache");
  });

  test.skipIf(!Bun.which("haproxy"))("HAProxy parses it (haproxy -c)", async () => {
    const path = join(dir, "haproxy.cfg");
    writeFileSync(path, haproxyConfig(8443, backends, tls.pem, "h2,http/1.1"));
    const r = await run(["haproxy", "-c", "-f", path]);
    expect(r.out).toContain("Configuration file is valid");
    expect(r.code).toBe(0);
  });

  test("nginx: `http2 on;` from 1.25.1, `listen ... ssl http2` before it; the cookie hash either way", () => {
    expect(nginxHasHttp2Directive("1.22.1")).toBe(false);
    expect(nginxHasHttp2Directive("1.25.0")).toBe(false);
    expect(nginxHasHttp2Directive("1.25.1")).toBe(true);
    expect(nginxHasHttp2Directive("1.27.4")).toBe(true);
    const old = nginxConfig("/tmp/x", 8443, backends, { tls, directive: false });
    expect(old).toContain("listen 127.0.0.1:8443 ssl http2;");
    expect(old).not.toContain("http2 on;");
    const now = nginxConfig("/tmp/x", 8443, backends, { tls, directive: true });
    expect(now).toContain("listen 127.0.0.1:8443 ssl;\n    http2 on;");
    for (const c of [old, now]) {
      expect(c).toContain(`ssl_certificate ${tls.cert};`);
      expect(c).toContain(`ssl_certificate_key ${tls.key};`);
      expect(c).toContain("hash $cookie_SRVID consistent;");
    }
  });

  test.skipIf(!Bun.which("nginx"))(
    "nginx parses it, spelled for the installed version (nginx -t)",
    async () => {
      const version = /nginx\/(\S+)/.exec((await run(["nginx", "-v"])).out)?.[1] ?? "0";
      const ndir = join(dir, "nginx");
      mkdirSync(ndir, { recursive: true });
      const conf = join(ndir, "nginx.conf");
      writeFileSync(
        conf,
        nginxConfig(ndir, 8443, backends, { tls, directive: nginxHasHttp2Directive(version) }),
      );
      const r = await run(["nginx", "-t", "-p", ndir, "-e", join(ndir, "error.log"), "-c", conf]);
      expect(r.out).toContain("test is successful");
      expect(r.code).toBe(0);
    },
  );
});

describe("h2load", () => {
  test("is pinned, sends the cookie on every request and logs each request for the percentiles", () => {
    const cmd = h2loadCommand({
      url: "https://127.0.0.1:1/",
      durationS: 10,
      connections: 16,
      streams: 4,
      threads: 1,
      cookie: "TETHER=abc",
      core: "1",
      logPath: "",
      requestLog: "/tmp/r.tsv",
    });
    expect(cmd).toEqual([
      "taskset",
      "-c",
      "1",
      "h2load",
      "-t1",
      "-c16",
      "-m4",
      "-D10",
      "-H",
      "cookie: TETHER=abc",
      "--log-file=/tmp/r.tsv",
      "https://127.0.0.1:1/",
    ]);
  });

  test("reads h2load 1.52's summary", () => {
    const out = `Application protocol: h2
finished in 2.00s, 49216.00 req/s, 1.83MB/s
requests: 98432 total, 98440 started, 98432 done, 98430 succeeded, 2 failed, 1 errored, 0 timeout
status codes: 98430 2xx, 0 3xx, 1 4xx, 1 5xx
                     min         max         mean         sd        +/- sd
time for request:       21us     38.95ms       121us       706us    99.22%
`;
    const r = parseH2loadOutput(out);
    expect([r.requests, r.durationUs, r.protocol]).toEqual([98432, 2e6, "h2"]);
    expect([r.latencyUs.max, r.latencyUs.mean]).toEqual([38950, 121]);
    expect(h2loadErrorCount(r)).toBe(2 + 1 + 1 + 1);
    expect(() => parseH2loadOutput("connect failed")).toThrow(/no summary/);
  });

  test("durations in h2load's units", () => {
    expect([durationUs("21us"), durationUs("1.5ms"), durationUs("2.00s")]).toEqual([21, 1500, 2e6]);
    expect(durationUs("soon")).toBeNaN();
  });

  test("percentiles come from the log's last column", () => {
    const log = Array.from({ length: 100 }, (_, i) => `1796452762861980\t200\t${i + 1}`).join("\n");
    expect(logPercentiles(`${log}\n`)).toEqual({ p50: 50.5, p90: 91, p99: 100 });
  });
});

describe("where the requests went", () => {
  const rec = (peer: "tether" | "nginx", round: number, cookieBackend: string, counts: number[]) =>
    ({
      round,
      peer,
      h2: {
        cookieBackend,
        backendRequests: Object.fromEntries(counts.map((n, i) => [`app-${i + 1}`, n])),
      },
    }) as unknown as RunRecord;

  test("counts are taken between two readings", () => {
    expect(countsBetween({ "app-1": 5, "app-2": 7 }, { "app-1": 15, "app-2": 7 })).toEqual({
      "app-1": 10,
      "app-2": 0,
    });
  });

  test("sums each backend over rounds and the share that reached the cookie's backend", () => {
    const spread = backendSpread(
      [
        rec("tether", 1, "app-1", [90, 10]),
        rec("tether", 2, "app-2", [0, 100]),
        rec("nginx", 1, "app-2", [0, 50]),
      ],
      ["tether", "nginx"],
    );
    expect(spread).toEqual([
      { peer: "tether", byBackend: { "app-1": 90, "app-2": 110 }, toCookieBackend: 0.95 },
      { peer: "nginx", byBackend: { "app-1": 0, "app-2": 50 }, toCookieBackend: 1 },
    ]);
    expect(backendTable(spread).split("\n")).toEqual([
      "| proxy | app-1 | app-2 | to the cookie's backend |",
      "|---|---:|---:|---:|",
      "| tether | 90 | 110 | 95.0% |",
      "| nginx | 0 | 50 | 100.0% |",
    ]);
  });
});

describe("h3-reload", () => {
  const constants = {
    logSourceType: { QUIC_SESSION: 7, URL_REQUEST: 2 },
    logEventTypes: { QUIC_SESSION: 40, REQUEST_ALIVE: 3 },
    timeTickOffset: "1000000",
  };
  const events = [
    { type: 40, phase: 1, time: "10", source: { type: 7, id: 1 } },
    { type: 40, phase: 2, time: "90", source: { type: 7, id: 1 } },
    { type: 3, phase: 1, time: "20", source: { type: 2, id: 2 } },
    { type: 40, phase: 1, time: "95", source: { type: 7, id: 3 } },
  ];

  test("counts the QUIC connections Chromium began, at their epoch time", () => {
    expect(quicSessionStarts(JSON.stringify({ constants, events }))).toEqual([1000010, 1000095]);
  });

  test("reads a NetLog whose events array was left open", () => {
    const open = `{"constants":${JSON.stringify(constants)},"events":[${events.map((e) => JSON.stringify(e)).join(",\n")},\n`;
    expect(quicSessionStarts(open)).toEqual([1000010, 1000095]);
  });
});

test("the chart's title names the h2 job", () => {
  const machine = { date: "2026-12-05T06:51:00.000Z", cpuModel: "Xeon", nproc: 2 };
  const job = { connections: 16, threads: 1, durationS: 10, rounds: 5, keepAlive: 1 };
  expect(summaryChart([], machine, { ...job, h2: true, streams: 4 })).toContain(
    "HTTP/2, h2load -t1 -c16 -m4",
  );
  expect(summaryChart([], machine, job)).toContain("wrk -t1 -c16");
});
