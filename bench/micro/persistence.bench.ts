/**
 * Micro-benchmarks of the persistence engine: token seal and open, and one
 * whole decision (chain.place) per rule, as the forwarder calls it.
 * Run: bun bench/micro/persistence.bench.ts
 * Budget (issue): open <= 2 µs, whole decision <= 3 µs (median, this machine).
 */
import { randomBytes } from "node:crypto";
import { bench, do_not_optimize, group, run } from "mitata";
import type { PersistenceRuleConfig } from "../../src/config/schema.ts";
import { type Member, PersistenceChain } from "../../src/persistence/chain.ts";
import { backendKey, TokenSealer } from "../../src/persistence/token.ts";
import type { RequestFacts } from "../../src/persistence/types.ts";

const KEY = randomBytes(32);
const sealer = new TokenSealer([KEY], "app", "TETHER");
const claims = {
  sessionKey: randomBytes(16),
  backendKey: backendKey("app-2"),
  issuedAt: 1_800_000_000,
  lastSeen: 1_800_000_000,
};
const token = sealer.seal(claims);

group("token", () => {
  bench("seal", () => do_not_optimize(sealer.seal(claims)));
  bench("open (valid)", () => do_not_optimize(sealer.open(token)));
  bench("open (tampered)", () => do_not_optimize(sealer.open(`${token.slice(0, 86)}A`)));
});

const members: Member[] = ["app-1", "app-2", "app-3"].map((id) => ({
  id,
  weight: 1,
  state: "ready",
  inflight: 0,
}));
const chainFor = (rule: PersistenceRuleConfig) =>
  new PersistenceChain(members, { pool: "app", rules: [rule], keys: [KEY], hashBalanceFactor: 1.25 });
const base: RequestFacts = {
  cookie: null,
  target: "/",
  clientIp: "203.0.113.7",
  headers: new Headers(),
  nowSec: 1_800_000_000,
};

const insert = chainFor({
  type: "cookie",
  mode: "insert",
  name: "TETHER",
  sameSite: "Lax",
  path: "/",
  partitioned: false,
  refreshAfterMs: 60_000,
  rebalance: "persistent",
});
const first = insert.place(base);
const issued = first
  ? insert.remember(base, first.placement, {
      setCookies: [],
      location: null,
      cacheControl: null,
      secure: false,
    })
  : [];
const cookieHeader = (issued.find((e) => e.kind === "set-cookie") as { header: string }).header.split(
  ";",
)[0] as string;

const learn = chainFor({
  type: "cookie",
  mode: "learn",
  name: "SID",
  expireMs: 600_000,
  maxEntries: 100_000,
});
learn.tables.get("0:cookie")?.set("abc123", "app-3", base.nowSec);
const url = chainFor({ type: "url", param: "sid", expireMs: 600_000, maxEntries: 100_000 });
const ip = chainFor({ type: "client-ip", ipv4Prefix: 24, ipv6Prefix: 64 });
const header = chainFor({ type: "header", name: "x-session-id", mode: "hash" });
const none = chainFor({ type: "header", name: "x-absent", mode: "hash" });

group("whole decision (chain.place)", () => {
  bench("cookie insert, returning client", () =>
    do_not_optimize(insert.place({ ...base, cookie: `a=1; ${cookieHeader}` })),
  );
  bench("cookie insert, new client", () => do_not_optimize(insert.place(base)));
  bench("cookie learn, known session", () => do_not_optimize(learn.place({ ...base, cookie: "SID=abc123" })));
  bench("url ?sid=, unknown (hash)", () =>
    do_not_optimize(url.place({ ...base, target: "/cart?x=1&sid=zz9" })),
  );
  bench("client-ip /24", () => do_not_optimize(ip.place(base)));
  bench("header", () =>
    do_not_optimize(header.place({ ...base, headers: new Headers({ "x-session-id": "s-1" }) })),
  );
  bench("no rule matches: new session", () => do_not_optimize(none.place(base)));
});

await run();
