/**
 * Bun reads its request-header limit once per process, from
 * --max-http-header-size (or BUN_OPTIONS); a per-server option is ignored.
 * So when the config asks for another limit, tether runs itself again with
 * the flag and passes signals through to the child.
 */
const BUN_DEFAULT_HEADER_BYTES = 16 * 1024;
const FLAG = "--max-http-header-size=";

export function currentHeaderLimit(execArgv: readonly string[] = process.execArgv): number {
  for (const arg of execArgv) {
    if (arg.startsWith(FLAG)) return Number(arg.slice(FLAG.length));
  }
  return BUN_DEFAULT_HEADER_BYTES;
}

/** True when running as a `bun build --compile` binary (the entry point lives in Bun's virtual FS). */
export const isCompiled = () => Bun.main.startsWith("/$bunfs/") || Bun.main.includes("~BUN");

/**
 * Returns null when this process already has the wanted limit; otherwise runs
 * a child process with it and resolves to the child's exit code.
 */
export async function ensureHeaderLimit(wanted: number): Promise<number | null> {
  if (currentHeaderLimit() === wanted) return null;
  const args = process.argv.slice(2);
  const cmd = isCompiled() ? [process.execPath, ...args] : [process.execPath, Bun.main, ...args];
  const bunOptions = [process.env.BUN_OPTIONS ?? "", `${FLAG}${wanted}`].join(" ").trim();
  const child = Bun.spawn(cmd, {
    env: { ...process.env, BUN_OPTIONS: bunOptions },
    stdio: ["inherit", "inherit", "inherit"],
  });
  for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"] as const) {
    process.on(signal, () => child.kill(signal));
  }
  return await child.exited;
}
