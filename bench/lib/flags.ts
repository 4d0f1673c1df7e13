/** Command-line flag reading shared by the benchmark scripts. */

export type FlagKind = "int" | "string" | "peers";

/**
 * Splits argv into --quick, --help and `--flag value` / `--flag=value` pairs,
 * refusing flags the script does not know.
 */
export function readFlags(
  argv: readonly string[],
  known: (flag: string) => boolean,
): { quick: boolean; help: boolean; values: [string, string][] } {
  const out = { quick: false, help: false, values: [] as [string, string][] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (arg === "--quick") out.quick = true;
    else if (arg === "--help" || arg === "-h") out.help = true;
    else {
      const eq = arg.indexOf("=");
      const flag = eq > 0 ? arg.slice(0, eq) : arg;
      if (!known(flag)) throw new Error(`unknown option ${arg} (try --help)`);
      const raw = eq > 0 ? arg.slice(eq + 1) : argv[++i];
      if (raw === undefined) throw new Error(`${flag} needs a value`);
      out.values.push([flag, raw]);
    }
  }
  return out;
}

/** A flag's value by kind: an integer >= min, a non-empty string, or a comma list of known peers. */
export function parseFlagValue<P extends string>(
  flag: string,
  kind: FlagKind,
  min: number,
  raw: string,
  peers: readonly P[],
): number | string | P[] {
  if (kind === "string") {
    if (raw === "") throw new Error(`${flag} needs a value`);
    return raw;
  }
  if (kind === "peers") {
    const names = raw
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean);
    for (const n of names)
      if (!(peers as readonly string[]).includes(n)) throw new Error(`${flag}: unknown peer "${n}"`);
    if (names.length === 0) throw new Error(`${flag} needs at least one peer`);
    return names as P[];
  }
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) throw new Error(`${flag} must be an integer >= ${min}`);
  return n;
}
