/**
 * The passthrough listener on its own (no app around it), for what the app
 * cannot inject: a cluster lookup of session IDs learned by another instance.
 */
import { afterAll, expect, test } from "bun:test";
import { Metrics } from "../../src/admin/metrics.ts";
import { noAudit } from "../../src/audit.ts";
import type { ProxyDeps } from "../../src/contracts.ts";
import { startPassthroughListener } from "../../src/passthrough/listener.ts";
import { HealthMonitor } from "../../src/pool/health.ts";
import { UpstreamClient } from "../../src/proxy/upstream/client.ts";
import { healthProbes } from "../../src/server/health-probes.ts";
import { buildRuntime } from "../../src/server/runtime.ts";
import { config, memoryLogger } from "../support/tether.ts";
import { rawClient, rawServer, readHexFixture } from "./support.ts";

const RESUME = readHexFixture("client-openssl-tls12-resume.hex");
const backends = [rawServer((c) => c.socket.write("b1")), rawServer((c) => c.socket.write("b2"))];
afterAll(() => {
  for (const b of backends) b.stop();
});

test("a session ID that another instance learned (cluster lookup) goes to that instance's backend", async () => {
  const cfg = config({
    listeners: [{ name: "tp", protocol: "tls-passthrough", address: "127.0.0.1:0", pool: "p" }],
    pools: {
      p: {
        backends: backends.map((b, i) => ({ id: `b${i + 1}`, url: `tcp://127.0.0.1:${b.port}` })),
        persistence: [{ type: "tls-session" }],
      },
    },
  });
  const runtime = buildRuntime(cfg, undefined, [Buffer.alloc(32, 1)]);
  const current = () => runtime;
  const log = memoryLogger();
  let lookups = 0;
  const deps: ProxyDeps = {
    upstream: new UpstreamClient(),
    log,
    audit: noAudit,
    metrics: new Metrics(current),
    health: new HealthMonitor({
      pools: () => runtime.pools.values(),
      probes: healthProbes(),
      log,
      audit: noAudit,
    }),
    cluster: {
      async lookup() {
        lookups++;
        await Bun.sleep(5);
        return { backendId: "b2", expiresAtSec: Math.floor(Date.now() / 1000) + 60 };
      },
    },
  };
  const l = cfg.listeners[0];
  if (!l) throw new Error("no listener");
  const handle = startPassthroughListener(l, current, deps);
  try {
    for (let i = 0; i < 8; i++) {
      const c = await rawClient(handle.server.port ?? 0, RESUME);
      await c.waitFor(2);
      expect(c.text()).toBe("b2");
      c.socket.end();
    }
    // Asked once; the answer is kept in the local table for the next connections.
    expect(lookups).toBe(1);
  } finally {
    handle.server.stop(true);
  }
});
