/**
 * Demo backends for the shipped config. Each one keeps a visit counter per
 * browser session in its own memory only, so the counter survives reloads
 * exactly when tether keeps the session on the same backend, and starts again
 * at 1 when it does not. Not for production.
 */
import type { Server } from "bun";
import { splitAddress } from "../config/load.ts";

const SESSION_COOKIE = "demo_session";

function sessionFrom(req: Request): string | null {
  const cookie = req.headers.get("cookie") ?? "";
  for (const part of cookie.split(";")) {
    const [k, v] = part.trim().split("=");
    if (k === SESSION_COOKIE && v && /^[0-9a-f-]{36}$/.test(v)) return v;
  }
  return null;
}

function page(id: string, visits: number, sticky: boolean): string {
  const note = sticky
    ? "Reload: the counter goes up while your session stays on this backend."
    : "A new session started here. Reload to see whether it sticks.";
  return `<!doctype html><meta charset="utf-8"><title>tether demo: ${id}</title>
<style>body{font:18px system-ui,sans-serif;max-width:36em;margin:4em auto;color:#222}b{font-size:2em}</style>
<h1>Served by <code>${id}</code></h1>
<p>Visits in this session on this backend: <b id="visits">${visits}</b></p>
<p>${note}</p>
<p>The counter lives only in ${id}'s memory. If the session moved to another backend, it would start at 1 again.</p>`;
}

export function startDemoBackend(id: string, address: string): Server<undefined> {
  const visits = new Map<string, number>();
  const { hostname, port } = splitAddress(address);
  return Bun.serve({
    hostname,
    port,
    fetch(req) {
      // A browser asks for its icon on every load: counting it would show each reload as two visits.
      if (new URL(req.url).pathname === "/favicon.ico") return new Response(null, { status: 404 });
      const known = sessionFrom(req);
      const session = known ?? crypto.randomUUID();
      const count = (visits.get(session) ?? 0) + 1;
      // Bounded: a demo must not grow without limit under a load test.
      if (visits.size > 100_000) visits.clear();
      visits.set(session, count);
      const headers = new Headers({ "x-demo-backend": id, "cache-control": "no-store" });
      if (!known)
        headers.append("set-cookie", `${SESSION_COOKIE}=${session}; Path=/; HttpOnly; SameSite=Lax`);
      const wantsHtml = (req.headers.get("accept") ?? "").includes("text/html");
      if (wantsHtml) {
        headers.set("content-type", "text/html; charset=utf-8");
        return new Response(page(id, count, count > 1), { headers });
      }
      headers.set("content-type", "application/json");
      return new Response(`${JSON.stringify({ backend: id, visits: count })}\n`, { headers });
    },
  });
}
