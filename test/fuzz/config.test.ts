/**
 * Random mutations of a valid config, as an object (resolveConfig) and as
 * JSON text on disk (loadConfigFile): the loader returns a Config or throws
 * a ConfigError whose problems each name a well-formed JSON path, and never
 * throws anything else (a SIGHUP reload or `tether check` would crash on it).
 */
import { expect, test } from "bun:test";
import { resolveConfig } from "../../src/config/load.ts";
import { REPO } from "../support/files.ts";
import { baseConfig, configProperty } from "./properties.ts";

test("the base config used for mutations is valid", () => {
  expect(() => resolveConfig(baseConfig(REPO), { baseDir: REPO, env: {} })).not.toThrow();
});

test("config mutations: a Config or a ConfigError with path-named problems, never anything else", async () => {
  const p = configProperty(REPO);
  await p.run(p.runs);
});
