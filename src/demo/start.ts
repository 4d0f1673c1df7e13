/** Starts the demo backends named in the config's "demo" block. */
import type { Server } from "bun";
import type { ConfigShape } from "../config/schema.ts";
import type { Logger } from "../log.ts";
import { startDemoBackend } from "./backend.ts";

export function startDemo(demo: NonNullable<ConfigShape["demo"]>, log: Logger): { stop(): void } {
  const servers: Server<undefined>[] = [];
  for (const b of demo.backends) {
    servers.push(startDemoBackend(b.id, b.address));
    log.info("demo backend up", { id: b.id, address: b.address });
  }
  return {
    stop() {
      for (const s of servers) s.stop(true);
    },
  };
}
