// Pure parts of the passthrough bench; nothing here starts a process or opens a socket.
import { describe, expect, test } from "bun:test";
import { budgetMs } from "../passthrough.ts";
import { parseSTime, sServerCommand, sTimeCommand } from "./passthrough-openssl.ts";
import { parsePtOptions } from "./passthrough-options.ts";
import { haproxyPassthroughConfig, tetherPassthroughConfig } from "./passthrough-peers.ts";
import { type Measure, type PtRecord, ptRatios, ROWS, summarizePt } from "./passthrough-report.ts";

const backends = [
  { id: "app-1", port: 9001 },
  { id: "app-2", port: 9002 },
];

describe("options", () => {
  test("defaults, --quick and flags; the kill budget leaves room for a slow run", () => {
    const o = parsePtOptions([]);
    expect([o.rounds, o.durationS, o.clients, o.peers]).toEqual([3, 2, 2, ["tether", "haproxy", "direct"]]);
    expect(budgetMs(o)).toBeGreaterThan(120_000);
    const q = parsePtOptions(["--quick", "--duration=2"]);
    expect([q.rounds, q.durationS, q.warmupS]).toEqual([1, 2, 0]);
    expect(() => parsePtOptions(["--peers", "tether,nginx"])).toThrow(/nginx/);
    expect(() => parsePtOptions(["--rounds", "0"])).toThrow(/rounds/);
  });
});

describe("openssl command lines and output", () => {
  test("backends resume by session ID only, and survive clients that reset instead of closing", () => {
    const cmd = sServerCommand({ cert: "c.pem", key: "k.pem" });
    for (const flag of ["-WWW", "-no_ticket", "-tls1_2", "-ignore_unexpected_eof"])
      expect(cmd).toContain(flag);
    expect(cmd).toContain("127.0.0.1:0");
  });

  test("s_time", () => {
    expect(sTimeCommand({ port: 4433, mode: "reuse", durationS: 2 }).join(" ")).toBe(
      "openssl s_time -connect 127.0.0.1:4433 -reuse -tls1_2 -time 2",
    );
    expect(sTimeCommand({ port: 1, mode: "new", durationS: 1, page: "/bulk.bin" }).slice(-2)).toEqual([
      "-www",
      "/bulk.bin",
    ]);
    const out = [
      "Now timing with session id reuse.",
      "starting",
      "*rrrrrrrr",
      "",
      "9 connections in 0.01s; 900.00 connections/user sec, bytes read 0",
      "9 connections in 3 real seconds, 0 bytes read per connection",
    ].join("\n");
    expect(parseSTime(out)).toEqual({ connections: 9, bytes: 0, resumed: 8, full: 1 });
    expect(() => parseSTime("ERROR\nUnable to get connection\n")).toThrow(/no summary/);
  });
});

describe("peer configurations", () => {
  test("tether: one tls-passthrough listener, tls-session then client-ip", () => {
    const c = tetherPassthroughConfig(8443, backends, { port: 9090, token: "t" }) as {
      listeners: { protocol: string; address: string }[];
      pools: { app: { backends: { url: string }[]; persistence: { type: string }[] } };
    };
    expect(c.listeners[0]).toMatchObject({ protocol: "tls-passthrough", address: "127.0.0.1:8443" });
    expect(c.pools.app.persistence.map((r) => r.type)).toEqual(["tls-session", "client-ip"]);
    expect(c.pools.app.backends.map((b) => b.url)).toEqual(["tcp://127.0.0.1:9001", "tcp://127.0.0.1:9002"]);
  });

  test("haproxy: mode tcp, one thread, learns the session ID from both hellos", () => {
    const cfg = haproxyPassthroughConfig(8443, backends, "/tmp/x.sock");
    for (const line of [
      "nbthread 1",
      "mode tcp",
      "bind 127.0.0.1:8443",
      "balance source",
      "stick-table type binary len 32 size 30k expire 30m",
      "tcp-request inspect-delay 5s",
      "tcp-request content accept if clienthello",
      "tcp-response inspect-delay 5s",
      "stick on req.payload_lv(43,1) if clienthello",
      "stick store-response res.payload_lv(43,1) if serverhello",
      "server app-2 127.0.0.1:9002",
    ])
      expect(cfg).toContain(line);
    expect(cfg).not.toContain("resp.payload");
  });
});

describe("report", () => {
  const m = (connections: number, wallS: number, cpuS: number | null): Measure => ({
    connections,
    bytes: connections * 1000,
    resumed: 0,
    full: connections,
    wallS,
    cpuS,
    noisePct: { proxy: 1, load: 2 },
  });
  const rec = (round: number, peer: "tether" | "haproxy", rate: number): PtRecord => ({
    round,
    peer,
    sticky: { ok: true, detail: "" },
    full: m(rate, 1, rate / 1000),
    resumed: null,
    bulk: null,
    learned: rate,
    rssMiB: 10,
    errors: [],
  });

  test("medians per peer and the median of same-round ratios", () => {
    const records = [
      rec(1, "tether", 100),
      rec(1, "haproxy", 200),
      rec(2, "tether", 300),
      rec(2, "haproxy", 300),
    ];
    const [t] = summarizePt(records, ["tether", "haproxy"]);
    const rate = ROWS.findIndex((r) => r.label.startsWith("full handshakes/s"));
    const cpu = ROWS.findIndex((r) => r.label === "proxy CPU µs per full handshake");
    expect(t?.values[rate]).toBe(200);
    expect(t?.values[cpu]).toBe(1000);
    const r = ptRatios(records);
    expect(r.rounds).toBe(2);
    expect(r.values[rate]).toBe(0.75);
    // Counts of learned sessions are not compared.
    expect(r.values[ROWS.findIndex((row) => row.label.startsWith("session IDs"))]).toBeNull();
  });
});
