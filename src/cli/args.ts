/**
 * Command-line parsing. Pure: argv in, a command out (or a usage error).
 */
export type Command =
  | { kind: "serve"; config: string }
  | { kind: "check"; config: string }
  | { kind: "help" }
  | { kind: "version" };

export class UsageError extends Error {}

export const USAGE = `tether: a load-balancing reverse proxy with session persistence

Usage:
  tether [--config FILE]          serve (default config: ./config.json)
  tether check [--config FILE]    validate a config; print every problem and exit 2 if any
  tether --version                print the version
  tether --help                   print this help

Exit codes: 0 success, 1 runtime failure, 2 bad config or usage.
Signals: SIGTERM/SIGINT stop gracefully; SIGHUP reloads the config.`;

export function parseArgs(argv: readonly string[]): Command {
  let config = "config.json";
  let sub: "serve" | "check" | null = null;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (arg === "--help" || arg === "-h") return { kind: "help" };
    if (arg === "--version" || arg === "-v") return { kind: "version" };
    if (arg === "--config" || arg === "-c") {
      const value = argv[++i];
      if (value === undefined || value === "") throw new UsageError(`${arg} needs a file name`);
      config = value;
    } else if (arg.startsWith("--config=")) {
      config = arg.slice("--config=".length);
      if (!config) throw new UsageError("--config= needs a file name");
    } else if (arg === "check" || arg === "serve") {
      if (sub) throw new UsageError(`unexpected argument "${arg}"`);
      sub = arg;
    } else {
      throw new UsageError(`unknown argument "${arg}"`);
    }
  }
  return { kind: sub ?? "serve", config };
}
