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

async function get(
  port: number,
  cookie?: string,
): Promise<{ status: number; body: string; setCookie: string }> {
  const headers: Record<string, string> = { connection: "close" };
  if (cookie) headers.cookie = cookie;
  const res = await fetch(`http://${HOST}:${port}/`, { headers, signal: AbortSignal.timeout(2000) });
  return { status: res.status, body: await res.text(), setCookie: res.headers.get("set-cookie") ?? "" };
}

export type Readiness = { ready: true } | { ready: false; exitCode: number | null; reason: string };

/**
 * Waits until GET / through the proxy answers 200 (so its backends are
 * reachable too), the process exits, or `timeoutMs` passes.
 */
export async function waitReady(port: number, child: Child | null, timeoutMs: number): Promise<Readiness> {
  const deadline = Date.now() + timeoutMs;
  let last = "no answer";
  while (Date.now() < deadline) {
    if (child && !isRunning(child)) {
      return { ready: false, exitCode: child.proc.exitCode, reason: `exited with ${child.proc.exitCode}` };
    }
    try {
      const r = await get(port);
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
export async function checkSticky(port: number, clients = 4, n = 5): Promise<boolean> {
  for (let c = 0; c < clients; c++) {
    const first = await get(port);
    const inserted = first.setCookie.split(";")[0];
    const cookie = inserted || `SRVID=probe-${c}`;
    // With an inserted cookie the first answer's backend is the one the cookie must name.
    const seen = new Set<string>(inserted ? [backendOf(first.body)] : []);
    for (let i = 0; i < n; i++) seen.add(backendOf((await get(port, cookie)).body));
    if (seen.size !== 1) return false;
  }
  return true;
}
