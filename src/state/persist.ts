/**
 * Snapshot lifecycle for a running tether: load at start, save every
 * intervalMs and once more on stop.
 */
import type { Config } from "../config/load.ts";
import type { BackendState } from "../config/schema.ts";
import type { Runtime } from "../contracts.ts";
import type { Logger } from "../log.ts";
import { applySnapshot, collectSnapshot, readSnapshot, writeSnapshot } from "./snapshot.ts";

export interface Snapshots {
  /** True when the snapshot restored operator states (the runtime must be rebuilt to apply them). */
  loadedStates: boolean;
  stop(): void;
}

export function startSnapshots(
  config: Config,
  current: () => Runtime,
  operatorStates: Map<string, BackendState>,
  log: Logger,
): Snapshots {
  const file = config.snapshotFile;
  if (!file) return { loadedStates: false, stop() {} };
  const { snapshot, problem } = readSnapshot(file);
  let loadedStates = false;
  if (problem) log.warn("snapshot ignored", { file, problem });
  if (snapshot) {
    for (const s of snapshot.states) {
      if (current().pools.get(s.pool)?.get(s.backend)) {
        operatorStates.set(`${s.pool}\0${s.backend}`, s.state);
        loadedStates = true;
      }
    }
    const entries = applySnapshot(current(), snapshot);
    log.info("snapshot loaded", { file, entries, states: snapshot.states.length });
  }
  const save = () => {
    try {
      writeSnapshot(file, collectSnapshot(current(), operatorStates));
    } catch (e) {
      log.error("snapshot not written", { file, error: (e as Error).message });
    }
  };
  const intervalMs = config.snapshot ? config.snapshot.intervalMs : 30_000;
  const timer = setInterval(save, intervalMs);
  return {
    loadedStates,
    stop() {
      clearInterval(timer);
      save();
    },
  };
}
