import { describe, expect, test } from "bun:test";
import { altSvcValue, protocolLabel, servePlan } from "../../src/server/protocols.ts";

type P = ("http/1.1" | "h2" | "h2c" | "h3")[];

describe("a listener's protocols become Bun.serve servers", () => {
  const rows: { why: string; protocols: P; tcp: { http1: boolean; http2: boolean } | null; quic: boolean }[] =
    [
      {
        why: "the default is HTTP/1.1 alone",
        protocols: ["http/1.1"],
        tcp: { http1: true, http2: false },
        quic: false,
      },
      {
        why: "h2 shares the TCP server",
        protocols: ["http/1.1", "h2"],
        tcp: { http1: true, http2: true },
        quic: false,
      },
      {
        why: "h2c is Bun's http2 on a cleartext server",
        protocols: ["h2c"],
        tcp: { http1: false, http2: true },
        quic: false,
      },
      {
        why: "h3 is a server of its own",
        protocols: ["http/1.1", "h2", "h3"],
        tcp: { http1: true, http2: true },
        quic: true,
      },
      { why: "h3 alone opens no TCP server", protocols: ["h3"], tcp: null, quic: true },
    ];
  for (const r of rows)
    test(r.why, () => {
      expect(servePlan({ protocols: r.protocols })).toEqual({ tcp: r.tcp, quic: r.quic });
    });
});

describe("Alt-Svc and the protocol label", () => {
  test("Alt-Svc names the bound port unless altSvcPort says otherwise", () => {
    expect(altSvcValue({ protocols: ["http/1.1", "h3"] }, 8443)).toBe('h3=":8443"; ma=86400');
    expect(altSvcValue({ protocols: ["http/1.1", "h3"], altSvcPort: 443 }, 8443)).toBe('h3=":443"; ma=86400');
  });

  test("no h3, no Alt-Svc", () => {
    expect(altSvcValue({ protocols: ["http/1.1", "h2"] }, 8443)).toBeNull();
  });

  test("the TCP server is labelled by what it accepts, the QUIC server h3", () => {
    expect(protocolLabel({ protocols: ["http/1.1"] }, false)).toBe("http/1.1");
    expect(protocolLabel({ protocols: ["http/1.1", "h2", "h3"] }, false)).toBe("http/1.1+h2");
    expect(protocolLabel({ protocols: ["http/1.1", "h2", "h3"] }, true)).toBe("h3");
  });
});
