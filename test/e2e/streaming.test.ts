/**
 * Bodies stream through tether with bounded memory. The suite moves 256 MiB
 * each way; set TETHER_STREAM_BYTES=1073741824 for the full 1 GiB figure:
 *   TETHER_STREAM_BYTES=1073741824 bun test test/e2e/streaming.test.ts
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { backend, type TestBackend } from "../support/backends.ts";
import { tempDir, writeConfig } from "../support/files.ts";
import { type Child, ENGINES, engineLabel, onEngine, spawnCli } from "../support/tether.ts";

const TOTAL = Number(process.env.TETHER_STREAM_BYTES ?? 256 * 1024 * 1024);
const CHUNK = 64 * 1024;
const RSS_LIMIT = 150 * 1024 * 1024;

function rssOf(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(m?.[1] ?? 0) * 1024;
}

/** Samples a process's RSS every 50 ms until stopped; returns the peak. */
function watchRss(pid: number) {
  let peak = rssOf(pid);
  const timer = setInterval(() => {
    peak = Math.max(peak, rssOf(pid));
  }, 50);
  return () => {
    clearInterval(timer);
    return Math.max(peak, rssOf(pid));
  };
}

function generated(total: number): ReadableStream<Uint8Array> {
  const chunk = new Uint8Array(CHUNK).fill(97);
  let sent = 0;
  return new ReadableStream({
    pull(c) {
      if (sent >= total) return c.close();
      const n = Math.min(CHUNK, total - sent);
      sent += n;
      c.enqueue(n === CHUNK ? chunk : chunk.subarray(0, n));
    },
  });
}

async function drainCount(stream: ReadableStream<Uint8Array> | null): Promise<number> {
  let n = 0;
  if (!stream) return n;
  for await (const c of stream) n += c.byteLength;
  return n;
}

for (const engine of ENGINES)
  describe(`streaming bodies${engineLabel(engine)}`, () => {
    let app: TestBackend;
    let child: Child;
    let port = 0;

    beforeAll(async () => {
      app = backend("stream", async (req, srv) => {
        srv.timeout(req, 0);
        if (req.method === "POST") return new Response(String(await drainCount(req.body)));
        return new Response(generated(TOTAL), { headers: { "content-type": "application/octet-stream" } });
      });
      const file = writeConfig(
        tempDir(),
        onEngine(
          {
            listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
            pools: { app: { backends: [{ id: "s", url: app.url }] } },
          },
          engine,
        ),
      );
      child = spawnCli(["--config", file]);
      port = await child.listening("web");
    });
    afterAll(async () => {
      await child.stop();
      app.stop();
    });

    test(`a ${TOTAL >> 20} MiB download streams through with RSS under 150 MB`, async () => {
      const stop = watchRss(child.proc.pid);
      const res = await fetch(`http://127.0.0.1:${port}/download`);
      expect(await drainCount(res.body)).toBe(TOTAL);
      const peak = stop();
      console.log(`download ${TOTAL >> 20} MiB: tether peak RSS ${(peak / 2 ** 20).toFixed(1)} MiB`);
      expect(peak).toBeLessThan(RSS_LIMIT);
    }, 120_000);

    test(`a ${TOTAL >> 20} MiB upload streams through with RSS under 150 MB`, async () => {
      const stop = watchRss(child.proc.pid);
      const res = await fetch(`http://127.0.0.1:${port}/upload`, {
        method: "POST",
        body: generated(TOTAL),
        duplex: "half",
      } as RequestInit);
      expect(await res.text()).toBe(String(TOTAL));
      const peak = stop();
      console.log(`upload ${TOTAL >> 20} MiB: tether peak RSS ${(peak / 2 ** 20).toFixed(1)} MiB`);
      expect(peak).toBeLessThan(RSS_LIMIT);
    }, 120_000);
  });
