/**
 * Hostile input through a running tether (properties in ./properties.ts):
 * cookie tokens, URL session IDs, header values and admin API bodies. For
 * every generated input: no 5xx, no hang, the documented answer, and no
 * unhandled rejection, uncaught exception or warning anywhere in tether.
 * scripts/fuzz-long.ts runs the same properties with 100k+ cases each.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import {
  adminProperty,
  cookieProperty,
  type FuzzProperty,
  headerProperty,
  issueTokens,
  urlProperty,
} from "./properties.ts";
import { type FuzzEnv, startFuzzEnv, watchProcess } from "./support.ts";

let env: FuzzEnv;
let watch: ReturnType<typeof watchProcess>;

beforeAll(() => {
  watch = watchProcess();
  env = startFuzzEnv();
});

afterAll(async () => {
  await env?.stop();
  watch?.stop();
});

const run = async (p: FuzzProperty) => {
  await p.run(p.runs);
  expect(watch.rejections).toEqual([]);
  expect(watch.exceptions).toEqual([]);
  expect(env.problems).toEqual([]);
};

test("cookie tokens: random and mutated TETHER cookies never give a 5xx; invalid ones get a fresh cookie", async () => {
  await run(cookieProperty(env, await issueTokens(env)));
});

test("URL session IDs: random, unicode, percent-encoded and huge IDs never give a 5xx and stick", async () => {
  await run(urlProperty(env));
});

test("header values: X-Forwarded-For garbage from a trusted peer and header-rule values never give a 5xx", async () => {
  await run(headerProperty(env));
});

test("admin API: random bodies and paths for PUT /api/backends/... get 200 or 4xx, never 5xx", async () => {
  await run(adminProperty(env));
});
