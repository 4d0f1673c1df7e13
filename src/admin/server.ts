/**
 * The admin listener: separate from traffic listeners, loopback by default.
 */
import type { Server } from "bun";
import type { Logger } from "../log.ts";
import { type AdminContext, handleAdmin } from "./api.ts";

export function startAdmin(
  address: { hostname: string; port: number },
  ctx: AdminContext,
  log: Logger,
): Server<undefined> {
  const server = Bun.serve({
    hostname: address.hostname,
    port: address.port,
    // Admin bodies are tiny JSON documents.
    maxRequestBodySize: 64 * 1024,
    fetch: (req) => handleAdmin(req, ctx),
    error(err) {
      log.error("admin request failed", { error: String(err) });
      return new Response("Internal error.\n", { status: 500 });
    },
  });
  // Metrics are served here: load prom-client now rather than on the first scrape.
  ctx.metrics.load().catch((e) => log.error("metrics unavailable", { error: String(e) }));
  log.info("listening", { name: "admin", protocol: "http", address: server.hostname, port: server.port });
  return server;
}
