/** Loopback-only helpers: free ports, readiness, and a quick stickiness check. */
import { type Child, isRunning, sleep } from "./procs.ts";

export const HOST = "127.0.0.1";

/** A port the OS considers free right now (bound on port 0, then released). */
export function freePort(): number {
  const s = Bun.listen({ hostname: HOST, port: 0, socket: { data() {} } });
  const port = s.port;
  s.stop(true);
  return port;
}

/**
 * One GET / on a new connection. `tls`: https, trusting any certificate (the
 * bench's own self-signed one); fetch speaks HTTP/1.1 to it, which every peer
 * of the h2 mode also serves on the same port.
 */
async function get(
  port: number,
  cookie?: string,
  tls = false,
): Promise<{ status: number; body: string; setCookie: string }> {
  const headers: Record<string, string> = { connection: "close" };
  if (cookie) headers.cookie = cookie;
  const res = await fetch(`${tls ? "https" : "http"}://${HOST}:${port}/`, {
    headers,
    signal: AbortSignal.timeout(2000),
    ...(tls ? { tls: { rejectUnauthorized: false } } : {}),
  });
  return { status: res.status, body: await res.text(), setCookie: res.headers.get("set-cookie") ?? "" };
}

export type Readiness = { ready: true } | { ready: false; exitCode: number | null; reason: string };

/**
 * Waits until GET / through the proxy answers 200 (so its backends are
 * reachable too), the process exits, or `timeoutMs` passes.
 */
export async function waitReady(
  port: number,
  child: Child | null,
  timeoutMs: number,
  tls = false,
): Promise<Readiness> {
  const deadline = Date.now() + timeoutMs;
  let last = "no answer";
  while (Date.now() < deadline) {
    if (child && !isRunning(child)) {
      return { ready: false, exitCode: child.proc.exitCode, reason: `exited with ${child.proc.exitCode}` };
    }
    try {
      const r = await get(port, undefined, tls);
      if (r.status === 200) return { ready: true };
      last = `HTTP ${r.status}`;
    } catch (e) {
      last = (e as Error).message;
    }
    await sleep(100);
  }
  return { ready: false, exitCode: null, reason: `not ready after ${timeoutMs} ms (${last})` };
}

/** Which backend answered, from the backend body "hello from app-K...". */
const backendOf = (body: string) => /hello from (\S+?)\.*\n?$/.exec(body)?.[1] ?? body.slice(0, 24);

/**
 * A returning client's view: take the cookie from the first answer (or make
 * one, for a proxy that sets none), send it `n` more times and check that one
 * backend answered them all. Done for several clients so a round-robin proxy
 * cannot pass by luck.
 */
export async function checkSticky(port: number, clients = 4, n = 5, tls = false): Promise<boolean> {
  for (let c = 0; c < clients; c++) {
    const first = await get(port, undefined, tls);
    const inserted = first.setCookie.split(";")[0];
    const cookie = inserted || `SRVID=probe-${c}`;
    // With an inserted cookie the first answer's backend is the one the cookie must name.
    const seen = new Set<string>(inserted ? [backendOf(first.body)] : []);
    for (let i = 0; i < n; i++) seen.add(backendOf((await get(port, cookie, tls)).body));
    if (seen.size !== 1) return false;
  }
  return true;
}

/**
 * A returning client's cookie for a load tool that sends one fixed header
 * (h2load -H): the name=value of the Set-Cookie the proxy issued to a first,
 * cookie-less request, or `SRVID=h2-client` for a proxy that issues none
 * (nginx OSS hashes it). `backend` is the backend that answered a request
 * presenting the cookie: where every later request should go.
 */
export async function returningCookie(
  port: number,
  tls = false,
): Promise<{ cookie: string; issued: boolean; backend: string }> {
  const first = await get(port, undefined, tls);
  const inserted = first.setCookie.split(";")[0] ?? "";
  const cookie = inserted || "SRVID=h2-client";
  const backend = backendOf((await get(port, cookie, tls)).body);
  return { cookie, issued: inserted !== "", backend };
}
