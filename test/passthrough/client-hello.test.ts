/**
 * The ClientHello parser: real hellos from openssl and curl (fixtures and a
 * live capture), every way of splitting them, hand-built malformed hellos,
 * and fuzzing (arbitrary bytes and mutations of real hellos).
 */
import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { type ClientHelloParse, parseClientHello } from "../../src/passthrough/client-hello.ts";
import { MAX_HELLO_BYTES } from "../../src/passthrough/records.ts";
import { concat, readHexFixture, recorder, refragment, run } from "./support.ts";

const FIXTURES = {
  tls12New: readHexFixture("client-openssl-tls12-new.hex"),
  tls12Resume: readHexFixture("client-openssl-tls12-resume.hex"),
  tls12Ticket: readHexFixture("client-openssl-tls12-ticket.hex"),
  tls13: readHexFixture("client-openssl-tls13.hex"),
  tls13Psk: readHexFixture("client-openssl-tls13-psk.hex"),
  noSni: readHexFixture("client-openssl-no-sni.hex"),
  curl: readHexFixture("client-curl.hex"),
};
const REAL = Object.values(FIXTURES);

function hello(r: ClientHelloParse) {
  if (r.kind !== "hello") throw new Error(`expected a hello, got ${JSON.stringify(r)}`);
  return r.hello;
}

/** The fields that matter, for comparing parses of the same hello framed differently. */
function summary(r: ClientHelloParse) {
  if (r.kind !== "hello") return r;
  const h = r.hello;
  return { ...h, sessionId: Buffer.from(h.sessionId).toString("hex") };
}

// ---- a ClientHello builder for hand-made cases ----

const u16 = (n: number) => [n >> 8, n & 0xff];
const u24 = (n: number) => [n >> 16, (n >> 8) & 0xff, n & 0xff];
const ext = (type: number, data: number[]) => [...u16(type), ...u16(data.length), ...data];
const sni = (...names: string[]) => {
  const list = names.flatMap((n) => [0, ...u16(n.length), ...[...n].map((c) => c.charCodeAt(0))]);
  return ext(0, [...u16(list.length), ...list]);
};

interface Parts {
  version?: number[];
  sid?: number[];
  sidLength?: number;
  suites?: number[];
  compression?: number[];
  /** Extensions, already framed; null: no extensions block at all. */
  extensions?: number[][] | null;
  extensionsLength?: number;
  trailing?: number[];
  type?: number;
  recordVersion?: number[];
}

function build(p: Parts = {}): Uint8Array {
  const sid = p.sid ?? [];
  const suites = p.suites ?? [0x13, 0x01, 0xc0, 0x2f];
  const compression = p.compression ?? [0];
  const exts = p.extensions === undefined ? [sni("example.com")] : p.extensions;
  const extBytes = exts === null ? [] : exts.flat();
  const body = [
    ...(p.version ?? [3, 3]),
    ...new Array(32).fill(7),
    p.sidLength ?? sid.length,
    ...sid,
    ...u16(suites.length),
    ...suites,
    compression.length,
    ...compression,
    ...(exts === null ? [] : [...u16(p.extensionsLength ?? extBytes.length), ...extBytes]),
    ...(p.trailing ?? []),
  ];
  const msg = [p.type ?? 1, ...u24(body.length), ...body];
  return new Uint8Array([22, ...(p.recordVersion ?? [3, 1]), ...u16(msg.length), ...msg]);
}

describe("real ClientHellos", () => {
  test.each([
    ["openssl -tls1_2 -no_ticket, new session", "tls12New", "a.test", 0, false, false, false],
    ["openssl -tls1_2 -no_ticket -sess_in (resumption)", "tls12Resume", "a.test", 32, false, false, false],
    ["openssl -tls1_2 with tickets on", "tls12Ticket", "a.test", 0, true, false, false],
    ["openssl TLS 1.3: random legacy session ID", "tls13", "a.test", 32, true, false, true],
    ["openssl TLS 1.3 resumption: pre_shared_key", "tls13Psk", "a.test", 32, true, true, true],
    ["openssl -noservername", "noSni", null, 0, true, false, false],
    ["curl", "curl", "b.test", 32, false, false, true],
  ] as const)("%s", (_d, name, serverName, sidLength, ticket, psk, tls13) => {
    const h = hello(parseClientHello(FIXTURES[name]));
    expect(h.serverName).toBe(serverName);
    expect(h.sessionId.length).toBe(sidLength);
    expect(h.sessionTicket).toBe(ticket);
    expect(h.preSharedKey).toBe(psk);
    expect(h.offersTls13).toBe(tls13);
    expect(h.legacyVersion).toBe(0x0303);
  });

  test("captured live from this machine's openssl s_client and curl, they parse", async () => {
    const rec = recorder();
    await Promise.all([
      run(["openssl", "s_client", "-connect", `127.0.0.1:${rec.port}`, "-servername", "live.test"], "", 3000),
      run(
        [
          "curl",
          "-sk",
          "--max-time",
          "2",
          "--resolve",
          `live.test:${rec.port}:127.0.0.1`,
          `https://live.test:${rec.port}/`,
        ],
        "",
        3000,
      ),
    ]);
    rec.stop();
    expect(rec.client.length).toBe(2);
    for (const bytes of rec.client) expect(hello(parseClientHello(bytes)).serverName).toBe("live.test");
  });

  test("every strict prefix is incomplete: never a verdict before the whole hello is in", () => {
    for (const bytes of REAL) {
      for (let n = 0; n < bytes.length; n++)
        expect(parseClientHello(bytes.subarray(0, n)).kind).toBe("incomplete");
    }
  });

  test("split across records of any size and TCP segments anywhere, it parses the same", () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...REAL),
        fc.integer({ min: 1, max: 600 }),
        fc.array(fc.integer({ min: 1, max: 2000 }), { maxLength: 5 }),
        (bytes, recordSize, cuts) => {
          const framed = refragment(bytes, recordSize);
          const expected = summary(parseClientHello(bytes));
          expect(summary(parseClientHello(framed))).toEqual(expected);
          // Arriving in segments: every prefix short of the end is incomplete.
          for (const cut of cuts) {
            if (cut < framed.length)
              expect(parseClientHello(framed.subarray(0, cut)).kind).toBe("incomplete");
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  test("bytes after the hello (early data, the next flight) do not change it", () => {
    const extra = concat(FIXTURES.tls13, new Uint8Array([23, 3, 3, 0, 2, 1, 2]));
    expect(summary(parseClientHello(extra))).toEqual(summary(parseClientHello(FIXTURES.tls13)));
  });
});

describe("malformed hellos are invalid, with a reason", () => {
  const cases: [string, Uint8Array, string][] = [
    ["an HTTP request", new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "not-tls"],
    ["an SSH banner", new TextEncoder().encode("SSH-2.0-OpenSSH_9.2\r\n"), "not-tls"],
    ["an SSLv2-compatible hello", new Uint8Array([0x80, 0x2e, 0x01, 0x03, 0x01]), "not-tls"],
    ["an alert first", new Uint8Array([21, 3, 3, 0, 2, 2, 40]), "not-tls"],
    ["record version 2.x", new Uint8Array([22, 2, 0, 0, 4]), "not-tls"],
    ["an empty record", new Uint8Array([22, 3, 1, 0, 0]), "bad-record"],
    ["a record over 2^14 bytes", new Uint8Array([22, 3, 1, 0x40, 0x01]), "bad-record"],
    ["a ServerHello from a client", build({ type: 2 }), "unexpected-message"],
    ["a hello longer than 16 KiB", new Uint8Array([22, 3, 1, 0, 4, 1, ...u24(MAX_HELLO_BYTES)]), "too-large"],
    ["legacy_version 2.0", build({ version: [2, 0] }), "bad-version"],
    ["a 33-byte session ID", build({ sid: new Array(33).fill(1) }), "bad-session-id"],
    [
      "a session ID length past the end",
      build({ sidLength: 32, suites: [], compression: [], extensions: null }),
      "truncated",
    ],
    ["an odd cipher suite list", build({ suites: [0x13, 0x01, 0xc0] }), "bad-cipher-suites"],
    ["no cipher suites", build({ suites: [] }), "bad-cipher-suites"],
    ["no compression methods", build({ compression: [] }), "bad-compression"],
    ["an extensions length that does not match", build({ extensionsLength: 3 }), "bad-extensions"],
    ["bytes after the extensions", build({ trailing: [0] }), "bad-extensions"],
    [
      "two server_name extensions",
      build({ extensions: [sni("a.test"), sni("b.test")] }),
      "duplicate-extension",
    ],
    [
      "pre_shared_key before another extension",
      build({ extensions: [ext(41, [0, 0]), sni("a.test")] }),
      "psk-not-last",
    ],
    ["an empty pre_shared_key", build({ extensions: [sni("a.test"), ext(41, [])] }), "bad-extensions"],
    ["two host names", build({ extensions: [sni("a.test", "b.test")] }), "bad-server-name"],
    ["an empty server name list", build({ extensions: [ext(0, [0, 0])] }), "bad-server-name"],
    ["a name with a space", build({ extensions: [sni("ex ample.com")] }), "bad-server-name"],
    ["a name with a NUL", build({ extensions: [sni("a.test\0.evil")] }), "bad-server-name"],
    ["a trailing dot", build({ extensions: [sni("example.com.")] }), "bad-server-name"],
    ["an empty label", build({ extensions: [sni("a..test")] }), "bad-server-name"],
    [
      "supported_versions of odd length",
      build({ extensions: [ext(43, [3, 3, 4, 3])] }),
      "bad-supported-versions",
    ],
  ];
  test.each(cases)("%s", (_d, bytes, reason) => {
    expect(parseClientHello(bytes)).toEqual({ kind: "invalid", reason } as ClientHelloParse);
  });

  test("a handshake record interleaved with another content type", () => {
    const framed = refragment(FIXTURES.tls12New, 50);
    const ccs = new Uint8Array([20, 3, 3, 0, 1, 1]);
    const bad = concat(concat(framed.subarray(0, 55), ccs), framed.subarray(55));
    expect(parseClientHello(bad)).toEqual({ kind: "invalid", reason: "interleaved-record" });
  });

  test("garbage is refused on its first byte, not after a timeout", () => {
    expect(parseClientHello(new TextEncoder().encode("G")).kind).toBe("invalid");
  });
});

describe("well-formed edge cases are accepted", () => {
  test("a hello without any extensions (legal before TLS 1.3)", () => {
    const h = hello(parseClientHello(build({ extensions: null })));
    expect(h.serverName).toBeNull();
  });

  test("the server name is lower-cased; unknown name types are skipped", () => {
    const other = [1, ...u16(3), 120, 121, 122];
    const list = [0, ...u16(11), ...[..."WWW.Ex-1.IO"].map((c) => c.charCodeAt(0)), ...other];
    const h = hello(parseClientHello(build({ extensions: [ext(0, [...u16(list.length), ...list])] })));
    expect(h.serverName).toBe("www.ex-1.io");
  });

  test("a non-empty session_ticket extension is reported with its length", () => {
    const h = hello(parseClientHello(build({ extensions: [sni("a.test"), ext(35, [1, 2, 3, 4])] })));
    expect([h.sessionTicket, h.ticketLength]).toEqual([true, 4]);
  });
});

describe("fuzzing", () => {
  const verdicts = new Set(["incomplete", "hello", "invalid"]);

  function checkSane(r: ClientHelloParse, input: Uint8Array) {
    expect(verdicts.has(r.kind)).toBe(true);
    // Bounded: once more than the limit has arrived there is always a verdict.
    if (input.length > MAX_HELLO_BYTES + 5) expect(r.kind).not.toBe("incomplete");
    if (r.kind === "hello") {
      expect(r.hello.sessionId.length).toBeLessThanOrEqual(32);
      if (r.hello.serverName !== null) expect(r.hello.serverName).toMatch(/^[a-z0-9_-]+(\.[a-z0-9_-]+)*$/);
    }
  }

  test("arbitrary bytes never throw", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), (bytes) => checkSane(parseClientHello(bytes), bytes)),
      { numRuns: 2000 },
    );
  });

  test("arbitrary bytes behind a plausible record and handshake header never throw", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffff }), fc.uint8Array({ maxLength: 800 }), (len, tail) => {
        const bytes = concat(
          new Uint8Array([22, 3, 1, len >> 8, len & 0xff, 1, 0, len >> 8, len & 0xff]),
          tail,
        );
        checkSane(parseClientHello(bytes), bytes);
      }),
      { numRuns: 2000 },
    );
  });

  const mutation = fc.oneof(
    fc.record({ kind: fc.constant("set" as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
    fc.record({
      kind: fc.constant("insert" as const),
      at: fc.nat(),
      values: fc.uint8Array({ minLength: 1, maxLength: 8 }),
    }),
    fc.record({ kind: fc.constant("delete" as const), at: fc.nat(), count: fc.integer({ min: 1, max: 8 }) }),
    fc.record({ kind: fc.constant("truncate" as const), at: fc.nat() }),
  );

  type Mutation =
    | { kind: "set"; at: number; value: number }
    | { kind: "insert"; at: number; values: Uint8Array }
    | { kind: "delete"; at: number; count: number }
    | { kind: "truncate"; at: number };

  function mutate(bytes: Uint8Array, ms: Mutation[]): Uint8Array {
    let out = Array.from(bytes);
    for (const m of ms) {
      const at = out.length === 0 ? 0 : m.at % out.length;
      if (m.kind === "set") out[at] = m.value;
      else if (m.kind === "insert") out.splice(at, 0, ...m.values);
      else if (m.kind === "delete") out.splice(at, m.count);
      else out = out.slice(0, at);
    }
    return new Uint8Array(out);
  }

  test("mutations of real openssl and curl hellos never throw", () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...REAL),
        fc.array(mutation, { minLength: 1, maxLength: 6 }),
        fc.integer({ min: 1, max: 400 }),
        (bytes, ms, recordSize) => {
          const m = mutate(bytes, ms);
          checkSane(parseClientHello(m), m);
          const framed = mutate(refragment(bytes, recordSize), ms);
          checkSane(parseClientHello(framed), framed);
        },
      ),
      { numRuns: 3000 },
    );
  });

  test("16 KiB of one-byte records is refused quickly (no quadratic blow-up)", () => {
    // A hello that claims 16000 bytes, sent one byte per record: the framing outgrows the limit first.
    const message = [1, ...u24(16_000), ...new Array(16_000).fill(0x41)];
    const big = new Uint8Array(MAX_HELLO_BYTES + 64);
    for (let i = 0, n = 0; n + 6 <= big.length; i++, n += 6)
      big.set([22, 3, 1, 0, 1, message[i] as number], n);
    const t0 = performance.now();
    const r = parseClientHello(big);
    expect(r.kind).toBe("invalid");
    expect(performance.now() - t0).toBeLessThan(200);
  });
});
