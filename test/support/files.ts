/** Test support: paths and temporary files. */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const REPO = join(import.meta.dir, "..", "..");
export const BUN = process.execPath;

export function tempDir(prefix = "tether-test-"): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function writeConfig(dir: string, input: unknown, name = "config.json"): string {
  const file = join(dir, name);
  writeFileSync(file, JSON.stringify(input, null, 2));
  return file;
}
