/**
 * The layers of src/ (docs/design.md, "Layers"): a lower folder never imports
 * an upper one. Shapes the lower layers need from above are interfaces in
 * src/contracts.ts, which the upper layers fill in.
 */
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { REPO } from "../support/files.ts";

const SRC = join(REPO, "src");

/** Folder → folders (or files, relative to src/) it must not import. */
const FORBIDDEN: Record<string, string[]> = {
  config: [
    "ring",
    "persistence",
    "pool",
    "proxy",
    "passthrough",
    "state",
    "server",
    "admin",
    "workers",
    "cli",
  ],
  ring: ["persistence", "pool", "proxy", "passthrough", "state", "server", "admin", "workers", "cli"],
  persistence: ["pool", "proxy", "passthrough", "state", "server", "admin", "workers", "cli"],
  pool: [
    "passthrough",
    "state",
    "server",
    "admin",
    "workers",
    "cli",
    "proxy/forward.ts",
    "proxy/upstream/client.ts",
  ],
  proxy: ["passthrough", "state", "server", "admin", "workers", "cli"],
  passthrough: ["state", "server", "admin", "workers", "cli", "proxy/forward.ts", "proxy/websocket.ts"],
  state: ["server", "admin", "workers", "cli"],
  discovery: ["pool", "proxy", "passthrough", "state", "server", "admin", "workers", "cli"],
};

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return sources(p);
    return e.name.endsWith(".ts") ? [p] : [];
  });
}

/** Every relative import of a file, as a path relative to src/. */
function importsOf(file: string): string[] {
  const text = readFileSync(file, "utf8");
  const out: string[] = [];
  for (const m of text.matchAll(/(?:import|export)[^"';]*?from\s+"(\.[^"]+)"/g))
    out.push(relative(SRC, join(dirname(file), m[1] as string)));
  return out;
}

describe("layers", () => {
  for (const [folder, forbidden] of Object.entries(FORBIDDEN)) {
    test(`src/${folder} imports nothing from ${forbidden.join(", ")}`, () => {
      const violations: string[] = [];
      for (const file of sources(join(SRC, folder))) {
        for (const target of importsOf(file)) {
          if (forbidden.some((f) => target === f || target.startsWith(`${f}/`)))
            violations.push(`${relative(SRC, file)} → ${target}`);
        }
      }
      expect(violations).toEqual([]);
    });
  }

  test("src/contracts.ts holds interfaces only (type imports)", () => {
    const text = readFileSync(join(SRC, "contracts.ts"), "utf8");
    expect(text.match(/^import (?!type )/gm) ?? []).toEqual([]);
  });
});
