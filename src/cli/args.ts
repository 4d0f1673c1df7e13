/**
 * Command-line parsing. Pure: argv in, a command out (or a usage error).
 */
export interface RouteQuery {
  /** The pool to ask; empty when a listener's routes choose it. */
  pool: string;
  /** The listener whose routes (and traffic splits) choose the pool. */
  listener?: string;
  host?: string;
  cookies: string[];
  ip?: string;
  path?: string;
  headers: string[];
}

export type Command =
  | { kind: "serve"; config: string }
  | { kind: "check"; config: string }
  | ({ kind: "route"; config: string } & RouteQuery)
  | { kind: "keygen" }
  | { kind: "help" }
  | { kind: "version" };

export class UsageError extends Error {}

export const USAGE = `tether: a load-balancing reverse proxy with session persistence

Usage:
  tether [--config FILE]          serve (default config: ./config.json)
  tether check [--config FILE]    validate a config; print every problem and exit 2 if any
  tether route [--config FILE] (--pool P | --listener L [--host H]) [--cookie 'N=V'] [--ip A]
               [--path '/p?sid=x'] [--header 'N: V']
                                  print where such a request would go and why (JSON); with
                                  --listener, through its routes and traffic splits
  tether keygen                   print a new cookie key (base64 of 32 random bytes)
  tether --version                print the version
  tether --help                   print this help

Exit codes: 0 success, 1 runtime failure, 2 bad config or usage.
Signals: SIGTERM/SIGINT stop gracefully; SIGHUP reloads the config.`;

const ROUTE_OPTIONS = ["--pool", "--listener", "--host", "--cookie", "--ip", "--path", "--header"] as const;

export function parseArgs(argv: readonly string[]): Command {
  let config = "config.json";
  let sub: "serve" | "check" | "route" | "keygen" | null = null;
  const route: RouteQuery = { pool: "", cookies: [], headers: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    const [flag, inline] =
      arg.startsWith("--") && arg.includes("=")
        ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)]
        : [arg, undefined];
    const value = () => {
      const v = inline ?? argv[++i];
      if (v === undefined || v === "") throw new UsageError(`${flag} needs a value`);
      return v;
    };
    if (flag === "--help" || flag === "-h") return { kind: "help" };
    if (flag === "--version" || flag === "-v") return { kind: "version" };
    if (flag === "--config" || flag === "-c") config = value();
    else if ((ROUTE_OPTIONS as readonly string[]).includes(flag)) {
      if (sub !== "route") throw new UsageError(`${flag} belongs to "tether route"`);
      const v = value();
      if (flag === "--pool") route.pool = v;
      else if (flag === "--listener") route.listener = v;
      else if (flag === "--host") route.host = v;
      else if (flag === "--cookie") route.cookies.push(v);
      else if (flag === "--header") route.headers.push(v);
      else if (flag === "--ip") route.ip = v;
      else route.path = v;
    } else if (arg === "check" || arg === "serve" || arg === "route" || arg === "keygen") {
      if (sub) throw new UsageError(`unexpected argument "${arg}"`);
      sub = arg;
    } else {
      throw new UsageError(`unknown argument "${arg}"`);
    }
  }
  if (sub === "keygen") return { kind: "keygen" };
  if (sub === "route") {
    if (!route.pool === (route.listener === undefined))
      throw new UsageError("tether route needs --pool or --listener (one of them)");
    return { kind: "route", config, ...route };
  }
  return { kind: sub ?? "serve", config };
}
