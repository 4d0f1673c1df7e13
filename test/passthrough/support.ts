/**
 * Test support for TLS passthrough: certificates, real openssl servers and
 * clients, a recorder that captures the first bytes of a connection, and
 * raw TCP backends.
 */

import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Socket, TCPSocketListener } from "bun";
import { parseClientHello } from "../../src/passthrough/client-hello.ts";

export { makeCert, run } from "../support/certs.ts";

import { run } from "../support/certs.ts";

export interface SServer {
  port: number;
  proc: ReturnType<typeof Bun.spawn>;
  stop(): Promise<void>;
}

/**
 * `openssl s_server -www` on a free port (it prints "ACCEPT host:port" for
 * port 0). Its session cache makes TLS 1.2 session-ID resumption work.
 */
export async function sServer(cert: { cert: string; key: string }, ...args: string[]): Promise<SServer> {
  const proc = Bun.spawn(
    ["openssl", "s_server", "-accept", "127.0.0.1:0", "-cert", cert.cert, "-key", cert.key, "-www", ...args],
    { stdin: "ignore", stdout: "pipe", stderr: "pipe" },
  );
  const reader = (proc.stdout as ReadableStream<Uint8Array>).getReader();
  let text = "";
  const deadline = Date.now() + 5_000;
  while (Date.now() < deadline) {
    const m = /ACCEPT [^\s]*:(\d+)/.exec(text);
    if (m) {
      // Keep draining stdout so the server never blocks on a full pipe.
      (async () => {
        for (;;) if ((await reader.read()).done) break;
      })();
      return {
        port: Number(m[1]),
        proc,
        async stop() {
          proc.kill();
          await proc.exited;
        },
      };
    }
    const { value, done } = await reader.read();
    if (done) break;
    text += new TextDecoder().decode(value);
  }
  proc.kill();
  throw new Error(`openssl s_server did not start: ${text}`);
}

/** Runs `openssl s_client` against 127.0.0.1:port; returns its whole output. */
export async function sClient(port: number, ...args: string[]): Promise<string> {
  const r = await run(["openssl", "s_client", "-connect", `127.0.0.1:${port}`, ...args], "Q\n");
  return r.out;
}

/**
 * `openssl s_client` that sends a request and waits for the answer (-www
 * servers answer and close): long enough for TLS 1.3 session tickets, which
 * arrive after the handshake, to be saved with -sess_out.
 */
export async function sClientGet(port: number, ...args: string[]): Promise<string> {
  const r = await run(
    ["openssl", "s_client", "-connect", `127.0.0.1:${port}`, "-ign_eof", ...args],
    "GET / HTTP/1.0\r\n\r\n",
  );
  return r.out;
}

/** The CN of the peer certificate s_client printed, i.e. which backend answered. */
export function peerCn(out: string): string | null {
  return /subject=\s*CN\s*=\s*([^\s,/]+)/.exec(out)?.[1] ?? null;
}

/**
 * A recorder: a raw Bun.listen that keeps the first bytes of each
 * connection and hangs up after the ClientHello. With `forwardTo`, it pipes
 * both ways to that port instead and records the server's bytes too, so a
 * real handshake completes.
 */
export function recorder(forwardTo?: number): {
  port: number;
  client: Uint8Array[];
  server: Uint8Array[];
  stop(): void;
} {
  const client: Uint8Array[] = [];
  const server: Uint8Array[] = [];
  interface D {
    i: number;
    up: Socket<unknown> | null;
    pending: Uint8Array[];
  }
  const listener: TCPSocketListener<D> = Bun.listen<D>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(s) {
        const i = client.length;
        client.push(new Uint8Array(0));
        server.push(new Uint8Array(0));
        s.data = { i, up: null, pending: [] };
        if (forwardTo === undefined) return;
        Bun.connect({
          hostname: "127.0.0.1",
          port: forwardTo,
          socket: {
            open(u) {
              s.data.up = u;
              for (const p of s.data.pending) u.write(p);
            },
            data(_u, d) {
              server[i] = concat(server[i] as Uint8Array, d);
              s.write(d);
            },
            close() {
              s.end();
            },
          },
        }).catch(() => s.end());
      },
      data(s, d) {
        const i = s.data.i;
        client[i] = concat(client[i] as Uint8Array, d);
        if (forwardTo === undefined) {
          // Recording only: hang up once the ClientHello is in, so the client gives up at once.
          if (parseClientHello(client[i] as Uint8Array).kind !== "incomplete") s.end();
          return;
        }
        if (s.data.up) s.data.up.write(d);
        else s.data.pending.push(d);
      },
      close(s) {
        s.data.up?.end();
      },
    },
  });
  return { port: listener.port, client, server, stop: () => listener.stop(true) };
}

export function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/** A hex fixture: '#' lines are comments, whitespace is ignored. */
export function readHexFixture(name: string): Uint8Array {
  const text = readFileSync(join(import.meta.dir, "fixtures", name), "utf8");
  const hex = text
    .split("\n")
    .filter((l) => !l.startsWith("#"))
    .join("")
    .replace(/\s+/g, "");
  return new Uint8Array(Buffer.from(hex, "hex"));
}

export function hexFixture(comment: string, bytes: Uint8Array): string {
  const hex = Buffer.from(bytes).toString("hex");
  const lines = hex.match(/.{1,64}/g) ?? [];
  return `${comment
    .split("\n")
    .map((l) => `# ${l}`)
    .join("\n")}\n${lines.join("\n")}\n`;
}

/** Re-frames one handshake message (the body of `record`'s first record) into records of `size` payload bytes. */
export function refragment(hello: Uint8Array, size: number): Uint8Array {
  const len = ((hello[3] as number) << 8) | (hello[4] as number);
  const payload = hello.subarray(5, 5 + len);
  const parts: Uint8Array[] = [];
  for (let i = 0; i < payload.length; i += size) {
    const frag = payload.subarray(i, Math.min(payload.length, i + size));
    parts.push(new Uint8Array([22, 3, 1, frag.length >> 8, frag.length & 0xff]), frag);
  }
  return parts.reduce(concat, new Uint8Array(0));
}

/** One side of a raw TCP connection, as a test sees it. */
export interface RawConn {
  socket: Socket<RawConn>;
  chunks: Uint8Array[];
  /** Keep received bytes in `chunks` (off for bulk transfers). */
  keep: boolean;
  bytes: number;
  /** The peer sent FIN. */
  gotFin: boolean;
  closed: boolean;
  /** The error code Bun gave the close (ECONNRESET when the peer reset), else null. */
  closeError: string | null;
  /** Resolves with the time (performance.now()) the connection closed. */
  whenClosed: Promise<number>;
  onData?: (c: RawConn, chunk: Uint8Array) => void;
  onDrain?: (c: RawConn) => void;
  onFin?: (c: RawConn) => void;
  received(): Uint8Array;
  text(): string;
  /** Resolves once at least n bytes have arrived (or rejects after timeoutMs). */
  waitFor(n: number, timeoutMs?: number): Promise<void>;
}

interface Internal extends RawConn {
  wake(): void;
  close(): void;
}

function rawConn(socket: Socket<RawConn>, keep: boolean): Internal {
  let closedAt: (t: number) => void = () => {};
  const waiters = new Set<() => void>();
  const wakeAll = () => {
    for (const w of [...waiters]) w();
  };
  const c: Internal = {
    socket,
    chunks: [],
    keep,
    bytes: 0,
    gotFin: false,
    closed: false,
    closeError: null,
    whenClosed: new Promise((r) => {
      closedAt = r;
    }),
    received: () => c.chunks.reduce(concat, new Uint8Array(0)),
    text: () => new TextDecoder("latin1").decode(c.received()),
    waitFor: (n, timeoutMs = 5000) =>
      new Promise((resolve, reject) => {
        const check = () => {
          if (c.bytes < n && !c.closed) return;
          waiters.delete(check);
          clearTimeout(timer);
          if (c.bytes >= n) resolve();
          else reject(new Error(`closed after ${c.bytes} of ${n} bytes`));
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`timed out after ${c.bytes} of ${n} bytes`));
        }, timeoutMs);
        waiters.add(check);
        check();
      }),
    wake: wakeAll,
    close() {
      c.closed = true;
      closedAt(performance.now());
      wakeAll();
    },
  };
  return c;
}

const rawHandlers = (keep: boolean, onOpen?: (c: RawConn) => void) => ({
  open(s: Socket<RawConn>) {
    s.data = rawConn(s, keep);
    onOpen?.(s.data);
  },
  data(s: Socket<RawConn>, d: Uint8Array) {
    const c = s.data as Internal;
    if (c.keep) c.chunks.push(d);
    c.bytes += d.length;
    c.onData?.(c, d);
    c.wake();
  },
  drain(s: Socket<RawConn>) {
    s.data.onDrain?.(s.data);
  },
  end(s: Socket<RawConn>) {
    s.data.gotFin = true;
    s.data.onFin?.(s.data);
  },
  close(s: Socket<RawConn>, error?: Error) {
    const c = s.data as Internal | undefined;
    if (c && error) c.closeError = (error as { code?: string }).code ?? error.message;
    c?.close();
  },
  error() {},
});

/** A raw TCP server that keeps (unless keep is false) every byte of every connection. */
export function rawServer(
  onOpen?: (c: RawConn) => void,
  keep = true,
): { port: number; conns: RawConn[]; stop(): void } {
  const conns: RawConn[] = [];
  const listener = Bun.listen<RawConn>({
    hostname: "127.0.0.1",
    port: 0,
    allowHalfOpen: true,
    socket: rawHandlers(keep, (c) => {
      conns.push(c);
      onOpen?.(c);
    }),
  });
  return { port: listener.port, conns, stop: () => listener.stop(true) };
}

/** A raw TCP client; `first` is written as soon as it connects. */
export async function rawClient(port: number, first?: Uint8Array, keep = true): Promise<RawConn> {
  let conn: RawConn | null = null;
  await Bun.connect<RawConn>({
    hostname: "127.0.0.1",
    port,
    allowHalfOpen: true,
    socket: rawHandlers(keep, (c) => {
      conn = c;
      if (first) c.socket.write(first);
    }),
  });
  if (!conn) throw new Error("no connection");
  return conn;
}

/** Writes `block` `count` times with backpressure (waiting for drain); resolves when all is handed to the kernel. */
export function pump(c: RawConn, block: Uint8Array, count: number): Promise<void> {
  return new Promise((resolve) => {
    let i = 0;
    let off = 0;
    const step = () => {
      while (i < count) {
        const n = c.socket.write(off === 0 ? block : block.subarray(off));
        if (n < 0) return resolve();
        off += n;
        if (off < block.length) return;
        off = 0;
        i++;
      }
      c.onDrain = undefined;
      resolve();
    };
    c.onDrain = step;
    step();
  });
}
