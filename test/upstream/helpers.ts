/**
 * Test fixtures for the upstream client: raw TCP backends that write exact
 * bytes, a blackholed port, a self-signed certificate.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Socket } from "bun";
import type { RequestOptions, UpstreamRequest, UpstreamTarget } from "../../src/proxy/upstream/types.ts";
import { makeCert } from "../support/certs.ts";

export const OPTS: RequestOptions = { connectTimeoutMs: 2000, responseTimeoutMs: 5000 };

export function target(port: number | undefined, tls?: UpstreamTarget["tls"]): UpstreamTarget {
  if (port === undefined) throw new Error("server has no port");
  return { key: `${tls ? "https" : "http"}://127.0.0.1:${port}`, hostname: "127.0.0.1", port, tls };
}

export function get(path = "/", headers: [string, string][] = [["Host", "backend"]]): UpstreamRequest {
  return { method: "GET", target: path, fields: headers.flat(), body: null, bodyLength: null };
}

export async function readAll(body: ReadableStream<Uint8Array> | Uint8Array | null): Promise<Uint8Array> {
  if (body === null) return new Uint8Array(0);
  if (body instanceof Uint8Array) return body;
  return new Uint8Array(await new Response(body).arrayBuffer());
}

export async function text(body: ReadableStream<Uint8Array> | Uint8Array | null): Promise<string> {
  return new TextDecoder().decode(await readAll(body));
}

/** One request as a raw backend saw it. */
export interface RawRequest {
  /** Connection number, from 1. */
  conn: number;
  /** Request number on that connection, from 1. */
  seq: number;
  head: string;
  body: Uint8Array;
}

export interface RawConn {
  readonly id: number;
  readonly socket: Socket<RawState>;
  write(data: string | Uint8Array): void;
  /** Writes data one byte at a time, `delayMs` apart. */
  trickle(data: string | Uint8Array, delayMs?: number): Promise<void>;
}

interface RawState {
  conn: RawConn;
  buf: Buffer;
  seq: number;
  closed: boolean;
}

export interface RawServer {
  readonly port: number;
  /** Connections accepted so far. */
  connections: number;
  /** Connections the client closed. */
  closed: number;
  requests: RawRequest[];
  stop(): void;
}

/**
 * A Bun.listen backend that hands each complete request (head, plus a body
 * framed by Content-Length or chunked, kept raw) to `onRequest`, which
 * answers with exact bytes.
 */
export function rawServer(
  onRequest: (conn: RawConn, req: RawRequest) => void | Promise<void>,
  tls?: { key: string; cert: string },
): RawServer {
  const server: RawServer = {
    port: 0,
    connections: 0,
    closed: 0,
    requests: [],
    stop: () => listener.stop(true),
  };
  const listener = Bun.listen<RawState>({
    hostname: "127.0.0.1",
    port: 0,
    tls,
    socket: {
      open(socket) {
        const id = ++server.connections;
        const conn: RawConn = {
          id,
          socket,
          write: (data) => {
            socket.write(data);
          },
          trickle: async (data, delayMs = 1) => {
            const bytes = typeof data === "string" ? Buffer.from(data, "latin1") : data;
            for (const byte of bytes) {
              if (socket.data.closed) return;
              socket.write(new Uint8Array([byte]));
              await Bun.sleep(delayMs);
            }
          },
        };
        socket.data = { conn, buf: Buffer.alloc(0), seq: 0, closed: false };
      },
      data(socket, data) {
        const state = socket.data;
        state.buf = Buffer.concat([state.buf, data]);
        for (;;) {
          const req = takeRequest(state);
          if (req === null) return;
          server.requests.push(req);
          void onRequest(state.conn, req);
        }
      },
      close(socket) {
        socket.data.closed = true;
        server.closed++;
      },
    },
  });
  Object.defineProperty(server, "port", { value: listener.port });
  return server;
}

function takeRequest(state: RawState): RawRequest | null {
  const buf = state.buf;
  const headEnd = buf.indexOf("\r\n\r\n");
  if (headEnd < 0) return null;
  const head = buf.subarray(0, headEnd + 4).toString("latin1");
  let end = headEnd + 4;
  const length = /\r\ncontent-length: *(\d+)/i.exec(head);
  if (length) {
    end += Number(length[1]);
    if (buf.length < end) return null;
  } else if (/\r\ntransfer-encoding: *chunked/i.test(head)) {
    const last = buf.indexOf("\r\n0\r\n\r\n", headEnd);
    const first = buf.indexOf("0\r\n\r\n", headEnd + 4) === headEnd + 4;
    if (last < 0 && !first) return null;
    end = first ? headEnd + 9 : last + 7;
  }
  state.buf = buf.subarray(end);
  return {
    conn: state.conn.id,
    seq: ++state.seq,
    head,
    body: new Uint8Array(buf.subarray(headEnd + 4, end)),
  };
}

/** A port nothing listens on: connecting is refused. */
export function refusedPort(): number {
  const listener = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = listener.port;
  listener.stop(true);
  return port;
}

const BLACKHOLE_PY = `
import socket, sys, select
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(0)
port = s.getsockname()[1]
fillers = []
for _ in range(1):
    c = socket.socket(); c.setblocking(False)
    try: c.connect(("127.0.0.1", port))
    except BlockingIOError: pass
    fillers.append(c)
select.select([], fillers, [], 1)
own = {c.getsockname()[1] for c in fillers}
print(port, flush=True)
sys.stdin.readline()
s.listen(64)  # room for the SYN retransmits now
s.settimeout(5)
while True:
    try: a, peer = s.accept()
    except OSError: break
    if peer[1] in own: continue
    a.settimeout(2)
    try: data = a.recv(1)
    except socket.timeout: data = None
    except OSError: data = b""
    print("open" if data is None else "closed" if data == b"" else "data", flush=True)
`;

export interface Blackhole {
  port: number;
  /** Starts accepting; resolves with "closed", "data" or "open" (still open after 2 s) for the first non-filler connection. */
  acceptOne(): Promise<string>;
  stop(): void;
}

/**
 * A listener whose accept queue is full (backlog 0 plus one filler
 * connection nobody accepts): Linux drops further SYNs, so a connect stays
 * pending, like a firewalled host. acceptOne() widens the backlog, so the
 * next SYN retransmit (about 1 s after the first SYN) gets through.
 */
export async function blackhole(): Promise<Blackhole> {
  const proc = Bun.spawn(["python3", "-c", BLACKHOLE_PY], {
    stdin: "pipe",
    stdout: "pipe",
    stderr: "inherit",
  });
  const readLine = lineReader(proc.stdout);
  const port = Number(await readLine());
  return {
    port,
    async acceptOne() {
      proc.stdin.write("go\n");
      proc.stdin.flush();
      return readLine();
    },
    stop() {
      proc.kill();
    },
  };
}

function lineReader(stream: ReadableStream<Uint8Array>): () => Promise<string> {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  return async () => {
    for (;;) {
      const newline = buffered.indexOf("\n");
      if (newline >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        return line.trim();
      }
      const { done, value } = await reader.read();
      if (done) return buffered.trim();
      buffered += decoder.decode(value, { stream: true });
    }
  };
}

export interface Cert {
  dir: string;
  key: string;
  cert: string;
  cleanup(): void;
}

/** A self-signed certificate for localhost and 127.0.0.1, made with openssl. */
export async function selfSignedCert(): Promise<Cert> {
  const dir = mkdtempSync(join(tmpdir(), "tether-upstream-"));
  const files = await makeCert(dir, "localhost", ["IP:127.0.0.1"]);
  return {
    dir,
    key: await Bun.file(files.key).text(),
    cert: await Bun.file(files.cert).text(),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** Resolves once `check` holds, polling every 5 ms; rejects after `ms`. */
export async function until(check: () => boolean, ms = 2000): Promise<void> {
  const deadline = performance.now() + ms;
  while (!check()) {
    if (performance.now() > deadline) throw new Error("condition not met in time");
    await Bun.sleep(5);
  }
}
