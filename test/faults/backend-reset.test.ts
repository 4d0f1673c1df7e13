/**
 * A backend that breaks its responses half-way (a reset or an early close,
 * in the head, in a Content-Length body, in a chunked body) while other
 * clients use healthy backends. A broken response reaches the client as
 * broken (502 before the head, an error or a short body after it), always
 * within a bounded time, and never as a complete-looking response; healthy
 * traffic is untouched. tether runs as the real CLI: Bun prints each errored
 * response stream to stderr, which stays in the child's captured stderr.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { Socket, TCPSocketListener } from "bun";
import { tempDir, writeConfig } from "../support/files.ts";
import { type Child, spawnCli } from "../support/tether.ts";
import {
  describe as describeSamples,
  KEY,
  type ProcBackend,
  procBackend,
  runClients,
  type Sample,
} from "./support.ts";

const DECLARED = 100_000;
const MODES = [
  "head-reset",
  "head-close",
  "length-reset",
  "length-close",
  "chunked-reset",
  "chunked-close",
] as const;
type Mode = (typeof MODES)[number];

/** Answers every request by breaking it the way its path asks: /broken/<mode>/... */
function breakingBackend(): TCPSocketListener<{ buf: string }> {
  const cut = (s: Socket<{ buf: string }>, reset: boolean) => (reset ? s.terminate() : s.end());
  return Bun.listen<{ buf: string }>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(s) {
        s.data = { buf: "" };
      },
      data(s, chunk) {
        s.data.buf += new TextDecoder("latin1").decode(chunk);
        if (!s.data.buf.includes("\r\n\r\n")) return;
        const mode = (/^GET \/broken\/([a-z-]+)\//.exec(s.data.buf)?.[1] ?? "head-reset") as Mode;
        s.data.buf = "";
        const reset = mode.endsWith("-reset");
        if (mode.startsWith("head")) {
          s.write("HTTP/1.1 200 OK\r\nContent-Type: text/pl");
          setTimeout(() => cut(s, reset), 5);
        } else if (mode.startsWith("length")) {
          s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${DECLARED}\r\n\r\n${"x".repeat(30_000)}`);
          setTimeout(() => cut(s, reset), 20);
        } else {
          s.write(`HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n`);
          s.write(`1000\r\n${"y".repeat(0x1000)}\r\n1000\r\n${"y".repeat(0x1000)}\r\n`);
          setTimeout(() => cut(s, reset), 20);
        }
      },
    },
  });
}

let healthy: ProcBackend[] = [];
let broken: TCPSocketListener<{ buf: string }>;
let child: Child;
let url = "";

beforeAll(async () => {
  healthy = await Promise.all(["h1", "h2"].map((n) => procBackend(n)));
  broken = breakingBackend();
  const file = writeConfig(tempDir(), {
    listeners: [
      {
        name: "web",
        protocol: "http",
        address: "127.0.0.1:0",
        pool: "app",
        routes: [{ pathPrefix: "/broken/", pool: "broken" }],
      },
    ],
    pools: {
      app: {
        backends: healthy.map((b) => ({ id: b.name, url: b.url })),
        persistence: [{ type: "cookie", mode: "insert", name: "TETHER" }],
      },
      broken: {
        backends: [{ id: "broken", url: `http://127.0.0.1:${broken.port}` }],
        persistence: [{ type: "cookie", mode: "insert", name: "TETHER" }],
        responseTimeoutMs: 2000,
      },
    },
    secrets: { cookieKeys: [KEY] },
    snapshot: false,
  });
  child = spawnCli(["--config", file]);
  url = `http://127.0.0.1:${await child.listening("web")}`;
});

afterAll(async () => {
  await child?.stop();
  broken?.stop(true);
  await Promise.all(healthy.map((b) => b.stop()));
});

test("responses broken half-way reach the client broken, within a bounded time; other traffic is untouched", async () => {
  const brokenClients = 18;
  const modeOf = (s: Sample) => MODES[s.client % MODES.length] as Mode;
  const [bad, good] = await Promise.all([
    runClients({
      url,
      clients: brokenClients,
      durationMs: 2500,
      maxRequestMs: 5000,
      path: (c, n) => `/broken/${MODES[c % MODES.length]}/r${n}`,
    }),
    runClients({ url, clients: 20, durationMs: 2500, path: (c, n) => `/c${c}/r${n}?bytes=20000` }),
  ]);

  // Nothing hung.
  const hung = [...bad, ...good].filter((s) => s.error === "hang");
  expect(hung, describeSamples(hung)).toEqual([]);
  expect(bad.length).toBeGreaterThan(brokenClients * 5);

  for (const s of bad) {
    const mode = modeOf(s);
    expect(s.end - s.start, describeSamples([s])).toBeLessThan(2000);
    if (mode.startsWith("head")) {
      // Broken before a response existed: the designed 502.
      expect(s.status, describeSamples([s])).toBe(502);
    } else {
      // The head went out: the body must end in an error or visibly short, never look complete.
      expect(s.status).toBe(200);
      const visiblyBroken = s.error !== null || s.bytes < (mode.startsWith("length") ? DECLARED : 1);
      expect(visiblyBroken, `${mode}: ${describeSamples([s])} bytes ${s.bytes}`).toBe(true);
      if (mode.startsWith("chunked")) expect(s.error, `${mode}: a chunked body ended cleanly`).not.toBeNull();
    }
  }

  // Healthy traffic through the same listener: all complete.
  const failedGood = good.filter((s) => s.status !== 200 || s.error !== null || s.bytes !== 20_000);
  expect(failedGood, describeSamples(failedGood)).toEqual([]);
  expect(good.length).toBeGreaterThan(200);
});
