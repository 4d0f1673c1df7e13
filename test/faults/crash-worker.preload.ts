/**
 * Preloaded into the real CLI by worker-crash.test.ts (`bun --preload THIS
 * src/main.ts ...`); nothing in src knows about it. A worker thread cannot be
 * crashed from outside the process (every signal is process-wide), so this
 * keeps a handle on each Worker the primary creates and, on SIGUSR2, makes
 * worker slot 0 crash for real: it posts the worker a message in the
 * primary's own format whose handling throws inside the worker (a learn
 * batch that is not a list), an uncaught error that ends the thread the way
 * any bug in it would. The primary is left to notice and respawn it.
 *
 * Bun runs preloads in the main thread only.
 */
import { encode } from "../../src/workers/messages.ts";

const created: Worker[] = [];
const Original = globalThis.Worker;
class TrackedWorker extends Original {
  constructor(...args: ConstructorParameters<typeof Worker>) {
    super(...args);
    created.push(this);
  }
}
globalThis.Worker = TrackedWorker as typeof Worker;

process.on("SIGUSR2", () => {
  // The primary spawns slot 0 first; a respawned slot 0 is pushed later.
  const target = created[0];
  process.stdout.write(
    `${JSON.stringify({ time: new Date().toISOString(), msg: "test: crashing worker 0" })}\n`,
  );
  const malformed = { v: 1, t: "learn", e: null } as unknown as Parameters<typeof encode>[0];
  target?.postMessage(encode(malformed));
});
