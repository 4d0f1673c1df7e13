/**
 * Fast benchmark backends: N Bun.serve servers in this one process, each
 * answering every request with a fixed small body ("hello from app-K",
 * padded to --body-bytes). Ports are chosen by the OS (port 0) so nothing
 * races for them; the chosen ports are printed as one JSON line on stdout:
 *   {"ready":true,"ports":[40001,40002,40003],"countPort":40004}
 *
 * Each backend counts the requests it answered; GET / on countPort answers
 * {"app-1":N,...}. The count has a server of its own so that the answering
 * handler does no more than add one (no URL to look at).
 *
 * usage: bun bench/backend.ts --count 3 --body-bytes 64
 */

function flag(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  const v = i >= 0 ? Number(process.argv[i + 1]) : fallback;
  if (!Number.isInteger(v) || v < 1) throw new Error(`${name} must be a positive integer`);
  return v;
}

/** "hello from app-1" padded with '.' to `size` bytes and ending in a newline. */
export function bodyFor(id: string, size: number): string {
  const text = `hello from ${id}`;
  return text.length + 1 >= size ? `${text}\n` : `${text.padEnd(size - 1, ".")}\n`;
}

const counts: Record<string, number> = {};

function serve(id: string, size: number) {
  const body = bodyFor(id, size);
  const headers = { "content-type": "text/plain" };
  counts[id] = 0;
  return Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    // Proxies keep idle upstream connections between warm-up and the measured run.
    idleTimeout: 120,
    fetch: () => {
      counts[id] = (counts[id] as number) + 1;
      return new Response(body, { headers });
    },
  });
}

if (import.meta.main) {
  const count = flag("--count", 3);
  const size = flag("--body-bytes", 64);
  const servers = Array.from({ length: count }, (_, i) => serve(`app-${i + 1}`, size));
  const counter = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => Response.json(counts) });
  console.log(JSON.stringify({ ready: true, ports: servers.map((s) => s.port), countPort: counter.port }));
  const stop = () => {
    for (const s of [...servers, counter]) s.stop(true);
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}
