#!/usr/bin/env bun
import { randomBytes } from "node:crypto";
import pkg from "../package.json" with { type: "json" };
/**
 * tether's command line: parse arguments, load the config, then serve or check.
 * Exit codes: 0 success, 1 runtime failure, 2 bad config or usage.
 */
import { type Command, parseArgs, USAGE, UsageError } from "./cli/args.ts";
import { printBanner } from "./cli/banner.ts";
import { ensureHeaderLimit } from "./cli/header-limit.ts";
import { route } from "./cli/route.ts";
import { type Config, ConfigError, formatProblem, loadConfigFile } from "./config/load.ts";
import { startDemo } from "./demo/start.ts";
import { log } from "./log.ts";
import { generateKey } from "./persistence/token.ts";
import { startTether, type Tether } from "./server/app.ts";
import { startPrimary } from "./workers/primary.ts";

function fail(code: number, message: string): never {
  process.stderr.write(`${message}\n`);
  process.exit(code);
}

function load(file: string): Config {
  try {
    return loadConfigFile(file);
  } catch (e) {
    if (e instanceof ConfigError) {
      fail(
        2,
        `tether: invalid config ${e.source}\n${e.problems.map((p) => `  ${formatProblem(p)}`).join("\n")}`,
      );
    }
    throw e;
  }
}

async function serve(file: string): Promise<void> {
  const config = load(file);
  // Bun's header limit is per process: re-run under the configured limit if it differs.
  const exitCode = await ensureHeaderLimit(config.maxHeaderBytes);
  if (exitCode !== null) process.exit(exitCode);

  // Handlers go in before the first listener logs "listening": Bun installs them
  // asynchronously, and a signal in that gap would otherwise be lost.
  let running: Running | null = null;
  let demo: { stop(): void } | null = null;
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    const graceMs = running?.tether.runtime.config.shutdownGraceMs ?? 0;
    log.info("shutting down", { signal, graceMs });
    await running?.stop(graceMs);
    demo?.stop();
    log.info("stopped");
    process.exit(0);
  };
  const reload = () => {
    if (!running || stopping) return;
    const current = running;
    try {
      const next = loadConfigFile(file);
      current
        .reload(next)
        .then(() => log.info("config reloaded", { file: next.file }))
        .catch((e) => log.error("reload failed; the previous config keeps serving", { error: String(e) }));
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      log.error("reload rejected; the previous config keeps serving", {
        problems: e.problems.map(formatProblem),
      });
    }
  };
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));
  process.on("SIGHUP", reload);
  await Bun.sleep(0);

  demo = config.demo ? startDemo(config.demo, log) : null;
  const workers = config.workers === "auto" ? navigator.hardwareConcurrency : config.workers;
  if (workers > 0) {
    const primary = await startPrimary(config, workers, log, [randomBytes(32)]);
    running = { tether: primary.tether, reload: primary.reload, stop: primary.stop };
    printBanner(primary.tether, config, primary.ports);
  } else {
    const tether = startTether(config, log);
    running = { tether, reload: tether.reload, stop: tether.stop };
    printBanner(tether, config);
  }
}

/** What serve() drives: one thread, or a primary with workers. */
interface Running {
  tether: Tether;
  reload(next: Config): Promise<void>;
  stop(graceMs: number): Promise<void>;
}

async function run(cmd: Command): Promise<void> {
  switch (cmd.kind) {
    case "help":
      process.stdout.write(`${USAGE}\n`);
      return;
    case "version":
      process.stdout.write(`tether ${pkg.version} (bun ${Bun.version})\n`);
      return;
    case "check":
      load(cmd.config);
      process.stdout.write(`${cmd.config}: ok\n`);
      return;
    case "keygen":
      process.stdout.write(`${generateKey()}\n`);
      return;
    case "route": {
      const { kind: _k, config, ...query } = cmd;
      process.stdout.write(`${JSON.stringify(route(load(config), query))}\n`);
      return;
    }
    case "serve":
      return serve(cmd.config);
  }
}

let cmd: Command;
try {
  cmd = parseArgs(process.argv.slice(2));
} catch (e) {
  if (e instanceof UsageError) fail(2, `tether: ${e.message}\n\n${USAGE}`);
  throw e;
}
run(cmd).catch((e) => {
  log.error("fatal", { error: e instanceof Error ? e.message : String(e) });
  process.exit(1);
});
