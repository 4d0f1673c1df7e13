/**
 * How fast a session learned on one worker reaches the others: tether with
 * "workers": 2 and cookie learn; for each new session, the time from the
 * learning response until 8 fresh connections in a row (spread over the
 * workers by SO_REUSEPORT) all reach the session's backend.
 * Run: bun bench/propagation.ts [sessions=200]
 */
import { rawRequest, sessionBackends } from "../test/support/backends.ts";
import { tempDir, writeConfig } from "../test/support/files.ts";
import { spawnCli } from "../test/support/tether.ts";

const sessions = Number(process.argv[2] ?? 200);
const backends = sessionBackends();
const file = writeConfig(tempDir(), {
  listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
  pools: {
    app: {
      backends: backends.map((b, i) => ({ id: `b${i + 1}`, url: b.url })),
      persistence: [{ type: "cookie", mode: "learn", name: "SID" }],
    },
  },
  workers: 2,
  snapshot: false,
});
const child = spawnCli(["--config", file]);
const port = Number(
  (await child.waitFor((l) => l.msg === "listening" && l.name === "web" && l.workers === 2, 20_000)).port,
);
const backendOf = (raw: string) => /x-backend: (b\d)/i.exec(raw)?.[1];
const get = (cookie?: string) =>
  rawRequest(
    port,
    `GET / HTTP/1.1\r\nHost: x\r\n${cookie ? `Cookie: ${cookie}\r\n` : ""}Connection: close\r\n\r\n`,
  );

const delays: number[] = [];
for (let s = 0; s < sessions; s++) {
  const first = await get();
  const t0 = performance.now();
  const sid = /set-cookie: (SID=[^;\r\n]+)/i.exec(first)?.[1] as string;
  const home = backendOf(first);
  let streak = 0;
  while (streak < 8 && performance.now() - t0 < 2000) {
    streak = backendOf(await get(sid)) === home ? streak + 1 : 0;
  }
  delays.push(performance.now() - t0);
}
delays.sort((a, b) => a - b);
const q = (p: number) =>
  (delays[Math.min(delays.length - 1, Math.floor(p * delays.length))] as number).toFixed(2);
console.log(
  `propagation over ${sessions} sessions (ms, includes 8 confirming requests): p50 ${q(0.5)}  p99 ${q(0.99)}  max ${q(1)}`,
);
await child.stop();
for (const b of backends) b.stop();
