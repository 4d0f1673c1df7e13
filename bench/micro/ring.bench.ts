/**
 * Micro-benchmarks of src/ring: key hashing, ring lookups, bounded-load picks
 * and construction, plus a ketama baseline (not shipped) for the comparison
 * in src/ring/README.md. Run: bun bench/micro/ring.bench.ts
 * Budget (issue): lookup <= 200 ns median for 3-20 backends; building 50 < 50 ms.
 * Numbers move with machine load: compare runs made back to back.
 */
import { bench, do_not_optimize, group, run, summary } from "mitata";
import { BoundedLoad, HashRing, hashKey, type RingMember } from "../../src/ring/index.ts";

const SIZES = [3, 10, 20, 50] as const;
const ids = (n: number) => Array.from({ length: n }, (_, i) => `app-${i + 1}`);
const equal = (n: number): RingMember[] => ids(n).map((id) => ({ id, weight: 1 }));
/** Four distinct weights (1..4), the slowest common case: one logarithm per weight group at worst. */
const mixed = (n: number): RingMember[] => ids(n).map((id, i) => ({ id, weight: 1 + (i % 4) }));

const KEY_COUNT = 4096;
const sessionKeys = Array.from({ length: KEY_COUNT }, () => crypto.randomUUID().replaceAll("-", ""));
const keyHashes = Uint32Array.from(sessionKeys, hashKey);
let cursor = 0;
const nextKey = () => keyHashes[cursor++ & (KEY_COUNT - 1)] as number;

/** What the pool does: look the backend up by id and check its state. One of n is draining. */
function eligibility(n: number) {
  const state = new Map(ids(n).map((id) => [id, { state: id === "app-2" ? "drain" : "ready" }]));
  return (id: string) => state.get(id)?.state === "ready";
}

group("hashKey", () => {
  let i = 0;
  bench("session key (32 hex chars)", () =>
    do_not_optimize(hashKey(sessionKeys[i++ & (KEY_COUNT - 1)] as string)),
  );
  bench("IPv4 address", () => do_not_optimize(hashKey("203.0.113.7")));
});

for (const n of SIZES) {
  summary(() => {
    const ringEqual = new HashRing(equal(n));
    const ringMixed = new HashRing(mixed(n));
    const eligible = eligibility(n);
    bench(`lookup n=${n} equal weights`, () => do_not_optimize(ringEqual.lookup(nextKey())));
    bench(`lookup n=${n} equal weights + eligible`, () =>
      do_not_optimize(ringEqual.lookup(nextKey(), eligible)),
    );
    bench(`lookup n=${n} weights 1..4`, () => do_not_optimize(ringMixed.lookup(nextKey())));
    bench(`lookup n=${n} weights 1..4 + eligible`, () =>
      do_not_optimize(ringMixed.lookup(nextKey(), eligible)),
    );
    // Busy: 20-32 requests in flight each, so every pick needs every load.
    const load = new Map(ids(n).map((id, i) => [id, 20 + ((i * 7) % 13)]));
    const bounded = new BoundedLoad(ringEqual, 1.25, (id) => load.get(id) ?? 0);
    bench(`BoundedLoad.pick n=${n} busy + eligible`, () =>
      do_not_optimize(bounded.pick(nextKey(), eligible)),
    );
    const idle = new BoundedLoad(ringEqual, 1.25, () => 0);
    bench(`BoundedLoad.pick n=${n} idle + eligible`, () => do_not_optimize(idle.pick(nextKey(), eligible)));
    const ketama = new Ketama(ids(n), 4000);
    bench(`baseline: ketama 4000 points/backend n=${n}`, () => do_not_optimize(ketama.lookup(nextKey())));
  });
}

group("construction", () => {
  bench("new HashRing, 50 backends", () => do_not_optimize(new HashRing(mixed(50))));
  bench("baseline: ketama 4000 points/backend, 50 backends", () =>
    do_not_optimize(new Ketama(ids(50), 4000)),
  );
});

/**
 * A ketama ring as first proposed for tether (points from xxHash32(id-i), sorted,
 * binary search), only to measure what HRW was chosen over.
 */
class Ketama {
  private readonly points: Uint32Array;
  private readonly owners: Uint16Array;
  constructor(
    private readonly ids: readonly string[],
    pointsPerBackend: number,
  ) {
    const packed = new Float64Array(ids.length * pointsPerBackend);
    let p = 0;
    ids.forEach((id, owner) => {
      for (let i = 0; i < pointsPerBackend; i++)
        packed[p++] = (Bun.hash.xxHash32(`${id}-${i}`) >>> 0) * 65536 + owner;
    });
    packed.sort();
    this.points = Uint32Array.from(packed, (v) => Math.floor(v / 65536));
    this.owners = Uint16Array.from(packed, (v) => v % 65536);
  }
  lookup(keyHash: number): string {
    const points = this.points;
    let lo = 0;
    let hi = points.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((points[mid] as number) < keyHash) lo = mid + 1;
      else hi = mid;
    }
    return this.ids[this.owners[lo === points.length ? 0 : lo] as number] as string;
  }
}

const { benchmarks } = await run();

console.log("\nmedian (p50) per call:");
for (const trial of benchmarks) {
  for (const r of trial.runs) {
    if (!r.stats) continue;
    const ns = r.stats.p50;
    const text =
      ns >= 1e6
        ? `${(ns / 1e6).toFixed(2)} ms`
        : ns >= 1e3
          ? `${(ns / 1e3).toFixed(2)} µs`
          : `${ns.toFixed(1)} ns`;
    console.log(`  ${r.name.padEnd(52)} ${text.padStart(10)}`);
  }
}
