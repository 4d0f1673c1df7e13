/**
 * The hostile-input properties, shared by test/fuzz/*.test.ts (a few
 * thousand cases) and scripts/fuzz-long.ts (100k+ each). Each one sends
 * generated input through the real code (a running tether, or the config
 * loader) and states what must hold for every input:
 *
 * - cookie tokens: random and mutated TETHER cookies → never 5xx; a token
 *   that is not byte-for-byte a valid one gets 200 and a fresh cookie; one
 *   that is (including a non-canonical base64url spelling of it) keeps its
 *   backend.
 * - URL session IDs (?sid=, ;jsessionid=): random, unicode, percent-encoded,
 *   huge → 200 or a 4xx for a malformed request, never 5xx; a request the
 *   url rule placed goes to the same backend again.
 * - header values: X-Forwarded-For / Forwarded garbage from a trusted peer
 *   (client-ip rule) and X-Session-Id values (header rule) → the same.
 * - config files: random mutations of a valid config (as an object, and as
 *   JSON text on disk) → a Config, or a ConfigError whose problems each name
 *   a well-formed JSON path and say something; never any other exception.
 * - admin API bodies and paths for PUT /api/backends/{pool}/{id} → 200 only
 *   for exactly {"state": "ready"|"drain"|"maint"} on an existing backend,
 *   else 400 (or 404/413), never 5xx.
 *
 * PROXY protocol headers and ClientHellos are fuzzed in
 * test/passthrough/proxy-protocol.test.ts and client-hello.test.ts (and
 * ServerHellos in server-hello.test.ts); they are not repeated here.
 */
import { unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { type Config, ConfigError, loadConfigFile, resolveConfig } from "../../src/config/load.ts";
import {
  ADMIN_TOKEN,
  type FuzzEnv,
  getRequest,
  hasCtl,
  header,
  type RawResponse,
  rawHttp,
} from "./support.ts";

/** A property, how many cases npm test runs of it, and how to run it for any number of cases. */
export interface FuzzProperty {
  name: string;
  runs: number;
  run(numRuns: number, seed?: number): Promise<void>;
}

function named<Ts extends [unknown, ...unknown[]]>(
  name: string,
  runs: number,
  property: fc.IAsyncProperty<Ts> | fc.IProperty<Ts>,
): FuzzProperty {
  return {
    name,
    runs,
    run: async (numRuns, seed) => {
      await fc.assert(property, { numRuns, ...(seed === undefined ? {} : { seed }) });
    },
  };
}

/** Strings that have broken parsers before: prototype names, env refs, edge numbers as text. */
export const DICTIONARY = [
  "constructor",
  "__proto__",
  "prototype",
  "toString",
  "valueOf",
  "hasOwnProperty",
  "env:",
  "env:FUZZ_UNSET_VARIABLE",
  "",
  " ",
  "0",
  "-1",
  "NaN",
  "127.0.0.1:0",
  "[::1]:0",
  "http://127.0.0.1:1",
  "https://127.0.0.1:1",
  "tcp://127.0.0.1:1",
  "http://[::1]:1",
  "http://user:pw@127.0.0.1:1/path?q#f",
  "/",
  "%",
  "%00",
  "\u0000",
  "💥",
  "a".repeat(300),
];

const B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const charFrom = (chars: string) => fc.constantFrom(...chars.split(""));
/** A string over exactly these characters. */
const stringOf = (chars: string, minLength: number, maxLength: number) =>
  fc.string({ unit: charFrom(chars), minLength, maxLength });
/** Latin-1 text without CR/LF (which would end the header line of our own request). */
const latin1 = (maxLength: number) =>
  fc.string({
    unit: fc
      .integer({ min: 0, max: 0xff })
      .filter((c) => c !== 10 && c !== 13)
      .map((c) => String.fromCharCode(c)),
    maxLength,
  });
const noCrLf = (s: string) => !/[\r\n]/.test(s);

function failIf(cond: boolean, what: string, r?: RawResponse): void {
  if (cond) throw new Error(`${what}${r ? `\n--- response:\n${r.text.slice(0, 600)}` : ""}`);
}

/** The common floor for every request: an answer, never a 5xx, never a hang. */
function answered(r: RawResponse, what: string): void {
  failIf(r.timedOut, `${what}: no answer within the time limit`, r);
  failIf(r.status === 0, `${what}: connection closed without a response`, r);
  failIf(r.status >= 500, `${what}: got ${r.status}`, r);
}

const backendOf = (r: RawResponse) => header(r, "x-backend")[0] ?? null;
const tetherCookies = (r: RawResponse) =>
  header(r, "set-cookie")
    .filter((c) => c.startsWith("TETHER="))
    .map((c) => c.slice("TETHER=".length, c.indexOf(";") === -1 ? undefined : c.indexOf(";")));

// --- cookie tokens -------------------------------------------------------------------------

interface Issued {
  token: string;
  backend: string;
}

/** Valid tokens, one request each. */
export async function issueTokens(env: FuzzEnv, count = 16): Promise<Issued[]> {
  const out: Issued[] = [];
  for (let i = 0; i < count; i++) {
    const r = await rawHttp(env.port, getRequest(`/issue/${i}`));
    const token = tetherCookies(r)[0];
    const backend = backendOf(r);
    if (!token || !backend) throw new Error(`no token issued:\n${r.text}`);
    out.push({ token, backend });
  }
  return out;
}

type Mutation =
  | { op: "set"; at: number; c: string }
  | { op: "delete"; at: number }
  | { op: "insert"; at: number; c: string }
  | { op: "truncate"; at: number }
  | { op: "double" }
  | { op: "swapcase"; at: number };

const MUTATION_CHARS = `${B64URL}=+/.%~!*'()é\u00ff`;
const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant("set" as const), at: fc.nat(120), c: charFrom(MUTATION_CHARS) }),
  fc.record({ op: fc.constant("delete" as const), at: fc.nat(120) }),
  fc.record({ op: fc.constant("insert" as const), at: fc.nat(120), c: charFrom(MUTATION_CHARS) }),
  fc.record({ op: fc.constant("truncate" as const), at: fc.nat(120) }),
  fc.constant({ op: "double" as const }),
  fc.record({ op: fc.constant("swapcase" as const), at: fc.nat(120) }),
);

function mutate(token: string, ms: Mutation[]): string {
  let t = token;
  for (const m of ms) {
    const at = "at" in m ? m.at % (t.length + 1) : 0;
    if (m.op === "set") t = t.slice(0, at) + m.c + t.slice(at + 1);
    else if (m.op === "delete") t = t.slice(0, at) + t.slice(at + 1);
    else if (m.op === "insert") t = t.slice(0, at) + m.c + t.slice(at);
    else if (m.op === "truncate") t = t.slice(0, at);
    else if (m.op === "double") t = t + t;
    else {
      const ch = t.charAt(at);
      const sw = ch === ch.toUpperCase() ? ch.toLowerCase() : ch.toUpperCase();
      t = t.slice(0, at) + sw + t.slice(at + 1);
    }
  }
  return t;
}

/** Byte-for-byte the same token: tether must accept it (AES-GCM makes every other value fail). */
function sameToken(candidate: string, original: string): boolean {
  return (
    candidate.length === original.length &&
    /^[A-Za-z0-9_-]+$/.test(candidate) &&
    Buffer.from(candidate, "base64url").equals(Buffer.from(original, "base64url"))
  );
}

type CookieCase = {
  /** The Cookie header value. */
  cookie: string;
  encoding: "latin1" | "utf8";
  /** The token tether must accept (first TETHER cookie is a valid token), or null. */
  valid: number | null;
};

export function cookieProperty(env: FuzzEnv, tokens: Issued[]): FuzzProperty {
  const n = tokens.length;
  const tokenOf = (i: number) => (tokens[i % n] as Issued).token;
  const garbage = fc.oneof(
    fc.string({ unit: "grapheme-ascii", maxLength: 120 }),
    fc.string({ unit: "binary-ascii", maxLength: 120 }).filter(noCrLf),
    stringOf(B64URL, 80, 95),
    latin1(120),
    fc.constantFrom(...DICTIONARY.filter(noCrLf)),
  );
  const cases: fc.Arbitrary<CookieCase> = fc.oneof(
    garbage.map((g) => ({ cookie: `TETHER=${g}`, encoding: "latin1" as const, valid: null })),
    fc
      .string({ unit: "grapheme", maxLength: 60 })
      .filter(noCrLf)
      .map((g) => ({
        cookie: `TETHER=${g}`,
        encoding: "utf8" as const,
        valid: null,
      })),
    fc.record({ i: fc.nat(), ms: fc.array(mutationArb, { minLength: 1, maxLength: 4 }) }).map(({ i, ms }) => {
      const t = mutate(tokenOf(i), ms);
      return {
        cookie: `TETHER=${t}`,
        encoding: "latin1" as const,
        valid: sameToken(t, tokenOf(i)) ? i : null,
      };
    }),
    // Several cookies: only the first TETHER counts.
    fc
      .record({ i: fc.nat(), g: garbage, validFirst: fc.boolean(), other: fc.boolean() })
      .map(({ i, g, validFirst, other }) => {
        const pair = validFirst ? [tokenOf(i), g] : [g.replace(/;/g, ""), tokenOf(i)];
        const firstIsToken = validFirst || sameToken(pair[0] as string, tokenOf(i));
        return {
          cookie: `${other ? "app=1; " : ""}TETHER=${pair[0]}; TETHER=${pair[1]}`,
          encoding: "latin1" as const,
          valid: firstIsToken ? i : null,
        };
      }),
    // Huge values: past maxHeaderBytes the request itself is refused (431).
    fc.integer({ min: 2_000, max: 40_000 }).map((len) => ({
      cookie: `TETHER=${"A".repeat(len)}`,
      encoding: "latin1" as const,
      valid: null,
    })),
  );
  return named(
    "cookie tokens",
    1500,
    fc.asyncProperty(cases, async (c) => {
      const r = await rawHttp(env.port, getRequest("/", [["Cookie", c.cookie]], c.encoding));
      answered(r, "cookie");
      if (r.status === 400 && hasCtl(c.cookie)) return; // Bun refuses the header itself
      if (r.status === 431 && c.cookie.length > 8_000) return; // request head too large
      failIf(r.status !== 200, `status ${r.status} for a cookie`, r);
      const issued = tetherCookies(r);
      if (c.valid !== null) {
        const expected = (tokens[c.valid % n] as Issued).backend;
        failIf(backendOf(r) !== expected, `valid token moved from ${expected} to ${backendOf(r)}`, r);
      } else {
        failIf(issued.length !== 1, "an invalid token got no fresh cookie", r);
        const fresh = issued[0] as string;
        failIf(fresh.length !== 87 || c.cookie.includes(fresh), "the fresh cookie is not a new token", r);
      }
    }),
  );
}

// --- URL session IDs and header values: placed by the rule → placed the same way again -------

/**
 * Sends the request twice. Both answers must be 200 (or a 4xx when the
 * request itself is malformed); when the first was placed by the pool's rule
 * (no session.created in the audit), the second goes to the same backend.
 */
async function sticksOrRefused(
  env: FuzzEnv,
  bytes: Uint8Array,
  what: string,
  mayRefuse: boolean,
  badRequestLine = false,
) {
  const created = env.counts["session.created"] ?? 0;
  const first = await rawHttp(env.port, bytes);
  // Whitespace in the target breaks the request line; Bun answers that with 505 (it reads a bad version).
  if (first.status === 505 && badRequestLine) return;
  answered(first, what);
  if (first.status !== 200) {
    failIf(!mayRefuse || ![400, 414, 431].includes(first.status), `${what}: status ${first.status}`, first);
    return;
  }
  const placedByRule = (env.counts["session.created"] ?? 0) === created;
  const second = await rawHttp(env.port, bytes);
  answered(second, what);
  failIf(second.status !== 200, `${what}: second answer ${second.status}`, second);
  if (placedByRule)
    failIf(
      backendOf(first) !== backendOf(second),
      `${what}: placed on ${backendOf(first)}, then ${backendOf(second)}`,
      second,
    );
}

const SEPARATORS = " ?&;=#/%+";
const idArb = fc.oneof(
  fc.string({ unit: "grapheme-ascii", minLength: 1, maxLength: 60 }),
  fc.string({ unit: "grapheme", maxLength: 30 }).map((s) => ({ raw: s })),
  fc.string({ unit: "grapheme", maxLength: 30 }).map(encodeURIComponent),
  stringOf(`%0123456789abcdefABCDEFxz${SEPARATORS}`, 1, 40),
  fc.integer({ min: 200, max: 20_000 }).map((len) => "s".repeat(len)),
  fc.constantFrom(...DICTIONARY.filter(noCrLf)),
);

export function urlProperty(env: FuzzEnv): FuzzProperty {
  const cases = fc.record({
    id: idArb,
    where: fc.constantFrom("query", "path", "both", "second-param"),
  });
  return named(
    "URL session IDs",
    800,
    fc.asyncProperty(cases, async ({ id, where }) => {
      const text = typeof id === "string" ? id : id.raw;
      if (!noCrLf(text)) return;
      const target =
        where === "query"
          ? `/url/p?sid=${text}`
          : where === "path"
            ? `/url/p;jsessionid=${text}`
            : where === "both"
              ? `/url/p;jsessionid=${text}?sid=${text}`
              : `/url/p?a=1&sid=${text}&b=2`;
      // Raw unicode goes out as UTF-8 bytes; anything odd in a request line may be refused (4xx).
      const bytes = getRequest(target, [], typeof id === "string" ? "latin1" : "utf8");
      await sticksOrRefused(env, bytes, `url ${where}`, true, /\s/.test(text) || hasCtl(text));
    }),
  );
}

const xffArb = fc.oneof(
  fc.string({ unit: "grapheme-ascii", maxLength: 100 }),
  fc
    .array(
      fc.oneof(
        fc.ipV4(),
        fc.ipV6(),
        fc.ipV4Extended(),
        fc.ipV6().map((ip) => `[${ip}]:443`),
        fc.ipV4().map((ip) => `${ip}:80`),
        fc.ipV4().map((ip) => `::ffff:${ip}`),
        fc.constantFrom("unknown", "", " ", "_hidden", "127.0.0.1", "::1", "1.2.3.4/24", "999.1.1.1"),
      ),
      { maxLength: 30 },
    )
    .chain((hops) => fc.constantFrom(", ", ",", " , ", ",,").map((sep) => hops.join(sep))),
  latin1(80),
  fc.integer({ min: 1_000, max: 30_000 }).map((n) => "10.0.0.1, ".repeat(Math.ceil(n / 10))),
);

export function headerProperty(env: FuzzEnv): FuzzProperty {
  const cases = fc.oneof(
    fc.record({
      kind: fc.constant("xff" as const),
      xff: xffArb,
      forwarded: fc.option(
        fc.oneof(latin1(60), fc.constantFrom('for="[::1]"', "for=_x;proto=http", "for=")),
        {
          nil: undefined,
        },
      ),
    }),
    fc.record({
      kind: fc.constant("session-id" as const),
      value: fc.oneof(
        fc.string({ unit: "grapheme-ascii", maxLength: 200 }),
        latin1(200),
        fc.integer({ min: 900, max: 20_000 }).map((n) => "v".repeat(n)),
        fc.constantFrom(...DICTIONARY.filter(noCrLf)),
      ),
    }),
    fc.record({
      kind: fc.constant("session-id-utf8" as const),
      value: fc.string({ unit: "grapheme", maxLength: 60 }).filter(noCrLf),
    }),
  );
  return named(
    "header values",
    1000,
    fc.asyncProperty(cases, async (c) => {
      if (c.kind === "xff") {
        const extra: [string, string][] = [["X-Forwarded-For", c.xff]];
        if (c.forwarded !== undefined) extra.push(["Forwarded", c.forwarded]);
        await sticksOrRefused(env, getRequest("/ip/x", extra), "x-forwarded-for", true);
      } else {
        const encoding = c.kind === "session-id-utf8" ? "utf8" : "latin1";
        await sticksOrRefused(
          env,
          getRequest("/hdr/x", [["X-Session-Id", c.value]], encoding),
          "x-session-id",
          true,
        );
      }
    }),
  );
}

// --- admin API ----------------------------------------------------------------------------

const STATES = ["ready", "drain", "maint"];

export function adminProperty(env: FuzzEnv): FuzzProperty {
  const segment = fc.oneof(
    fc.constantFrom("spare", "s1", "s2", "spar%65", "nope"),
    stringOf(`%0123456789abcdefABCDEFxz.-_~é`, 1, 20),
    fc.string({ unit: "grapheme-ascii", minLength: 1, maxLength: 20 }).map((s) => s.replace(/[/?#\\]/g, "x")),
    fc.constantFrom(...DICTIONARY.filter((d) => d !== "" && !/[/?#\\]/.test(d))),
  );
  const body = fc.oneof(
    fc.constantFrom(...STATES).map((state) => ({ text: JSON.stringify({ state }), ok: true })),
    fc.jsonValue().map((v) => ({ text: JSON.stringify({ state: v }), ok: false })),
    fc.jsonValue().map((v) => ({ text: JSON.stringify(v) ?? "", ok: false })),
    fc
      .record({ state: fc.constantFrom(...STATES), extra: fc.string({ minLength: 1, maxLength: 8 }) })
      .map(({ state, extra }) => ({ text: JSON.stringify({ state, [extra]: 1 }), ok: extra === "state" })),
    fc.string({ maxLength: 200 }).map((text) => ({ text, ok: false })),
    fc.uint8Array({ maxLength: 200 }).map((bytes) => ({ text: bytes, ok: false })),
    fc.constantFrom(...STATES).map((state) => ({ text: ` {"state" : "${state}"}\n`, ok: true })),
    fc
      .integer({ min: 60_000, max: 80_000 })
      .map((n) => ({ text: `{"state":"${"d".repeat(n)}"}`, ok: false })),
  );
  const cases = fc.record({
    pool: fc.oneof(fc.constant("spare"), segment),
    id: fc.oneof(fc.constantFrom("s1", "s2"), segment),
    body,
  });
  return named(
    "admin API bodies",
    1000,
    fc.asyncProperty(cases, async ({ pool, id, body }) => {
      const res = await fetch(`${env.adminUrl}/api/backends/${pool}/${id}`, {
        method: "PUT",
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
        body: body.text,
        signal: AbortSignal.timeout(5000),
      });
      const text = await res.text();
      const what = `PUT /api/backends/${pool}/${id} ${String(body.text).slice(0, 80)}`;
      if (res.status >= 500) throw new Error(`${what}: ${res.status} ${text}`);
      // 405: a path that normalizes to a pool's own endpoint ("./x" → /api/backends/x), which takes POST.
      if (![200, 400, 404, 405, 413].includes(res.status)) throw new Error(`${what}: ${res.status} ${text}`);
      const decoded = (x: string) => {
        try {
          return decodeURIComponent(x);
        } catch {
          return null;
        }
      };
      const [poolName, idName] = [decoded(pool), decoded(id)];
      const exists =
        poolName !== null &&
        idName !== null &&
        env.tether.runtime.pools.get(poolName)?.get(idName) !== undefined;
      if (exists && body.ok) {
        if (res.status !== 200) throw new Error(`${what}: a valid change got ${res.status} ${text}`);
        const state = (JSON.parse(String(body.text)) as { state: string }).state;
        const live = env.tether.runtime.pools.get(poolName as string)?.get(idName as string)?.state;
        if (live !== state) throw new Error(`${what}: state is ${live}`);
      } else if (res.status === 200) {
        throw new Error(`${what}: an invalid change was accepted`);
      } else if (exists && ![400, 413].includes(res.status)) {
        throw new Error(`${what}: a bad body for an existing backend got ${res.status}, not 400`);
      }
    }),
  );
}

// --- config files --------------------------------------------------------------------------

/** A valid config touching most of the schema (no file it names has to exist but the certs). */
export function baseConfig(repo: string): Record<string, unknown> {
  return {
    listeners: [
      {
        name: "web",
        protocol: "http",
        address: "127.0.0.1:0",
        pool: "app",
        routes: [{ host: "*.example.com", pathPrefix: "/api/", pool: "api" }],
        clientIdleMs: 30_000,
      },
      {
        name: "websecure",
        protocol: "https",
        address: "127.0.0.1:0",
        pool: "app",
        tls: { certificates: [{ cert: `${repo}/certs/dev.pem`, key: `${repo}/certs/dev-key.pem` }] },
        hsts: { maxAgeMs: 1000, includeSubDomains: true },
      },
      { name: "tls", protocol: "tls-passthrough", address: "127.0.0.1:0", pool: "tcp", proxyProtocol: true },
    ],
    pools: {
      app: {
        backends: [
          { id: "a1", url: "http://127.0.0.1:9001", weight: 2 },
          { id: "a2", url: "http://127.0.0.1:9002", state: "drain", maxConn: 10 },
        ],
        persistence: [
          { type: "cookie", mode: "insert", name: "TETHER", maxIdleMs: 60_000 },
          { type: "url", param: "sid", pathParam: "jsessionid" },
          { type: "client-ip", ipv4Prefix: 24 },
        ],
        healthCheck: { path: "/health", intervalMs: 1000, expectStatus: [200] },
        retries: 1,
      },
      api: {
        backends: [{ id: "api-1", url: "https://127.0.0.1:9443", tls: { verify: false, serverName: "api" } }],
        persistence: [
          { type: "header", name: "X-Session-Id" },
          { type: "cookie", mode: "learn", name: "SID" },
        ],
      },
      tcp: {
        backends: [{ id: "t1", url: "tcp://127.0.0.1:9444" }],
        persistence: [{ type: "tls-session" }, { type: "client-ip" }],
        sendProxyProtocol: "v2",
      },
    },
    trustedProxies: ["127.0.0.1/32", "10.0.0.0/8", "::1"],
    secrets: { cookieKeys: [Buffer.alloc(32, 3).toString("base64")] },
    admin: { address: "127.0.0.1:0", token: "t" },
    workers: 0,
    snapshot: false,
    accessLog: true,
  };
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** Every [parent, key] location in a JSON tree (the root has parent null). */
function locations(root: Json): [Json[] | { [k: string]: Json } | null, string | number][] {
  const out: [Json[] | { [k: string]: Json } | null, string | number][] = [[null, ""]];
  const walk = (v: Json) => {
    if (Array.isArray(v)) {
      v.forEach((x, i) => {
        out.push([v, i]);
        walk(x);
      });
    } else if (v !== null && typeof v === "object") {
      for (const k of Object.keys(v)) {
        out.push([v, k]);
        walk(v[k] as Json);
      }
    }
  };
  walk(root);
  return out;
}

type ConfigMutation =
  | { op: "replace"; at: number; value: Json }
  | { op: "delete"; at: number }
  | { op: "add"; at: number; key: string; value: Json }
  | { op: "rename"; at: number; key: string }
  | { op: "wrap"; at: number }
  | { op: "retype"; at: number };

const dictionaryValue: fc.Arbitrary<Json> = fc.oneof(
  fc.constantFrom<Json>(...DICTIONARY, 0, -1, 1e21, 0.5, 65536, 2 ** 53, true, false, null, [], {}),
  fc.jsonValue({ maxDepth: 3 }) as fc.Arbitrary<Json>,
);
const keyArb = fc.oneof(fc.constantFrom(...DICTIONARY), fc.string({ maxLength: 12 }));
const configMutation: fc.Arbitrary<ConfigMutation> = fc.oneof(
  fc.record({ op: fc.constant("replace" as const), at: fc.nat(), value: dictionaryValue }),
  fc.record({ op: fc.constant("delete" as const), at: fc.nat() }),
  fc.record({ op: fc.constant("add" as const), at: fc.nat(), key: keyArb, value: dictionaryValue }),
  fc.record({ op: fc.constant("rename" as const), at: fc.nat(), key: keyArb }),
  fc.record({ op: fc.constant("wrap" as const), at: fc.nat() }),
  fc.record({ op: fc.constant("retype" as const), at: fc.nat() }),
);

function applyMutation(root: Json, m: ConfigMutation): Json {
  const locs = locations(root);
  const [parent, key] = locs[m.at % locs.length] as [Json[] | { [k: string]: Json } | null, string | number];
  const get = (): Json => (parent === null ? root : ((parent as Record<string, Json>)[key] as Json));
  const set = (v: Json) => {
    if (parent === null) root = v;
    else (parent as Record<string, Json>)[key] = v;
  };
  switch (m.op) {
    case "replace":
      set(structuredClone(m.value));
      break;
    case "delete":
      if (parent === null) root = {};
      else if (Array.isArray(parent)) parent.splice(key as number, 1);
      else delete parent[key as string];
      break;
    case "add": {
      const target = get();
      if (Array.isArray(target)) target.push(structuredClone(m.value));
      else if (target !== null && typeof target === "object")
        Object.defineProperty(target, m.key, {
          value: structuredClone(m.value),
          enumerable: true,
          writable: true,
          configurable: true,
        });
      else set(structuredClone(m.value));
      break;
    }
    case "rename":
      if (parent !== null && !Array.isArray(parent)) {
        const v = parent[key as string] as Json;
        delete parent[key as string];
        Object.defineProperty(parent, m.key, {
          value: v,
          enumerable: true,
          writable: true,
          configurable: true,
        });
      }
      break;
    case "wrap":
      set([get()]);
      break;
    case "retype": {
      const v = get();
      set(
        typeof v === "string"
          ? Number(v) || v.length
          : typeof v === "number"
            ? String(v)
            : v === null
              ? 0
              : null,
      );
      break;
    }
  }
  return root;
}

type TextEdit = { at: number; del: number; insert: string };
const textEdit: fc.Arbitrary<TextEdit> = fc.record({
  at: fc.nat(),
  del: fc.nat(4),
  insert: fc.oneof(
    fc.constantFrom("", ",", "{", "}", "[", "]", '"', ":", "\\", "\u0000", "💥", "1e999", "-"),
    fc.string({ maxLength: 4 }),
  ),
});

const PATH =
  /^(?:[A-Za-z_$][\w$-]*|\[(?:\d+|"(?:[^"\\]|\\.)*")\])(?:\.[A-Za-z_$][\w$-]*|\[(?:\d+|"(?:[^"\\]|\\.)*")\])*$/;

/** A Config, or a ConfigError whose every problem has a well-formed path and a message. */
function checkOutcome(run: () => Config, what: string): void {
  let result: Config;
  try {
    result = run();
  } catch (e) {
    if (!(e instanceof ConfigError))
      throw new Error(`${what}: threw ${e instanceof Error ? e.stack : String(e)}`);
    if (e.problems.length === 0) throw new Error(`${what}: a ConfigError without problems`);
    for (const p of e.problems) {
      if (typeof p.message !== "string" || p.message.trim() === "")
        throw new Error(`${what}: a problem without a message at ${p.path}`);
      if (typeof p.path !== "string" || (p.path !== "" && !PATH.test(p.path)))
        throw new Error(`${what}: malformed problem path ${JSON.stringify(p.path)}: ${p.message}`);
    }
    return;
  }
  if (!Array.isArray(result.listeners) || typeof result.pools !== "object")
    throw new Error(`${what}: returned something that is not a Config`);
}

export function configProperty(repo: string): FuzzProperty {
  const base = JSON.stringify(baseConfig(repo));
  const dir = tmpdir();
  const file = join(dir, `tether-fuzz-config-${process.pid}.json`);
  const cases = fc.record({
    mutations: fc.array(configMutation, { minLength: 1, maxLength: 4 }),
    edits: fc.array(textEdit, { maxLength: 3 }),
    viaFile: fc.boolean(),
  });
  return named(
    "config files",
    2000,
    fc.property(cases, ({ mutations, edits, viaFile }) => {
      let doc = JSON.parse(base) as Json;
      for (const m of mutations) doc = applyMutation(doc, m);
      if (!viaFile && edits.length === 0) {
        checkOutcome(() => resolveConfig(doc, { baseDir: dir, env: {} }), "resolveConfig");
        return;
      }
      let text = JSON.stringify(doc, null, 2) ?? "";
      for (const e of edits) {
        const at = e.at % (text.length + 1);
        text = text.slice(0, at) + e.insert + text.slice(at + e.del);
      }
      writeFileSync(file, text);
      try {
        checkOutcome(() => loadConfigFile(file, {}), "loadConfigFile");
      } finally {
        unlinkSync(file);
      }
    }),
  );
}
