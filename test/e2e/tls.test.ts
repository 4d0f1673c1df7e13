/**
 * TLS termination, checked with real openssl and curl clients.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { backend, type TestBackend } from "../support/backends.ts";
import { makeCert, run } from "../support/certs.ts";
import { REPO, tempDir } from "../support/files.ts";
import { ENGINES, engineLabel, onEngine, type Running, startInProcess } from "../support/tether.ts";

const sClient = (port: number, ...args: string[]) =>
  run(["openssl", "s_client", "-connect", `127.0.0.1:${port}`, "-brief", ...args], "Q\n");

for (const engine of ENGINES)
  describe(`https listener${engineLabel(engine)}`, () => {
    let app: TestBackend;
    let proxy: Running;
    let dir: string;

    beforeAll(async () => {
      dir = tempDir();
      const other = await makeCert(dir, "other.test");
      app = backend("app", (req) => new Response(`proto=${req.headers.get("x-forwarded-proto")}`));
      // tether's front end takes one certificate (Bun.listen has no SNI list): no SNI case there.
      const sni = engine === "bun" ? [{ cert: other.cert, key: other.key, serverName: "other.test" }] : [];
      proxy = startInProcess(
        onEngine(
          {
            listeners: [
              {
                name: "websecure",
                protocol: "https",
                address: "127.0.0.1:0",
                pool: "app",
                hsts: { maxAgeMs: 86_400_000, includeSubDomains: true },
                tls: {
                  certificates: [
                    { cert: join(REPO, "certs/dev.pem"), key: join(REPO, "certs/dev-key.pem") },
                    ...sni,
                  ],
                },
              },
              {
                name: "web",
                protocol: "http",
                address: "127.0.0.1:0",
                pool: "app",
                redirectToHttps: { port: 8443 },
              },
            ],
            pools: { app: { backends: [{ id: "a", url: app.url }] } },
          },
          engine,
        ),
      );
    });
    afterAll(async () => {
      await proxy.stop();
      app.stop();
    });

    test("curl over https gets the backend's answer, with HSTS", async () => {
      const r = await run(["curl", "-sk", "-i", `https://127.0.0.1:${proxy.port("websecure")}/`]);
      expect(r.out).toContain("proto=https");
      expect(r.out.toLowerCase()).toContain("strict-transport-security: max-age=86400; includesubdomains");
    });

    test("TLS 1.1 is refused with a protocol-version alert", async () => {
      const r = await sClient(proxy.port("websecure"), "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0");
      expect(r.code).not.toBe(0);
      expect(r.out.toLowerCase()).toMatch(/protocol version|unsupported protocol|no protocols available/);
    });

    test("TLS 1.0 is refused", async () => {
      const r = await sClient(proxy.port("websecure"), "-tls1", "-cipher", "DEFAULT@SECLEVEL=0");
      expect(r.code).not.toBe(0);
    });

    test("TLS 1.2 with an AEAD suite and TLS 1.3 are accepted", async () => {
      const a = await sClient(proxy.port("websecure"), "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256");
      expect(a.out).toContain("Protocol version: TLSv1.2");
      const b = await sClient(proxy.port("websecure"), "-tls1_3");
      expect(b.out).toContain("Protocol version: TLSv1.3");
    });

    for (const suite of [
      "ECDHE-ECDSA-AES128-SHA",
      "ECDHE-ECDSA-AES256-SHA384",
      "AES128-SHA",
      "AES128-GCM-SHA256",
    ]) {
      test(`TLS 1.2 suite ${suite} (CBC, SHA-1 or static RSA) is not offered`, async () => {
        const r = await sClient(proxy.port("websecure"), "-tls1_2", "-cipher", `${suite}@SECLEVEL=0`);
        expect(r.code).not.toBe(0);
        expect(r.out).not.toContain("Protocol version: TLSv1.2");
      });
    }

    if (engine === "bun")
      test("SNI picks the matching certificate; others get the default", async () => {
        const other = await run([
          "sh",
          "-c",
          `openssl s_client -connect 127.0.0.1:${proxy.port("websecure")} -servername other.test </dev/null 2>/dev/null | openssl x509 -noout -subject`,
        ]);
        expect(other.out).toContain("CN = other.test");
        const dflt = await run([
          "sh",
          "-c",
          `openssl s_client -connect 127.0.0.1:${proxy.port("websecure")} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -subject`,
        ]);
        expect(dflt.out).toContain("NOT FOR PRODUCTION");
      });

    test("an http listener with redirectToHttps answers 308 to the https URL", async () => {
      const res = await fetch(`http://127.0.0.1:${proxy.port("web")}/cart?x=1`, {
        redirect: "manual",
        headers: { host: "shop.example" },
      });
      expect(res.status).toBe(308);
      expect(res.headers.get("location")).toBe("https://shop.example:8443/cart?x=1");
    });
  });

describe("https backends", () => {
  test("are verified against the configured CA, and refused when verification fails", async () => {
    const dir = tempDir();
    const { cert, key } = await makeCert(dir, "localhost");
    const secure = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      tls: { cert: Bun.file(cert), key: Bun.file(key) },
      fetch: () => new Response("secure backend"),
    });
    const url = `https://127.0.0.1:${secure.port}`;
    const listeners = [{ name: "web", protocol: "http" as const, address: "127.0.0.1:0", pool: "app" }];
    const verified = startInProcess({
      listeners,
      pools: {
        app: { retries: 0, backends: [{ id: "s", url, tls: { ca: cert, serverName: "localhost" } }] },
      },
    });
    const unverified = startInProcess({
      listeners,
      pools: { app: { retries: 0, backends: [{ id: "s", url }] } },
    });
    try {
      expect(await (await fetch(`${verified.url()}/`)).text()).toBe("secure backend");
      expect((await fetch(`${unverified.url()}/`)).status).toBe(502);
    } finally {
      await verified.stop();
      await unverified.stop();
      secure.stop(true);
    }
  });
});
