import { describe, expect, test } from "bun:test";
import { LearnBatcher, type LearnedBatch, learnedEntries } from "../../src/state/learn-batch.ts";

function recorder<R = void>(result?: R) {
  const sent: LearnedBatch[] = [];
  const send = (e: LearnedBatch): R => {
    sent.push(e);
    return result as R;
  };
  return { sent, send };
}

describe("LearnBatcher", () => {
  test("entries added in one tick go out as one flat batch after maxDelayMs", async () => {
    const r = recorder();
    const b = new LearnBatcher(r.send, { maxDelayMs: 5 });
    b.add("app", "0:cookie", 1, "b1", 100);
    b.add("app", "0:cookie", 2, "b2", 200);
    expect(r.sent).toHaveLength(0);
    await Bun.sleep(20);
    expect(r.sent).toEqual([["app", "0:cookie", 1, "b1", 100, "app", "0:cookie", 2, "b2", 200]]);
  });

  test("a batch is sent as soon as it holds maxEntries entries, without waiting for the timer", () => {
    const r = recorder();
    const b = new LearnBatcher(r.send, { maxDelayMs: 60_000, maxEntries: 3 });
    for (let k = 0; k < 7; k++) b.add("app", "t", k, "b1", 100);
    expect(r.sent.map((e) => [...learnedEntries(e)].map((x) => x[2]))).toEqual([
      [0, 1, 2],
      [3, 4, 5],
    ]);
    // The seventh entry waits for the timer, or for flush().
    b.flush();
    expect(r.sent).toHaveLength(3);
    expect([...learnedEntries(r.sent[2] ?? [])]).toEqual([["app", "t", 6, "b1", 100]]);
  });

  test("flush() sends what is queued at once, cancels the timer, and returns what send returned", async () => {
    const r = recorder("written");
    const b = new LearnBatcher(r.send, { maxDelayMs: 5 });
    b.add("app", "t", 1, "b1", 100);
    expect(b.flush()).toBe("written");
    expect(r.sent).toHaveLength(1);
    await Bun.sleep(20);
    expect(r.sent).toHaveLength(1);
  });

  test("maxDelayMs 0: entries added in one task leave together before the next task, in one batch", async () => {
    const r = recorder();
    const b = new LearnBatcher(r.send, { maxDelayMs: 0 });
    b.add("app", "t", 1, "b1", 100);
    b.add("app", "t", 2, "b2", 100);
    expect(r.sent).toHaveLength(0);
    await Promise.resolve();
    expect(r.sent).toEqual([["app", "t", 1, "b1", 100, "app", "t", 2, "b2", 100]]);
  });

  test("flush() with nothing queued sends nothing and returns undefined", () => {
    const r = recorder("written");
    const b = new LearnBatcher(r.send);
    expect(b.flush()).toBeUndefined();
    expect(r.sent).toHaveLength(0);
  });

  test.each([
    ["negative maxDelayMs", { maxDelayMs: -1 }, /maxDelayMs/],
    ["maxEntries of 0", { maxEntries: 0 }, /maxEntries/],
    ["fractional maxEntries", { maxEntries: 1.5 }, /maxEntries/],
  ])("rejects %s, naming the option", (_, opts, message) => {
    expect(() => new LearnBatcher(() => {}, opts)).toThrow(message);
  });
});

describe("learnedEntries", () => {
  test.each<[string, LearnedBatch, [string, string, number, string, number][]]>([
    ["an empty batch yields nothing", [], []],
    [
      "well-formed entries come out in order",
      ["p", "t", 1, "b1", 10, "q", "u", 2, "b2", 20],
      [
        ["p", "t", 1, "b1", 10],
        ["q", "u", 2, "b2", 20],
      ],
    ],
    [
      "a key that is a string is skipped",
      ["p", "t", "1", "b1", 10, "p", "t", 2, "b2", 20],
      [["p", "t", 2, "b2", 20]],
    ],
    ["a numeric backend id is skipped", ["p", "t", 1, 7, 10], []],
    ["a string expiry is skipped", ["p", "t", 1, "b1", "10"], []],
    [
      "a trailing partial entry is ignored",
      ["p", "t", 1, "b1", 10, "p", "t", 2, "b2"],
      [["p", "t", 1, "b1", 10]],
    ],
  ])("%s", (_, batch, expected) => {
    expect([...learnedEntries(batch)]).toEqual(expected);
  });

  test("fields of the wrong type from a decoded message are skipped, not thrown on", () => {
    const batch = ["p", null, 1, "b1", 10, "p", "t", 2, "b2", 20] as unknown as LearnedBatch;
    expect([...learnedEntries(batch)]).toEqual([["p", "t", 2, "b2", 20]]);
  });
});
