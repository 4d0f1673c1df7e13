/**
 * The hostile-input properties of test/fuzz/ with many more cases: opt-in,
 * not part of npm test.
 *
 *   bun scripts/fuzz-long.ts [--runs 100000] [--only cookie,url,header,admin,config] [--seed N]
 *
 * tether runs in this process (as in the tests), so the process's RSS is
 * tether's plus the fuzzer's; it is reported before and after each property
 * (after a full GC), with the duration. Exit code 1 when a property fails or
 * anything was left unhandled (rejection, exception, tether warning).
 */
import { parseArgs } from "node:util";
import {
  adminProperty,
  configProperty,
  cookieProperty,
  type FuzzProperty,
  headerProperty,
  issueTokens,
  urlProperty,
} from "../test/fuzz/properties.ts";
import { startFuzzEnv, watchProcess } from "../test/fuzz/support.ts";

const REPO = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const ALL = ["cookie", "url", "header", "admin", "config"] as const;

const { values } = parseArgs({
  options: {
    runs: { type: "string", default: "100000" },
    only: { type: "string" },
    seed: { type: "string" },
    help: { type: "boolean", default: false },
  },
});
if (values.help) {
  console.log(
    "usage: bun scripts/fuzz-long.ts [--runs 100000] [--only cookie,url,header,admin,config] [--seed N]",
  );
  process.exit(0);
}
const runs = Number(values.runs);
if (!Number.isInteger(runs) || runs < 1) throw new Error("--runs must be a positive integer");
const only = values.only ? values.only.split(",") : [...ALL];
for (const o of only) if (!(ALL as readonly string[]).includes(o)) throw new Error(`unknown property ${o}`);
const seed = values.seed === undefined ? Date.now() % 2 ** 31 : Number(values.seed);

const mib = (n: number) => (n / 1024 / 1024).toFixed(1);
function memory() {
  Bun.gc(true);
  const m = process.memoryUsage();
  return { rss: m.rss, heap: m.heapUsed };
}

const watch = watchProcess();
const env = startFuzzEnv();
const properties: Record<(typeof ALL)[number], () => Promise<FuzzProperty>> = {
  cookie: async () => cookieProperty(env, await issueTokens(env)),
  url: async () => urlProperty(env),
  header: async () => headerProperty(env),
  admin: async () => adminProperty(env),
  config: async () => configProperty(REPO),
};

console.log(`fuzz-long: ${runs} cases per property, seed ${seed}, bun ${Bun.version}`);
const start = memory();
const rows: string[] = [];
let failed = false;
for (const name of only as (typeof ALL)[number][]) {
  const p = await properties[name]();
  const before = memory();
  const t0 = performance.now();
  let outcome = "ok";
  try {
    await p.run(runs, seed);
  } catch (e) {
    failed = true;
    outcome = "FAILED";
    console.error(`\n${p.name}: ${e instanceof Error ? e.message : String(e)}\n`);
  }
  const seconds = (performance.now() - t0) / 1000;
  const after = memory();
  const row = `${p.name.padEnd(18)} ${outcome.padEnd(6)} ${String(runs).padStart(8)} cases ${seconds.toFixed(1).padStart(7)} s ${Math.round(
    runs / seconds,
  )
    .toString()
    .padStart(
      6,
    )}/s  RSS ${mib(before.rss)} → ${mib(after.rss)} MiB  heap ${mib(before.heap)} → ${mib(after.heap)} MiB`;
  rows.push(row);
  console.log(row);
}
await env.stop();
watch.stop();
const end = memory();

const leftovers = [
  ...watch.rejections.map((e) => `unhandled rejection: ${String(e)}`),
  ...watch.exceptions.map((e) => `uncaught exception: ${String(e)}`),
  ...env.problems.map((l) => `tether ${l.level}: ${JSON.stringify(l)}`),
];
for (const l of leftovers.slice(0, 20)) console.error(l);
if (leftovers.length) failed = true;

console.log("\nsummary");
for (const r of rows) console.log(`  ${r}`);
console.log(`  process RSS ${mib(start.rss)} MiB at start, ${mib(end.rss)} MiB at the end (seed ${seed})`);
console.log(failed ? "FAIL" : "PASS");
process.exit(failed ? 1 : 0);
