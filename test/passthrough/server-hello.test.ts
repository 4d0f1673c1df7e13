/**
 * The ServerHello reader that feeds the tls-session stick table: what it
 * learns from real openssl ServerHellos, and what it must not learn.
 */
import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { parseClientHello } from "../../src/passthrough/client-hello.ts";
import {
  learnableSessionId,
  parseServerHello,
  type ServerHello,
  type ServerHelloParse,
} from "../../src/passthrough/server-hello.ts";
import { concat, readHexFixture, refragment } from "./support.ts";

// Captured in one run (fixtures/capture.ts): the resuming client offers the ID the first ServerHello issued.
const tls12New = readHexFixture("server-openssl-tls12-new.hex");
const tls12Resumed = readHexFixture("server-openssl-tls12-resumed.hex");
const tls13 = readHexFixture("server-openssl-tls13.hex");
const clientResume = readHexFixture("client-openssl-tls12-resume.hex");
const clientTls13 = readHexFixture("client-openssl-tls13.hex");

function sh(r: ServerHelloParse): ServerHello {
  if (r.kind !== "hello") throw new Error(`expected a ServerHello, got ${JSON.stringify(r)}`);
  return r.hello;
}
const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
function clientSid(bytes: Uint8Array): string {
  const r = parseClientHello(bytes);
  if (r.kind !== "hello") throw new Error("fixture does not parse");
  return hex(r.hello.sessionId);
}

const u16 = (n: number) => [n >> 8, n & 0xff];
function serverHello(version: number[], sid: number[], extensions: number[][] | null): Uint8Array {
  const exts = extensions?.flat() ?? [];
  const body = [
    ...version,
    ...new Array(32).fill(9),
    sid.length,
    ...sid,
    0xc0,
    0x2f,
    0,
    ...(extensions ? [...u16(exts.length), ...exts] : []),
  ];
  const msg = [2, 0, ...u16(body.length), ...body];
  return new Uint8Array([22, 3, 3, ...u16(msg.length), ...msg]);
}
const supportedVersions = (v: number) => [0, 43, 0, 2, ...u16(v)];

describe("what the tls-session rule learns", () => {
  test("TLS 1.2, new session: the ID the backend issued, the one the client later resumes with", () => {
    const issued = learnableSessionId(sh(parseServerHello(tls12New)));
    expect(issued).toHaveLength(64);
    expect(issued).toBe(clientSid(clientResume));
  });

  test("TLS 1.2 resumption: the ServerHello echoes the client's session ID", () => {
    const h = sh(parseServerHello(tls12Resumed));
    expect(h.version).toBe(0x0303);
    expect(learnableSessionId(h)).toBe(clientSid(clientResume));
  });

  test("TLS 1.3: legacy_version 0x0303 with supported_versions 0x0304, and the echoed random ID is never learned", () => {
    const h = sh(parseServerHello(tls13));
    expect(h.version).toBe(0x0304);
    expect(hex(h.sessionId)).toBe(clientSid(clientTls13));
    expect(learnableSessionId(h)).toBeNull();
  });

  test("a HelloRetryRequest (TLS 1.3) is not learned", () => {
    const hrr = serverHello([3, 3], new Array(32).fill(5), [supportedVersions(0x0304)]);
    expect(learnableSessionId(sh(parseServerHello(hrr)))).toBeNull();
  });

  test("an empty session ID (a ticket-only server) is not learned", () => {
    expect(learnableSessionId(sh(parseServerHello(serverHello([3, 3], [], null))))).toBeNull();
  });

  test("TLS 1.0 with an ID and no extensions is learned", () => {
    expect(learnableSessionId(sh(parseServerHello(serverHello([3, 1], [1, 2, 3], null))))).toBe("010203");
  });

  test("an alert instead of a ServerHello: nothing to learn", () => {
    expect(parseServerHello(new Uint8Array([21, 3, 3, 0, 2, 2, 40]))).toEqual({ kind: "not-hello" });
  });

  test("split across records and segments, it reads the same; prefixes are incomplete", () => {
    for (const bytes of [tls12New, tls12Resumed, tls13]) {
      const want = learnableSessionId(sh(parseServerHello(bytes)));
      for (const size of [1, 7, 40])
        expect(learnableSessionId(sh(parseServerHello(refragment(bytes, size))))).toBe(want);
      // The record may go on with the next messages (Certificate...): only the ServerHello itself is needed.
      const end = 9 + (((bytes[6] as number) << 16) | ((bytes[7] as number) << 8) | (bytes[8] as number));
      for (let n = 0; n < end; n++) expect(parseServerHello(bytes.subarray(0, n)).kind).toBe("incomplete");
      expect(parseServerHello(bytes.subarray(0, end)).kind).toBe("hello");
    }
  });

  test("a malformed supported_versions is invalid", () => {
    expect(parseServerHello(serverHello([3, 3], [], [[0, 43, 0, 1, 3]]))).toEqual({
      kind: "invalid",
      reason: "bad-supported-versions",
    });
  });
});

describe("fuzzing", () => {
  test("arbitrary bytes and mutated real ServerHellos never throw", () => {
    const kinds = new Set(["incomplete", "hello", "not-hello", "invalid"]);
    fc.assert(
      fc.property(
        fc.constantFrom(tls12New, tls12Resumed, tls13),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }),
        fc.uint8Array({ maxLength: 64 }),
        (bytes, sets, tail) => {
          const m = concat(bytes, tail);
          for (const [at, v] of sets) m[at % m.length] = v;
          const r = parseServerHello(m);
          expect(kinds.has(r.kind)).toBe(true);
          if (r.kind === "hello") expect(r.hello.sessionId.length).toBeLessThanOrEqual(32);
          expect(kinds.has(parseServerHello(tail).kind)).toBe(true);
        },
      ),
      { numRuns: 2000 },
    );
  });
});
