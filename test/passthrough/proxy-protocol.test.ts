/**
 * PROXY protocol v1 and v2: the strict, bounded parser and the serializers,
 * by example tables and by properties (round trips, prefixes, fuzzing).
 */
import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import {
  type Endpoint,
  formatV6,
  MAX_V1_BYTES,
  MAX_V2_PAYLOAD,
  type ProxyHeaderParse,
  parseProxyHeader,
  proxyHeaderFor,
  serializeProxyHeader,
  V2_SIGNATURE,
  v6Bytes,
} from "../../src/passthrough/proxy-protocol.ts";
import { concat } from "./support.ts";

const text = (s: string) => new TextEncoder().encode(s);
const v2 = (verCmd: number, fam: number, payload: number[]) =>
  new Uint8Array([...V2_SIGNATURE, verCmd, fam, payload.length >> 8, payload.length & 0xff, ...payload]);
const tcp4Payload = [192, 0, 2, 1, 198, 51, 100, 7, 0x1f, 0x90, 0x01, 0xbb];

function header(r: ProxyHeaderParse) {
  if (r.kind !== "header") throw new Error(`expected a header, got ${JSON.stringify(r)}`);
  return r;
}

describe("v1", () => {
  test.each([
    [
      "TCP4",
      "PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n",
      {
        family: "tcp4",
        source: { address: "192.0.2.1", port: 56324 },
        destination: { address: "198.51.100.7", port: 443 },
      },
    ],
    [
      "TCP6, written long-hand, normalised to RFC 5952",
      "PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::1 1 65535\r\n",
      {
        family: "tcp6",
        source: { address: "2001:db8::1", port: 1 },
        destination: { address: "::1", port: 65535 },
      },
    ],
    ["UNKNOWN", "PROXY UNKNOWN\r\n", { family: "unknown", source: null, destination: null }],
    [
      "UNKNOWN with ignored addresses",
      "PROXY UNKNOWN ffff:f...f:ffff 1.2.3.4 0 0\r\n",
      { family: "unknown" },
    ],
  ] as const)("%s", (_d, line, want) => {
    const r = header(parseProxyHeader(text(line)));
    expect(r.length).toBe(line.length);
    expect(r.header).toMatchObject({ version: 1, command: "proxy", ...want });
  });

  test.each([
    ["not PROXY", "GET / HTTP/1.1\r\n", "not-proxy"],
    ["lower-case proxy", "proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n", "not-proxy"],
    ["an unknown protocol", "PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n", "bad-line"],
    ["two spaces", "PROXY TCP4  1.2.3.4 1.2.3.4 1 2\r\n", "bad-line"],
    ["a missing port", "PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", "bad-line"],
    ["a bare LF", "PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n", "bad-line"],
    ["a control byte", "PROXY TCP4 1.2.3.4\t1.2.3.4 1 2\r\n", "bad-line"],
    ["an octet over 255", "PROXY TCP4 1.2.3.400 1.2.3.4 1 2\r\n", "bad-address"],
    ["a leading zero in an octet", "PROXY TCP4 01.2.3.4 1.2.3.4 1 2\r\n", "bad-address"],
    ["IPv6 under TCP4", "PROXY TCP4 ::1 1.2.3.4 1 2\r\n", "bad-address"],
    ["IPv4 under TCP6", "PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "bad-address"],
    ["a zone index", "PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "bad-address"],
    ["a port over 65535", "PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n", "bad-port"],
    ["a port with a leading zero", "PROXY TCP4 1.2.3.4 1.2.3.4 080 2\r\n", "bad-port"],
    ["a signed port", "PROXY TCP4 1.2.3.4 1.2.3.4 +80 2\r\n", "bad-port"],
  ])("refuses %s", (_d, line, reason) => {
    expect(parseProxyHeader(text(line))).toEqual({ kind: "invalid", reason } as ProxyHeaderParse);
  });

  test("a line with no CRLF within 107 bytes is too long; shorter, it is incomplete", () => {
    const long = `PROXY UNKNOWN ${"x".repeat(200)}`;
    expect(parseProxyHeader(text(long.slice(0, MAX_V1_BYTES - 1))).kind).toBe("incomplete");
    expect(parseProxyHeader(text(long.slice(0, MAX_V1_BYTES)))).toEqual({
      kind: "invalid",
      reason: "too-long",
    });
    // Exactly 107 bytes with its CRLF is fine.
    const max = `PROXY UNKNOWN ${"x".repeat(MAX_V1_BYTES - 16)}\r\n`;
    expect(max.length).toBe(MAX_V1_BYTES);
    expect(header(parseProxyHeader(text(max))).length).toBe(MAX_V1_BYTES);
  });

  test("the bytes after the header (the ClientHello) are not part of it", () => {
    const r = header(parseProxyHeader(text("PROXY UNKNOWN\r\n\x16\x03\x01")));
    expect(r.length).toBe(15);
  });
});

describe("v2", () => {
  test("PROXY TCP4", () => {
    const r = header(parseProxyHeader(v2(0x21, 0x11, tcp4Payload)));
    expect(r.length).toBe(28);
    expect(r.header).toEqual({
      version: 2,
      command: "proxy",
      family: "tcp4",
      source: { address: "192.0.2.1", port: 8080 },
      destination: { address: "198.51.100.7", port: 443 },
    });
  });

  test("PROXY TCP6, with TLVs after the addresses", () => {
    const src = [0x20, 0x01, 0x0d, 0xb8, ...new Array(11).fill(0), 1];
    const dst = [...new Array(10).fill(0), 0xff, 0xff, 10, 0, 0, 1];
    const tlvs = [0x04, 0, 3, 1, 2, 3, 0x01, 0, 2, 0x68, 0x32];
    const r = header(parseProxyHeader(v2(0x21, 0x21, [...src, ...dst, 0, 80, 1, 0xbb, ...tlvs])));
    expect(r.header.source).toEqual({ address: "2001:db8::1", port: 80 });
    expect(r.header.destination).toEqual({ address: "::ffff:10.0.0.1", port: 443 });
  });

  test("LOCAL: the balancer's own connection, whatever its family and block", () => {
    for (const fam of [0x00, 0x11, 0x31]) {
      const r = header(parseProxyHeader(v2(0x20, fam, fam === 0x11 ? tcp4Payload : [])));
      expect(r.header).toEqual({
        version: 2,
        command: "local",
        family: "unknown",
        source: null,
        destination: null,
      });
    }
  });

  test("PROXY UNSPEC: addresses unknown, block skipped", () => {
    const r = header(parseProxyHeader(v2(0x21, 0x00, [1, 2, 3])));
    expect(r.header.family).toBe("unknown");
    expect(r.length).toBe(19);
  });

  test.each([
    ["version 1 in the version nibble", v2(0x11, 0x11, tcp4Payload), "bad-version"],
    ["command 2", v2(0x22, 0x11, tcp4Payload), "bad-command"],
    ["UDP over IPv4", v2(0x21, 0x12, tcp4Payload), "unsupported-family"],
    ["a UNIX socket", v2(0x21, 0x31, new Array(216).fill(0)), "unsupported-family"],
    ["a TCP4 block shorter than 12 bytes", v2(0x21, 0x11, tcp4Payload.slice(0, 11)), "bad-length"],
    ["a TCP6 block shorter than 36 bytes", v2(0x21, 0x21, new Array(35).fill(0)), "bad-length"],
    ["a TLV running past the block", v2(0x21, 0x11, [...tcp4Payload, 1, 0, 5, 1]), "bad-tlv"],
    ["a stray byte after the TLVs", v2(0x21, 0x11, [...tcp4Payload, 1, 0, 0, 9]), "bad-tlv"],
    [
      "a broken signature",
      new Uint8Array([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0b]),
      "not-proxy",
    ],
  ])("refuses %s", (_d, bytes, reason) => {
    expect(parseProxyHeader(bytes)).toEqual({ kind: "invalid", reason } as ProxyHeaderParse);
  });

  test(`a length over ${MAX_V2_PAYLOAD} is refused before the bytes arrive`, () => {
    const preamble = new Uint8Array([
      ...V2_SIGNATURE,
      0x21,
      0x11,
      (MAX_V2_PAYLOAD + 1) >> 8,
      (MAX_V2_PAYLOAD + 1) & 0xff,
    ]);
    expect(parseProxyHeader(preamble)).toEqual({ kind: "invalid", reason: "too-long" });
  });
});

// ---- properties ----

const v4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((o) => o.join("."));
const v6 = fc.uint8Array({ minLength: 16, maxLength: 16 }).map(formatV6);
const port = fc.integer({ min: 0, max: 65535 });
const endpoint = (addr: fc.Arbitrary<string>) =>
  fc.record({ address: addr, port }).map((e): Endpoint => ({ address: e.address, port: e.port }));
const pair = fc.oneof(
  fc.tuple(endpoint(v4), endpoint(v4)),
  fc.tuple(endpoint(v6), endpoint(v6)),
  fc.tuple(endpoint(v4), endpoint(v6)),
);
const version = fc.constantFrom(1 as const, 2 as const);

describe("properties", () => {
  test("serialize then parse gives the same header back, for v1 and v2, and consumes exactly it", () => {
    fc.assert(
      fc.property(version, pair, fc.uint8Array({ maxLength: 32 }), (ver, [src, dst], after) => {
        const h = proxyHeaderFor(ver, src, dst);
        const wire = serializeProxyHeader(h);
        if (ver === 1) expect(wire.length).toBeLessThanOrEqual(MAX_V1_BYTES);
        const r = header(parseProxyHeader(concat(wire, after)));
        expect(r.length).toBe(wire.length);
        expect(r.header).toEqual(h);
      }),
      { numRuns: 1000 },
    );
  });

  test("an IPv4 endpoint paired with an IPv6 one travels as IPv4-mapped IPv6", () => {
    const h = proxyHeaderFor(2, { address: "10.1.2.3", port: 1 }, { address: "2001:db8::5", port: 2 });
    expect(h.family).toBe("tcp6");
    expect(h.source?.address).toBe("::ffff:10.1.2.3");
    // A dual-stack socket's ::ffff: view of an IPv4 peer is IPv4.
    expect(
      proxyHeaderFor(1, { address: "::ffff:10.1.2.3", port: 1 }, { address: "10.0.0.1", port: 2 }).family,
    ).toBe("tcp4");
    expect(new TextDecoder().decode(serializeProxyHeader(proxyHeaderFor(1, null, null)))).toBe(
      "PROXY UNKNOWN\r\n",
    );
  });

  test("IPv6 text ↔ bytes agrees with itself", () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), (b) => {
        expect(Array.from(v6Bytes(formatV6(b)))).toEqual(Array.from(b));
      }),
    );
  });

  test("every strict prefix of a valid header is incomplete", () => {
    fc.assert(
      fc.property(version, pair, (ver, [src, dst]) => {
        const wire = serializeProxyHeader(proxyHeaderFor(ver, src, dst));
        for (let n = 0; n < wire.length; n++)
          expect(parseProxyHeader(wire.subarray(0, n)).kind).toBe("incomplete");
      }),
      { numRuns: 200 },
    );
  });

  test("arbitrary and mutated input never throws, and is bounded", () => {
    const kinds = new Set(["incomplete", "header", "invalid"]);
    fc.assert(
      fc.property(
        version,
        pair,
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }),
        fc.uint8Array({ maxLength: 300 }),
        (ver, [src, dst], sets, junk) => {
          const m = concat(serializeProxyHeader(proxyHeaderFor(ver, src, dst)), junk);
          for (const [at, v] of sets) m[at % m.length] = v;
          for (const input of [m, junk]) {
            const r = parseProxyHeader(input);
            expect(kinds.has(r.kind)).toBe(true);
            if (input.length >= 16 + MAX_V2_PAYLOAD) expect(r.kind).not.toBe("incomplete");
            if (r.kind === "header") expect(r.length).toBeLessThanOrEqual(input.length);
          }
        },
      ),
      { numRuns: 3000 },
    );
  });
});
