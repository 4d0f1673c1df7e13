/**
 * The cost of moving learned-session batches between threads: msgpack (the
 * wire format, shared with snapshots and Redis) against structured clone of
 * plain objects and JSON strings, for the same batches, through a real
 * postMessage round trip to a Worker that decodes and applies them.
 * Run: bun bench/micro/sync.bench.ts
 */
import { bench, group, run } from "mitata";
import type { LearnedBatch } from "../../src/state/learn-batch.ts";
import { decode, encode, PROTOCOL_VERSION } from "../../src/workers/messages.ts";

const worker = new Worker(new URL("./sync-echo-worker.ts", import.meta.url).href);
let resolveReply: (() => void) | null = null;
worker.onmessage = () => resolveReply?.();
const roundTrip = (payload: unknown) =>
  new Promise<void>((resolve) => {
    resolveReply = resolve;
    worker.postMessage(payload);
  });

function batch(n: number): LearnedBatch {
  const e: LearnedBatch = [];
  for (let i = 0; i < n; i++)
    e.push("app", "0:cookie", Math.floor(Math.random() * 2 ** 48), `app-${i % 3}`, 1_800_000_000 + i);
  return e;
}

for (const n of [1, 64, 512]) {
  const e = batch(n);
  const objects = Array.from({ length: n }, (_, i) => ({
    pool: e[i * 5],
    table: e[i * 5 + 1],
    key: e[i * 5 + 2],
    backendId: e[i * 5 + 3],
    expiresAtSec: e[i * 5 + 4],
  }));
  group(`batch of ${n} entries: encode + postMessage + decode in the worker`, () => {
    bench("msgpack (Uint8Array)", () => roundTrip(encode({ v: PROTOCOL_VERSION, t: "learn", e })));
    bench("structured clone (plain objects)", () => roundTrip({ v: PROTOCOL_VERSION, t: "learn", objects }));
    bench("JSON string", () => roundTrip(JSON.stringify({ v: PROTOCOL_VERSION, t: "learn", e })));
  });
  group(`batch of ${n} entries: encode + decode only, this thread`, () => {
    bench("msgpack", () => decode(encode({ v: PROTOCOL_VERSION, t: "learn", e })));
    bench("JSON", () => JSON.parse(JSON.stringify({ v: PROTOCOL_VERSION, t: "learn", e })));
  });
}

await run();
worker.terminate();
