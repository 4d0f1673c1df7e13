import { describe, expect, test } from "bun:test";
import { createRouter, hostWithoutPort } from "../../src/server/routes.ts";

describe("routes", () => {
  const router = createRouter(
    [
      { host: "api.example.com", pathPrefix: "/v1/", pool: "api-v1" },
      { host: "api.example.com", pool: "api" },
      { host: "*.static.example", pool: "static" },
      { pathPrefix: "/admin/", pool: "admin" },
    ],
    "web",
  );
  const rows: { why: string; host: string | null; path: string; want: string }[] = [
    { why: "host and prefix both match", host: "api.example.com", path: "/v1/users", want: "api-v1" },
    { why: "first match wins over later ones", host: "API.example.com:443", path: "/v2/", want: "api" },
    { why: "wildcard matches a subdomain", host: "img.static.example", path: "/", want: "static" },
    { why: "wildcard does not match the bare domain", host: "static.example", path: "/", want: "web" },
    { why: "path-only route", host: "other", path: "/admin/x", want: "admin" },
    { why: "no match falls back to the listener's pool", host: "other", path: "/", want: "web" },
    { why: "no Host header falls back", host: null, path: "/", want: "web" },
  ];
  for (const r of rows) test(r.why, () => expect(router.pick(r.host, r.path)).toBe(r.want));

  test("hostWithoutPort strips ports, brackets IPv6 and a trailing dot", () => {
    expect(hostWithoutPort("Example.com:8080")).toBe("example.com");
    expect(hostWithoutPort("[::1]:80")).toBe("[::1]");
    expect(hostWithoutPort("example.com.")).toBe("example.com");
  });
});
