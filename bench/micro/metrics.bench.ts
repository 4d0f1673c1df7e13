/**
 * What metrics cost per request: the calls the forwarder makes for one
 * proxied request (a labelled counter, a histogram observation, a decision
 * counter, an active-session add), against the ~30-50 µs a proxied request
 * costs in total (bench/run.ts). Run: bun bench/micro/metrics.bench.ts
 * The budget: prom-client stays unless it costs more than 2% of throughput.
 */
import { bench, do_not_optimize, run } from "mitata";
import { Metrics } from "../../src/admin/metrics.ts";
import type { Runtime } from "../../src/contracts.ts";
import { ActiveSessions } from "../../src/pool/active-sessions.ts";
import { hashKey } from "../../src/ring/hash.ts";

const metrics = new Metrics(() => ({ pools: new Map() }) as unknown as Runtime);
const sessions = new ActiveSessions(300_000);
const keys = Array.from({ length: 1024 }, () => hashKey(crypto.randomUUID()));
let i = 0;

bench("metrics for one request (counter + histogram + decision)", () => {
  metrics.request("web", "app", "app-2", 200, 0.0004);
  metrics.decision("app", "cookie-insert", "hit");
});
bench("active-session add", () => sessions.add(keys[i++ & 1023] as number, Date.now()));
bench("active-session count (scrape-time)", () => do_not_optimize(sessions.count(Date.now())));

await run();
