/**
 * A backend in its own process, so a test can kill it for real (SIGKILL) or
 * freeze it (SIGSTOP: the kernel still accepts connections, nobody answers).
 * Used by the fault tests and by bench/soak.ts.
 *
 *   bun test/faults/backend-proc.ts NAME [PORT]
 *
 * Prints one line {"ready":true,"name":NAME,"port":N} once it listens. Every
 * request gets 200 with its name as the body and in X-Backend, and the path
 * it received in X-Path (so a client can tell its request from another's); `?delay=MS`
 * answers after MS milliseconds (at most 10 s); `?bytes=N` pads the body to N
 * bytes (at most 1 MiB).
 */

const [name = "backend", portArg = "0"] = process.argv.slice(2);

const server = Bun.serve({
  hostname: "127.0.0.1",
  port: Number(portArg),
  idleTimeout: 120,
  async fetch(req) {
    const url = new URL(req.url);
    const q = url.searchParams;
    const delay = Math.min(10_000, Number(q.get("delay") ?? 0) || 0);
    if (delay > 0) await Bun.sleep(delay);
    if (req.body) await req.arrayBuffer();
    const bytes = Math.min(1 << 20, Number(q.get("bytes") ?? 0) || 0);
    const body = bytes > name.length ? name.padEnd(bytes, ".") : name;
    return new Response(body, {
      headers: { "x-backend": name, "x-path": url.pathname, "content-type": "text/plain" },
    });
  },
});

console.log(JSON.stringify({ ready: true, name, port: server.port }));
process.on("SIGTERM", () => {
  server.stop(true);
  process.exit(0);
});
