import { describe, expect, test } from "bun:test";
import { parseArgs, UsageError } from "../../src/cli/args.ts";

describe("command line", () => {
  const rows: { why: string; argv: string[]; want: unknown }[] = [
    { why: "no arguments serve ./config.json", argv: [], want: { kind: "serve", config: "config.json" } },
    { why: "--config FILE", argv: ["--config", "x.json"], want: { kind: "serve", config: "x.json" } },
    { why: "--config=FILE", argv: ["--config=y.json"], want: { kind: "serve", config: "y.json" } },
    {
      why: "check with a config",
      argv: ["check", "--config", "z.json"],
      want: { kind: "check", config: "z.json" },
    },
    { why: "--version", argv: ["--version"], want: { kind: "version" } },
    { why: "--help", argv: ["--help"], want: { kind: "help" } },
    { why: "keygen", argv: ["keygen"], want: { kind: "keygen" } },
    {
      why: "route with every option, inline and separate values",
      argv: [
        "route",
        "--pool=app",
        "--cookie",
        "T=1",
        "--ip",
        "10.0.0.1",
        "--path",
        "/?sid=x",
        "--header",
        "X-S: 1",
      ],
      want: {
        kind: "route",
        config: "config.json",
        pool: "app",
        cookies: ["T=1"],
        ip: "10.0.0.1",
        path: "/?sid=x",
        headers: ["X-S: 1"],
      },
    },
  ];
  for (const r of rows) test(r.why, () => expect(parseArgs(r.argv)).toEqual(r.want as never));

  for (const bad of [
    ["--config"],
    ["--config="],
    ["--bogus"],
    ["check", "check"],
    ["extra"],
    ["route"],
    ["--pool", "x"],
  ]) {
    test(`rejects ${JSON.stringify(bad)} as a usage error`, () =>
      expect(() => parseArgs(bad)).toThrow(UsageError));
  }
});
