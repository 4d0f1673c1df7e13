/**
 * Drains with a deadline: the state in force at a time, its one-string form
 * (Redis), the admin API's body, and the timers each thread arms.
 */
import { describe, expect, test } from "bun:test";
import { parseStateBody } from "../../src/admin/api.ts";
import type { BackendState } from "../../src/config/schema.ts";
import {
  DrainTimers,
  effectiveState,
  formatState,
  type OperatorState,
  parseState,
} from "../../src/pool/drain.ts";

const T = 1_767_225_600_000;

describe("effectiveState", () => {
  const rows: [string, OperatorState, number, BackendState][] = [
    ["a drain before its deadline is a drain", { state: "drain", until: T }, T - 1, "drain"],
    ["a drain at its deadline is maintenance", { state: "drain", until: T }, T, "maint"],
    ["a drain past its deadline is maintenance", { state: "drain", until: T }, T + 5000, "maint"],
    ["a drain without a deadline stays a drain", { state: "drain", until: 0 }, T * 2, "drain"],
    ["ready is ready whatever the time", { state: "ready", until: 0 }, T, "ready"],
    ["maint is maint", { state: "maint", until: 0 }, 0, "maint"],
  ];
  for (const [what, s, now, expected] of rows)
    test(what, () => expect(effectiveState(s, now)).toBe(expected));
});

describe("formatState / parseState", () => {
  test("round-trip every state, a deadline included", () => {
    for (const s of [
      { state: "ready", until: 0 },
      { state: "drain", until: 0 },
      { state: "maint", until: 0 },
      { state: "drain", until: T },
    ] as const)
      expect(parseState(formatState(s))).toEqual(s);
    expect(formatState({ state: "drain", until: T })).toBe(`drain@${T}`);
  });

  test("anything else is null, never an exception", () => {
    for (const bad of [
      "",
      "Drain",
      "drain@",
      "drain@0",
      "drain@-5",
      "drain@12x",
      "maint@5",
      "drain@1e9",
      null,
      7,
      {},
    ])
      expect(parseState(bad)).toBeNull();
  });
});

describe("parseStateBody", () => {
  test("a drain with deadlineMs gets an absolute deadline", () => {
    expect(parseStateBody('{"state":"drain","deadlineMs":30000}', T)).toEqual({
      state: "drain",
      until: T + 30000,
    });
  });

  test("a drain without one takes the pool's drainDeadlineMs, or none", () => {
    expect(parseStateBody('{"state":"drain"}', T, 5000)).toEqual({ state: "drain", until: T + 5000 });
    expect(parseStateBody('{"state":"drain"}', T, 0)).toEqual({ state: "drain", until: 0 });
    expect(parseStateBody('{"state":"maint"}', T, 5000)).toEqual({ state: "maint", until: 0 });
  });

  test("bad bodies say what is wrong", () => {
    const rows: [string, string][] = [
      ['{"state":"maint","deadlineMs":1000}', 'deadlineMs goes only with "state": "drain"'],
      ['{"state":"drain","deadlineMs":0}', "deadlineMs must be a whole number of milliseconds, at least 1"],
      ['{"state":"drain","deadlineMs":1.5}', "deadlineMs must be a whole number of milliseconds, at least 1"],
      [
        '{"state":"drain","deadlineMs":"60s"}',
        "deadlineMs must be a whole number of milliseconds, at least 1",
      ],
      ['{"state":"drain","deadline":1}', 'unknown key "deadline"'],
    ];
    for (const [body, error] of rows) expect(parseStateBody(body, T)).toEqual({ error });
  });
});

describe("DrainTimers", () => {
  test("fires once at the deadline; re-setting or clearing replaces the timer", async () => {
    const fired: string[] = [];
    const timers = new DrainTimers((key) => fired.push(key));
    timers.set("app\0b1", Date.now() + 30);
    timers.set("app\0b2", Date.now() + 30);
    timers.set("app\0b2", Date.now() + 60_000);
    timers.set("app\0b3", Date.now() + 30);
    timers.clear("app\0b3");
    const deadline = Date.now() + 2000;
    while (fired.length === 0 && Date.now() < deadline) await Bun.sleep(10);
    await Bun.sleep(50);
    expect(fired).toEqual(["app\0b1"]);
    timers.clearAll();
  });

  test("a deadline already passed fires on the next turn", async () => {
    const fired: string[] = [];
    const timers = new DrainTimers((key) => fired.push(key));
    timers.set("k", Date.now() - 1000);
    expect(fired).toEqual([]);
    await Bun.sleep(5);
    expect(fired).toEqual(["k"]);
  });
});
