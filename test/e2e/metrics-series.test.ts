/**
 * Metric series follow the backends: a backend's series appear when it first
 * serves, and go when a reload removes it.
 */
import { afterEach, expect, test } from "bun:test";
import type { ConfigInput } from "../../src/config/schema.ts";
import { backend, type TestBackend } from "../support/backends.ts";
import { config, type Running, startInProcess } from "../support/tether.ts";

const TOKEN = "metrics-series-token";
let cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

/** One pool of the named backends, no persistence rule, and an admin listener. */
const input = (backends: Record<string, TestBackend>) =>
  ({
    listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
    pools: { app: { backends: Object.entries(backends).map(([id, b]) => ({ id, url: b.url })) } },
    admin: { address: "127.0.0.1:0", token: TOKEN },
  }) as ConfigInput;

async function scrape(t: Running): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${t.tether.admin?.port}/metrics`, {
    headers: { authorization: `Bearer ${TOKEN}` },
  });
  return res.text();
}

test("a backend's request series go when a reload removes the backend, and the others stay", async () => {
  const b1 = backend("b1");
  const b2 = backend("b2");
  const t = startInProcess(input({ b1, b2 }));
  cleanup.push(
    () => t.stop(),
    () => b1.stop(),
    () => b2.stop(),
  );
  // No persistence rule: new requests spread over both backends.
  for (let i = 0; i < 40 && (b1.hits === 0 || b2.hits === 0); i++) await (await fetch(t.url())).text();
  const before = await scrape(t);
  expect(before).toContain('tether_requests_total{listener="web",pool="app",backend="b1",code="200"}');
  expect(before).toContain('tether_requests_total{listener="web",pool="app",backend="b2",code="200"}');

  await t.tether.reload(config(input({ b1 })));
  const after = await scrape(t);
  expect(after).toContain('tether_requests_total{listener="web",pool="app",backend="b1",code="200"}');
  expect(after).not.toContain('backend="b2"');
});
