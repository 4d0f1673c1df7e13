/**
 * The request path's own failures and facts: a defect in tether is a 500 that
 * is never retried and never held against a backend; a session cookie is
 * Secure whenever the client reached tether over TLS, directly or through a
 * trusted terminator.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { ConfigInput } from "../../src/config/schema.ts";
import { UpstreamClient } from "../../src/proxy/upstream/client.ts";
import type { UpstreamTarget } from "../../src/proxy/upstream/types.ts";
import { backend, type TestBackend } from "../support/backends.ts";
import {
  ENGINES,
  type Engine,
  engineLabel,
  onEngine,
  type Running,
  startInProcess,
} from "../support/tether.ts";

const KEY = Buffer.alloc(32, 3).toString("base64");
let cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

function start(engine: Engine, backends: TestBackend[], pool: Record<string, unknown> = {}): Running {
  const t = startInProcess(
    onEngine(
      {
        listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
        pools: {
          app: {
            backends: backends.map((b, i) => ({ id: `b${i + 1}`, url: b.url })),
            persistence: [{ type: "cookie", mode: "insert", name: "T" }],
            ...pool,
          },
        },
        trustedProxies: ["127.0.0.1/32"],
        secrets: { cookieKeys: [KEY] },
      } as ConfigInput,
      engine,
    ),
  );
  cleanup.push(() => t.stop());
  for (const b of backends) cleanup.push(() => b.stop());
  return t;
}

for (const engine of ENGINES)
  describe(`a defect in tether while forwarding${engineLabel(engine)}`, () => {
    test("is a 500 with a short body, logged once with its stack, never retried and never counted against the backend", async () => {
      const b1 = backend("b1");
      const b2 = backend("b2");
      const t = start(engine, [b1, b2], { maxFails: 1, retries: 2 });
      // Warm up: learn which backend a session lands on, so the fault can be aimed at it.
      const first = await fetch(t.url());
      const cookie = (first.headers.get("set-cookie") ?? "").split(";")[0] as string;
      const owner = await first.text();
      const ownerPort = Number(new URL((owner === "b1" ? b1 : b2).url).port);
      const hitsBefore = b1.hits + b2.hits;

      // A programming error inside the upstream call, for requests to the session's backend only.
      const original = UpstreamClient.prototype.send;
      UpstreamClient.prototype.send = function (this: UpstreamClient, target: UpstreamTarget, ...rest) {
        if (target.port === ownerPort) throw new TypeError("a defect");
        return original.call(this, target, ...rest);
      } as typeof original;
      cleanup.push(() => {
        UpstreamClient.prototype.send = original;
      });
      const res = await fetch(t.url(), { headers: { cookie } });
      UpstreamClient.prototype.send = original;

      expect(res.status).toBe(500);
      expect(await res.text()).toBe("Internal proxy error.\n");
      // Not retried on the other backend.
      expect(b1.hits + b2.hits).toBe(hitsBefore);
      const errors = t.log.lines.filter((l) => l.level === "error");
      expect(errors.length).toBe(1);
      expect(String(errors[0]?.error)).toContain("TypeError: a defect");
      expect(String(errors[0]?.error)).toContain("request-path.test.ts");
      // The backend is not marked down (maxFails 1 would have done it) and keeps its session.
      expect(t.log.lines.some((l) => l.msg === "backend down")).toBe(false);
      const after = await fetch(t.url(), { headers: { cookie } });
      expect(after.status).toBe(200);
      expect(await after.text()).toBe(owner);
    });
  });

for (const engine of ENGINES)
  describe(`the session cookie's Secure attribute${engineLabel(engine)}`, () => {
    test("is set behind a trusted TLS terminator that sends X-Forwarded-Proto: https, and only then", async () => {
      const t = start(engine, [backend("b1")]);
      const viaTerminator = await fetch(t.url(), { headers: { "x-forwarded-proto": "https" } });
      expect(viaTerminator.headers.get("set-cookie")).toContain("; Secure");
      const plain = await fetch(t.url());
      expect(plain.headers.get("set-cookie")).not.toContain("Secure");
      const saysHttp = await fetch(t.url(), { headers: { "x-forwarded-proto": "http" } });
      expect(saysHttp.headers.get("set-cookie")).not.toContain("Secure");
    });

    test("is not set when an untrusted client claims https", async () => {
      const b = backend("b1");
      const t = startInProcess(
        onEngine(
          {
            listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
            pools: {
              app: {
                backends: [{ id: "b1", url: b.url }],
                persistence: [{ type: "cookie", mode: "insert", name: "T" }],
              },
            },
            secrets: { cookieKeys: [KEY] },
          } as ConfigInput,
          engine,
        ),
      );
      cleanup.push(
        () => t.stop(),
        () => b.stop(),
      );
      const res = await fetch(t.url(), { headers: { "x-forwarded-proto": "https" } });
      expect(res.headers.get("set-cookie")).not.toContain("Secure");
    });
  });
