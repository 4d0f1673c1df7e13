/** What the API backends read from Redis do to this instance's (pure). */
import { describe, expect, test } from "bun:test";
import { type LocalBackend, type SharedBackend, syncShared } from "../../src/state/shared-backends.ts";

const b = (id: string, url = `http://10.0.0.1:${id.length}`, weight = 1): SharedBackend => ({
  pool: "app",
  id,
  url,
  weight,
});

describe("syncShared", () => {
  const cases: [string, LocalBackend[], SharedBackend[] | null, ReturnType<typeof syncShared>][] = [
    [
      "an unseeded Redis gets this instance's set, and nothing here changes",
      [b("x"), { ...b("y"), removing: true }],
      null,
      { upsert: [], remove: [], seed: [b("x")] },
    ],
    ["an unseeded Redis and nothing here: nothing to write", [], null, { upsert: [], remove: [], seed: [] }],
    [
      "a shared backend missing here is added; one here missing there is removed",
      [b("x")],
      [b("y")],
      { upsert: [b("y")], remove: [{ pool: "app", id: "x" }], seed: [] },
    ],
    [
      "a changed address or weight is updated; an equal one is left alone",
      [b("x"), b("y"), b("z")],
      [b("x"), b("y", "http://10.0.0.9:1"), b("z", undefined, 5)],
      { upsert: [b("y", "http://10.0.0.9:1"), b("z", undefined, 5)], remove: [], seed: [] },
    ],
    [
      "one being removed here but present there was added again: it comes back",
      [{ ...b("x"), removing: true }],
      [b("x")],
      { upsert: [b("x")], remove: [], seed: [] },
    ],
    [
      "one being removed here and gone there is not removed twice",
      [{ ...b("x"), removing: true }],
      [],
      { upsert: [], remove: [], seed: [] },
    ],
    [
      "a seeded, empty set removes every API backend here",
      [b("x")],
      [],
      { upsert: [], remove: [{ pool: "app", id: "x" }], seed: [] },
    ],
  ];
  test.each(cases)("%s", (_, local, shared, want) => {
    expect(syncShared(local, shared)).toEqual(want);
  });
});
