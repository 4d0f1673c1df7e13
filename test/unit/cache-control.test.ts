import { describe, expect, test } from "bun:test";
import { privateCacheControl } from "../../src/proxy/cache-control.ts";

describe("Cache-Control for a response that sets a session cookie", () => {
  const rows: { why: string; current: string | null; want: string | null }[] = [
    { why: "no Cache-Control becomes private", current: null, want: "private" },
    { why: "an empty list becomes private", current: "", want: "private" },
    { why: "other directives are kept after private", current: "max-age=60", want: "private, max-age=60" },
    { why: "a plain private is left as it is", current: "private, max-age=60", want: null },
    { why: "directive names are case-insensitive", current: "max-age=5, PRIVATE", want: null },
    { why: "no-store is left as it is", current: "no-store", want: null },
    { why: "no-store anywhere in the list counts", current: "max-age=0,no-store", want: null },
    {
      why: "no-cache alone does not keep shared caches out (RFC 9111 §5.2.2.4)",
      current: "no-cache",
      want: "private, no-cache",
    },
    { why: "public goes when private is added", current: "public, max-age=60", want: "private, max-age=60" },
    {
      why: "s-maxage goes when private is added",
      current: "s-maxage=60, max-age=10",
      want: "private, max-age=10",
    },
    {
      why: "public, no-cache, s-maxage and max-age become private, no-cache, max-age",
      current: "public, no-cache, s-maxage=60, max-age=10",
      want: "private, no-cache, max-age=10",
    },
    {
      why: "a field-qualified private is replaced by the plain one",
      current: 'private="x-user", max-age=60',
      want: "private, max-age=60",
    },
    {
      why: "a comma inside a quoted argument does not split the directive",
      current: 'no-cache="set-cookie, x-user", public',
      want: 'private, no-cache="set-cookie, x-user"',
    },
    {
      why: "a name that only starts with private or no-store does not count",
      current: "private-ish, no-store-later",
      want: "private, private-ish, no-store-later",
    },
    { why: "empty list members are dropped", current: ", max-age=5,,", want: "private, max-age=5" },
  ];
  for (const r of rows) test(r.why, () => expect(privateCacheControl(r.current)).toBe(r.want));
});
