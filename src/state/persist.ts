/**
 * Snapshot lifecycle for a running tether: load at start (synchronously,
 * before any listener serves), save every intervalMs and once more on stop.
 * Saves run in slices that yield to the event loop (snapshot-save.ts), so
 * they can outlast a tick: one save at a time, a tick that finds one running
 * is skipped.
 */
import type { Config } from "../config/load.ts";
import type { Member } from "../config/members.ts";
import type { Runtime } from "../contracts.ts";
import type { Logger } from "../log.ts";
import { type OperatorState, parseState, validUntil } from "../pool/drain.ts";
import { applySnapshot, readSnapshot } from "./snapshot.ts";
import { saveSnapshot } from "./snapshot-save.ts";

export interface Snapshots {
  /** True when the snapshot restored operator states (the runtime must be rebuilt to apply them). */
  loadedStates: boolean;
  /** Stops the timer and resolves once a final save (after any save in progress) is on disk. */
  stop(): Promise<void>;
}

export function startSnapshots(
  config: Config,
  current: () => Runtime,
  operatorStates: Map<string, OperatorState>,
  log: Logger,
  /** Backends added through the admin API, restored before the entries that may name them. */
  restoreBackends: (members: Member[]) => number = () => 0,
): Snapshots {
  const file = config.snapshotFile;
  if (!file) return { loadedStates: false, async stop() {} };
  const { snapshot, problem } = readSnapshot(file);
  let loadedStates = false;
  if (problem) log.warn("snapshot ignored", { file, problem });
  if (snapshot) {
    const backends = restoreBackends(
      (snapshot.backends ?? []).map((b) => ({ ...b, source: b.source === "dns" ? "dns" : "api" })),
    );
    if (backends) log.info("backends restored from the snapshot", { file, backends });
    for (const s of snapshot.states) {
      const state = parseState(s.state);
      if (state && current().pools.get(s.pool)?.get(s.backend)) {
        if (state.state === "drain") state.until = validUntil(s.until);
        operatorStates.set(`${s.pool}\0${s.backend}`, state);
        loadedStates = true;
      }
    }
    const entries = applySnapshot(current(), snapshot);
    log.info("snapshot loaded", { file, entries, states: snapshot.states.length });
  }
  const write = async () => {
    try {
      const started = performance.now();
      const r = await saveSnapshot(file, current(), operatorStates);
      log.debug("snapshot written", { file, ms: Math.round(performance.now() - started), ...r });
    } catch (e) {
      log.error("snapshot not written", { file, error: (e as Error).message });
    }
  };
  let saving: Promise<void> | null = null;
  const save = (): Promise<void> => {
    saving ??= write().finally(() => {
      saving = null;
    });
    return saving;
  };
  const intervalMs = config.snapshot ? config.snapshot.intervalMs : 30_000;
  const timer = setInterval(save, intervalMs);
  return {
    loadedStates,
    async stop() {
      clearInterval(timer);
      // The save in progress may have read the tables before the last changes.
      await saving;
      await save();
    },
  };
}
