/**
 * HTTP/2 and HTTP/3 listeners through the real CLI: SIGTERM sends GOAWAY and
 * lets open streams finish; SIGHUP (also one that reopens the listener) keeps
 * serving h2 and h3.
 */
import { afterEach, expect, test } from "bun:test";
import { join } from "node:path";
import { backend, type TestBackend } from "../support/backends.ts";
import { run } from "../support/certs.ts";
import { launchChromium, quicFlags } from "../support/chromium.ts";
import { FRAME, h2Connect, headersFrame, statusOf } from "../support/h2-frames.ts";
import { type Child, REPO, spawnCli, tempDir, writeConfig } from "../support/tether.ts";

const CERT = join(REPO, "certs/dev.pem");
const KEY = join(REPO, "certs/dev-key.pem");

let app: TestBackend | null = null;
let child: Child | null = null;
afterEach(async () => {
  if (child && child.proc.exitCode === null) await child.stop();
  app?.stop();
  app = null;
  child = null;
});

function h2Config(url: string, { port = 0, clientIdleMs = 60_000, weight = 1 } = {}) {
  return {
    listeners: [
      {
        name: "secure",
        protocol: "https",
        address: `127.0.0.1:${port}`,
        pool: "app",
        tls: { certificates: [{ cert: CERT, key: KEY }] },
        protocols: ["http/1.1", "h2", "h3"],
        clientIdleMs,
      },
    ],
    pools: { app: { backends: [{ id: "app", url, weight }] } },
    shutdownGraceMs: 10_000,
  };
}

test("SIGTERM: the h2 client gets GOAWAY, and its open stream still gets its answer", async () => {
  let started = 0;
  app = backend("app", async (req) => {
    if (new URL(req.url).pathname !== "/slow") return new Response("ok");
    started++;
    await Bun.sleep(1_000);
    return new Response("finished");
  });
  const dir = tempDir();
  child = spawnCli(["--config", writeConfig(dir, h2Config(app.url))]);
  const port = await child.listening("secure");
  const conn = await h2Connect(port);
  conn.send(
    headersFrame(1, [
      [":method", "GET"],
      [":scheme", "https"],
      [":authority", `127.0.0.1:${port}`],
      [":path", "/slow"],
    ]),
  );
  while (started === 0) await Bun.sleep(10);
  child.proc.kill("SIGTERM");
  expect(await conn.waitFor((f) => f.type === FRAME.GOAWAY, 5_000)).not.toBeNull();
  const answer = await conn.waitFor((f) => f.type === FRAME.HEADERS && f.stream === 1, 5_000);
  expect(answer && statusOf(answer.payload)).toBe(200);
  const data = await conn.waitFor((f) => f.type === FRAME.DATA && f.stream === 1, 5_000);
  expect(data?.payload.toString()).toBe("finished");
  expect(await child.proc.exited).toBe(0);
  conn.close();
}, 20_000);

test("SIGHUP, also one that reopens the listener, keeps serving h2 (curl) and h3 (Chromium)", async () => {
  app = backend("app");
  const dir = tempDir();
  const file = writeConfig(dir, h2Config(app.url));
  child = spawnCli(["--config", file]);
  const port = await child.listening("secure");
  const curlH2 = () =>
    run(["curl", "-sSk", "--http2", "-w", " %{http_version}", `https://127.0.0.1:${port}/`]);
  const first = await curlH2();
  expect(first.out).toBe("app 2");
  const browser = await launchChromium(quicFlags(port, CERT));
  try {
    const page = await (await browser.newContext({ ignoreHTTPSErrors: true })).newPage();
    const h3 = async () => {
      await page.goto(`https://127.0.0.1:${port}/`);
      return [
        await page.evaluate('performance.getEntriesByType("navigation")[0].nextHopProtocol'),
        await page.textContent("body"),
      ];
    };
    expect(await h3()).toEqual(["h3", "app"]);
    // The port written out (the listener reopens on it), then a weight (live), then an idle timeout (reopens).
    const reloads = [{ port }, { port, weight: 2 }, { port, weight: 2, clientIdleMs: 30_000 }];
    for (const next of reloads) {
      const before = child.lines.filter((l) => l.msg === "config reloaded").length;
      writeConfig(dir, h2Config(app.url, next));
      child.proc.kill("SIGHUP");
      await child.waitFor(
        () => child?.lines.filter((l) => l.msg === "config reloaded").length === before + 1,
      );
      expect((await curlH2()).out).toBe("app 2");
      expect(await h3()).toEqual(["h3", "app"]);
    }
    expect(child.lines.filter((l) => l.msg === "listener closing")).toHaveLength(2);
  } finally {
    await browser.close();
  }
}, 40_000);
