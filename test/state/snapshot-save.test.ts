import { describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import type { Runtime } from "../../src/contracts.ts";
import type { OperatorState } from "../../src/pool/drain.ts";
import { buildRuntime } from "../../src/server/runtime.ts";
import { startSnapshots } from "../../src/state/persist.ts";
import { applySnapshot, collectSnapshot, readSnapshot, writeSnapshot } from "../../src/state/snapshot.ts";
import { saveSnapshot } from "../../src/state/snapshot-save.ts";
import { tempDir } from "../support/files.ts";
import { config, memoryLogger } from "../support/tether.ts";

const KEY = Buffer.alloc(32, 4);
const ENTRIES = 200_000;
const backends = [
  { id: "b1", url: "http://127.0.0.1:1" },
  { id: "b2", url: "http://127.0.0.1:2" },
];
const input = (snapshotFile?: string) => ({
  listeners: [{ name: "web", protocol: "http" as const, address: "127.0.0.1:0", pool: "app" }],
  pools: {
    app: {
      backends,
      persistence: [
        { type: "cookie" as const, mode: "learn" as const, name: "SID" },
        { type: "url" as const, param: "sid" },
      ],
    },
    other: { backends, persistence: [{ type: "cookie" as const, mode: "learn" as const, name: "S" }] },
  },
  ...(snapshotFile ? { snapshot: { file: snapshotFile, intervalMs: 60_000 } } : {}),
});

/** Fills the app pool's cookie table with `n` entries and its url table with a few. */
function fill(runtime: Runtime, n: number, nowSec: number): void {
  const tables = runtime.pools.get("app")?.chain.tables;
  const cookie = tables?.get("0:cookie");
  const url = tables?.get("1:url");
  if (!cookie || !url) throw new Error(`no tables to fill: ${[...(tables?.keys() ?? [])]}`);
  for (let i = 0; i < n; i++)
    cookie.putHashed(i * 7919 + 1, i % 3 ? "b1" : "b2", nowSec + 600 + (i % 50), nowSec);
  for (let i = 0; i < 20; i++) url.putHashed(2 ** 40 + i, "b2", nowSec + 60, nowSec);
}

/** Counts event-loop turns until stopped: each turn is a chance to serve a request. */
function countTurns(): { stop(): number } {
  let turns = 0;
  let running = true;
  const spin = () => {
    if (!running) return;
    turns++;
    setImmediate(spin);
  };
  setImmediate(spin);
  return {
    stop() {
      running = false;
      return turns;
    },
  };
}

describe("sliced snapshot save", () => {
  test("writes byte for byte what one encode of the whole snapshot writes, and reads back identically", async () => {
    const runtime = buildRuntime(config(input()), undefined, [KEY]);
    const nowMs = Date.now();
    fill(runtime, ENTRIES, Math.floor(nowMs / 1000));
    const states = new Map<string, OperatorState>([
      ["app\0b1", { state: "drain", until: nowMs + 60_000 }],
      ["other\0b2", { state: "maint", until: 0 }],
    ]);
    const dir = tempDir();
    const whole = join(dir, "whole.msgpack");
    const sliced = join(dir, "sliced.msgpack");
    const expected = collectSnapshot(runtime, states, nowMs);
    writeSnapshot(whole, expected);

    const r = await saveSnapshot(sliced, runtime, states, { nowMs });

    expect(r.entries).toBe(ENTRIES + 20);
    expect(r.bytes).toBe(statSync(sliced).size);
    expect(readFileSync(sliced).equals(readFileSync(whole))).toBe(true);
    expect(readSnapshot(sliced)).toEqual({ snapshot: expected });
    expect(statSync(sliced).mode & 0o777).toBe(0o600);
    expect(readdirSync(dir).sort()).toEqual(["sliced.msgpack", "whole.msgpack"]);
  });

  test("hands the thread back to the event loop after every slice of entries", async () => {
    const runtime = buildRuntime(config(input()), undefined, [KEY]);
    fill(runtime, ENTRIES, Math.floor(Date.now() / 1000));
    const file = join(tempDir(), "state.msgpack");
    const turns = countTurns();

    const r = await saveSnapshot(file, runtime, new Map(), { sliceEntries: 1000 });

    const seen = turns.stop();
    // One slice per 1000 entries of each table, and one that finds each table's end.
    expect(r.slices).toBeGreaterThanOrEqual(ENTRIES / 1000 + 3);
    expect(seen).toBeGreaterThanOrEqual(r.slices);
  });

  test("an entry touched while the save runs is kept, with its newer expiry", async () => {
    const runtime = buildRuntime(config(input()), undefined, [KEY]);
    const nowSec = Math.floor(Date.now() / 1000);
    fill(runtime, 10_000, nowSec);
    const table = runtime.pools.get("app")?.chain.tables.get("0:cookie");
    const file = join(tempDir(), "state.msgpack");
    let touched = false;

    await saveSnapshot(file, runtime, new Map(), {
      sliceEntries: 1000,
      yieldToLoop: async () => {
        // The first entry has been read by now; touching it moves it to the table's end.
        if (!touched) table?.putHashed(1, "b1", nowSec + 1800, nowSec);
        touched = true;
      },
    });

    const entries = readSnapshot(file).snapshot?.tables.find((t) => t.table === "0:cookie")?.entries ?? [];
    const copies = [];
    for (let i = 0; i < entries.length; i += 3) if (entries[i] === 1) copies.push(entries.slice(i, i + 3));
    expect(copies.at(-1)).toEqual([1, "b1", nowSec + 1800]);
    const restored = buildRuntime(config(input()), undefined, [KEY]);
    applySnapshot(restored, readSnapshot(file).snapshot as never, nowSec * 1000);
    expect(restored.pools.get("app")?.chain.tables.get("0:cookie")?.peekHashed(1, nowSec)).toEqual({
      backendId: "b1",
      expiresAtSec: nowSec + 1800,
    });
  });

  test("a save that cannot be renamed into place leaves the previous file and no temp file", async () => {
    const runtime = buildRuntime(config(input()), undefined, [KEY]);
    fill(runtime, 100, Math.floor(Date.now() / 1000));
    const dir = tempDir();
    const file = join(dir, "state.msgpack");
    mkdirSync(join(file, "occupied"), { recursive: true });

    await expect(saveSnapshot(file, runtime, new Map())).rejects.toThrow();

    expect(readdirSync(dir)).toEqual(["state.msgpack"]);
    expect(existsSync(join(file, "occupied"))).toBe(true);
  });
});

describe("snapshot lifecycle", () => {
  test("stop writes the final snapshot in slices, serving between them, and resolves once it is on disk", async () => {
    const dir = tempDir();
    const file = join(dir, "state.msgpack");
    const c = config(input(file));
    const runtime = buildRuntime(c, undefined, [KEY]);
    const log = memoryLogger();
    const snapshots = startSnapshots(
      c,
      () => runtime,
      new Map([["app\0b2", { state: "drain" as const, until: 0 }]]),
      log,
    );
    fill(runtime, ENTRIES, Math.floor(Date.now() / 1000));
    const turns = countTurns();

    await snapshots.stop();

    expect(turns.stop()).toBeGreaterThanOrEqual(ENTRIES / 2048);
    const { snapshot } = readSnapshot(file);
    expect(snapshot?.tables.find((t) => t.table === "0:cookie")?.entries.length).toBe(ENTRIES * 3);
    expect(snapshot?.states).toEqual([{ pool: "app", backend: "b2", state: "drain" }]);
    expect(log.lines.filter((l) => l.level === "error")).toEqual([]);
  });
});
