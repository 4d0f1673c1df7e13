import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { configJsonSchema } from "../../src/config/json-schema.ts";
import { ConfigError, formatPath, loadConfigFile, resolveConfig } from "../../src/config/load.ts";
import { REPO, tempDir, writeConfig } from "../support/files.ts";

const base = () => ({
  listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:8080", pool: "app" }],
  pools: {
    app: {
      backends: [
        { id: "a", url: "http://127.0.0.1:9001" },
        { id: "b", url: "http://127.0.0.1:9002" },
        { id: "c", url: "http://127.0.0.1:9003" },
      ],
    },
  },
});

function problemsOf(raw: unknown, env: Record<string, string> = {}): string[] {
  try {
    resolveConfig(raw, { baseDir: REPO, env });
  } catch (e) {
    if (e instanceof ConfigError) return e.problems.map((p) => `${p.path}: ${p.message}`);
    throw e;
  }
  return [];
}

describe("config validation", () => {
  test("a minimal config is valid and gets documented defaults", () => {
    const cfg = resolveConfig(base(), { baseDir: REPO, env: {} });
    const pool = cfg.pools.app;
    expect(pool?.retries).toBe(2);
    expect(pool?.connectTimeoutMs).toBe(5000);
    expect(pool?.backends[0]?.weight).toBe(1);
    expect(pool?.backends[0]?.state).toBe("ready");
    expect(cfg.listeners[0]?.maxBodyBytes).toBe(1024 ** 3);
    expect(cfg.maxHeaderBytes).toBe(16384);
    expect(cfg.listeners[0]?.port).toBe(8080);
    expect(cfg.listeners[0]?.protocols).toEqual(["http/1.1"]);
  });

  test("h2, h3 and altSvcPort on an https listener, h2c on an http one, are valid", () => {
    const raw: any = base();
    raw.listeners[0].protocols = ["http/1.1", "h2c"];
    raw.listeners.push({
      name: "secure",
      protocol: "https",
      address: "127.0.0.1:8443",
      pool: "app",
      tls: { certificates: [{ cert: "certs/dev.pem", key: "certs/dev-key.pem" }] },
      protocols: ["http/1.1", "h2", "h3"],
      altSvcPort: 443,
    });
    expect(problemsOf(raw)).toEqual([]);
  });

  test("tether's own front end on an http and an https listener with one certificate is valid", () => {
    const raw: any = base();
    raw.listeners[0].engine = "tether";
    raw.listeners.push({
      name: "secure",
      protocol: "https",
      address: "127.0.0.1:8443",
      pool: "app",
      engine: "tether",
      tls: { certificates: [{ cert: "certs/dev.pem", key: "certs/dev-key.pem" }] },
    });
    expect(problemsOf(raw)).toEqual([]);
  });

  const cases: { why: string; edit: (c: any) => void; expected: string }[] = [
    {
      why: "a backend URL that is not http(s) names the exact field",
      edit: (c) => (c.pools.app.backends[2].url = "ftp://x"),
      expected: "pools.app.backends[2].url: must be an http or https URL",
    },
    {
      why: "an unknown key is an error, so typos never pass",
      edit: (c) => (c.pools.app.retires = 3),
      expected: 'pools.app: unknown key "retires"',
    },
    {
      why: "a listener must name an existing pool",
      edit: (c) => (c.listeners[0].pool = "nope"),
      expected: 'listeners[0].pool: no pool named "nope"',
    },
    {
      why: "a route must name an existing pool",
      edit: (c) => (c.listeners[0].routes = [{ pathPrefix: "/api/", pool: "api" }]),
      expected: 'listeners[0].routes[0].pool: no pool named "api"',
    },
    {
      why: "a header rule's mode is hash, learn or prefix",
      edit: (c) => (c.pools.app.persistence = [{ type: "header", name: "Mcp-Session-Id", mode: "sticky" }]),
      expected: "pools.app.persistence[0]",
    },
    {
      why: "a header rule names a field, not a phrase",
      edit: (c) => (c.pools.app.persistence = [{ type: "header", name: "Mcp Session", mode: "learn" }]),
      expected: "pools.app.persistence[0].name: must be a header field name",
    },
    {
      why: "table options belong to a learning header rule only",
      edit: (c) =>
        (c.pools.app.persistence = [{ type: "header", name: "X-Id", mode: "prefix", maxEntries: 9 }]),
      expected: "pools.app.persistence[0]",
    },
    {
      why: "a Partitioned (CHIPS) cookie needs SameSite=None, named at the rule's path",
      edit: (c) => (c.pools.app.persistence = [{ type: "cookie", mode: "insert", partitioned: true }]),
      expected:
        'pools.app.persistence[0].partitioned: a Partitioned cookie is sent only in third-party contexts: it needs "sameSite": "None"',
    },
    {
      why: "a cookie Path starts with '/'",
      edit: (c) => (c.pools.app.persistence = [{ type: "cookie", mode: "insert", path: "app; Secure" }]),
      expected: "pools.app.persistence[0].path: must start with '/'",
    },
    {
      why: "backend ids are unique within a pool",
      edit: (c) => (c.pools.app.backends[1].id = "a"),
      expected: 'pools.app.backends[1].id: duplicate backend id "a"',
    },
    {
      why: "durations are whole milliseconds",
      edit: (c) => (c.pools.app.connectTimeoutMs = 1.5),
      expected: "pools.app.connectTimeoutMs: must be a whole number of milliseconds",
    },
    {
      why: "an https listener needs certificates",
      edit: (c) => (c.listeners[0].protocol = "https"),
      expected: "listeners[0].tls: an https listener needs tls.certificates",
    },
    {
      why: "an address needs a port",
      edit: (c) => (c.listeners[0].address = "127.0.0.1"),
      expected: "listeners[0].address: must be host:port, for example 127.0.0.1:8080 or [::1]:8080",
    },
    {
      why: "a backend state is one of ready, drain, maint",
      edit: (c) => (c.pools.app.backends[0].state = "down"),
      expected: "pools.app.backends[0].state",
    },
    {
      why: "a missing required field says so",
      edit: (c) => delete c.pools.app.backends[0].url,
      expected: "pools.app.backends[0].url",
    },
    {
      why: "an unset env: secret names the variable",
      edit: (c) => (c.admin = { token: "env:TETHER_TEST_UNSET_VAR" }),
      expected: "admin.token: environment variable TETHER_TEST_UNSET_VAR is not set",
    },
    {
      why: "a certificate file that does not exist names the field and the file",
      edit: (c) => {
        c.listeners[0].protocol = "https";
        c.listeners[0].tls = { certificates: [{ cert: "no/such.pem", key: "certs/dev-key.pem" }] };
      },
      expected: "listeners[0].tls.certificates[0].cert: cannot read",
    },
    {
      why: "a listener serving no protocol at all is an error",
      edit: (c) => (c.listeners[0].protocols = []),
      expected: "listeners[0].protocols: needs at least one protocol",
    },
    {
      why: "h3 without TLS names the list entry",
      edit: (c) => (c.listeners[0].protocols = ["http/1.1", "h3"]),
      expected: 'listeners[0].protocols[1]: h3 needs TLS: use it on a "protocol": "https" listener',
    },
    {
      why: "h2 on an http listener points to h2c",
      edit: (c) => (c.listeners[0].protocols = ["h2"]),
      expected: 'listeners[0].protocols[0]: h2 needs TLS: use "h2c"',
    },
    {
      why: "h2c is only for cleartext listeners",
      edit: (c) => {
        c.listeners[0].protocol = "https";
        c.listeners[0].tls = { certificates: [{ cert: "certs/dev.pem", key: "certs/dev-key.pem" }] };
        c.listeners[0].protocols = ["http/1.1", "h2c"];
      },
      expected: 'listeners[0].protocols[1]: h2c is cleartext HTTP/2: use "h2" on an https listener',
    },
    {
      why: "an unknown protocol is refused",
      edit: (c) => (c.listeners[0].protocols = ["http/2"]),
      expected: "listeners[0].protocols[0]",
    },
    {
      why: "a protocol listed twice is an error",
      edit: (c) => (c.listeners[0].protocols = ["http/1.1", "http/1.1"]),
      expected: 'listeners[0].protocols[1]: "http/1.1" is listed twice',
    },
    {
      why: "a tls-passthrough listener takes no HTTP version",
      edit: (c) => {
        c.listeners[0].protocol = "tls-passthrough";
        c.listeners[0].protocols = ["h2"];
      },
      expected: "listeners[0].protocols[0]: a tls-passthrough listener relays bytes",
    },
    {
      why: "tether's own front end speaks HTTP/1.1 alone",
      edit: (c) => {
        c.listeners[0].engine = "tether";
        c.listeners[0].protocols = ["http/1.1", "h2c"];
      },
      expected: 'listeners[0].engine: tether\'s front end speaks HTTP/1.1 only: use "bun" for h2, h2c or h3',
    },
    {
      why: "tether's own front end takes one certificate (no SNI list)",
      edit: (c) => {
        c.listeners[0].engine = "tether";
        c.listeners[0].protocol = "https";
        c.listeners[0].tls = {
          certificates: [
            { cert: "certs/dev.pem", key: "certs/dev-key.pem" },
            { cert: "certs/dev.pem", key: "certs/dev-key.pem", serverName: "other.test" },
          ],
        };
      },
      expected: "listeners[0].engine: tether's front end takes one certificate",
    },
    {
      why: "a tls-passthrough listener reads no HTTP, so has no engine",
      edit: (c) => {
        c.listeners[0].protocol = "tls-passthrough";
        c.listeners[0].engine = "tether";
      },
      expected: "listeners[0].engine: a tls-passthrough listener relays bytes",
    },
    {
      why: "an unknown engine is refused",
      edit: (c) => (c.listeners[0].engine = "uws"),
      expected: "listeners[0].engine",
    },
    {
      why: "altSvcPort without h3 is an error",
      edit: (c) => (c.listeners[0].altSvcPort = 443),
      expected: 'listeners[0].altSvcPort: names the HTTP/3 port: only with "h3" in protocols',
    },
    {
      why: "trusted proxies must be addresses or CIDR ranges",
      edit: (c) => (c.trustedProxies = ["localhost"]),
      expected: "trustedProxies[0]",
    },
  ];
  for (const c of cases) {
    test(c.why, () => {
      const raw = base();
      c.edit(raw);
      const problems = problemsOf(raw);
      expect(problems.some((p) => p.startsWith(c.expected))).toBe(true);
    });
  }

  test("every problem is reported at once, not only the first", () => {
    const raw: any = base();
    raw.pools.app.backends[0].url = "nope";
    raw.listeners[0].pool = "missing";
    raw.bogus = 1;
    expect(problemsOf(raw).length).toBeGreaterThanOrEqual(2);
  });

  test("env: secrets are read from the environment", () => {
    const raw: any = { ...base(), admin: { token: "env:TOKEN_FOR_TEST" } };
    const cfg = resolveConfig(raw, { baseDir: REPO, env: { TOKEN_FOR_TEST: "s3cret" } });
    expect(cfg.admin?.token).toBe("s3cret");
  });

  test("relative certificate paths resolve against the config file's folder", () => {
    const dir = tempDir();
    const raw: any = base();
    raw.listeners[0].protocol = "https";
    raw.listeners[0].tls = { certificates: [{ cert: "dev.pem", key: "dev-key.pem" }] };
    writeConfig(dir, raw);
    for (const f of ["dev.pem", "dev-key.pem"]) {
      Bun.write(join(dir, f), readFileSync(join(REPO, "certs", f)));
    }
    Bun.sleepSync(50);
    const cfg = loadConfigFile(join(dir, "config.json"));
    expect(cfg.listeners[0]?.certificates[0]?.certFile).toBe(join(dir, "dev.pem"));
    expect(cfg.listeners[0]?.certificates[0]?.cert).toContain("BEGIN CERTIFICATE");
  });

  test("invalid JSON reports its line and column", () => {
    const dir = tempDir();
    const file = join(dir, "bad.json");
    require("node:fs").writeFileSync(file, '{\n  "listeners": [\n    oops\n  ]\n}\n');
    try {
      loadConfigFile(file);
      throw new Error("expected a ConfigError");
    } catch (e) {
      expect(e).toBeInstanceOf(ConfigError);
      expect((e as ConfigError).problems[0]?.message).toMatch(/line 3/);
    }
  });

  test("formatPath writes JSON paths the way users read them", () => {
    expect(formatPath(["pools", "app", "backends", 2, "url"])).toBe("pools.app.backends[2].url");
    expect(formatPath(["pools", "my pool"])).toBe('pools["my pool"]');
  });

  test("the shipped config.json is valid", () => {
    expect(() => loadConfigFile(join(REPO, "config.json"), {})).not.toThrow();
  });

  test("config.schema.json is generated from the schema and up to date", () => {
    const committed = JSON.parse(readFileSync(join(REPO, "config.schema.json"), "utf8"));
    expect(committed).toEqual(JSON.parse(JSON.stringify(configJsonSchema())));
    const shipped = JSON.parse(readFileSync(join(REPO, "config.json"), "utf8"));
    expect(shipped.$schema).toBe("./config.schema.json");
  });
});
