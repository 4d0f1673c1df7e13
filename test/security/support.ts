/**
 * Security test support: a backend that reads requests the way a strict
 * HTTP/1.1 server would (so a count of requests means what a backend would
 * count), and a raw client that sends exact bytes, optionally in timed parts.
 */

export interface ReceivedRequest {
  /** The request line, e.g. "POST /a HTTP/1.1". */
  line: string;
  /** Header lines as received (name: value), in order. */
  headers: string[];
  /** How the body was framed: "none", "cl:N" or "chunked". */
  framing: string;
  /** The body bytes as framed on the wire (chunk sizes included), latin1. */
  rawBody: string;
  /** The body after de-chunking, latin1. */
  body: string;
}

export interface RecordedConnection {
  /** Every byte the backend received on this connection, latin1. */
  bytes: string;
  /** Bytes left over that do not (yet) form a complete request. */
  pending: string;
  /** How the connection ended: "open", "fin" or "reset". */
  end: "open" | "fin" | "reset";
}

export interface RecordingBackend {
  url: string;
  requests: ReceivedRequest[];
  connections: RecordedConnection[];
  /** Requests whose framing this backend could not read (a finding in itself). */
  unreadable: string[];
  stop(): void;
}

const latin1 = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("latin1");

/** Parses one complete request at the start of `buf`; null when more bytes are needed. */
function parseRequest(buf: string): { req: ReceivedRequest; used: number } | null | { error: string } {
  const headEnd = buf.indexOf("\r\n\r\n");
  if (headEnd === -1) return null;
  const lines = buf.slice(0, headEnd).split("\r\n");
  const line = lines[0] ?? "";
  const headers = lines.slice(1);
  const values = (name: string) =>
    headers.filter((h) => h.toLowerCase().startsWith(`${name}:`)).map((h) => h.slice(name.length + 1).trim());
  const cl = values("content-length");
  const te = values("transfer-encoding");
  if (headers.some((h) => !/^[!#$%&'*+.^_`|~0-9A-Za-z-]+:/.test(h)))
    return { error: `bad header line in ${JSON.stringify(buf.slice(0, headEnd))}` };
  if (cl.length > 1 || te.length > 1 || (cl.length && te.length))
    return { error: `ambiguous framing: ${JSON.stringify(headers)}` };
  const start = headEnd + 4;
  if (te.length) {
    if (te[0]?.toLowerCase() !== "chunked") return { error: `transfer coding ${te[0]}` };
    let i = start;
    let body = "";
    for (;;) {
      const lineEnd = buf.indexOf("\r\n", i);
      if (lineEnd === -1) return null;
      const sizeText = buf.slice(i, lineEnd);
      if (!/^[0-9a-fA-F]+$/.test(sizeText)) return { error: `chunk size ${JSON.stringify(sizeText)}` };
      const size = Number.parseInt(sizeText, 16);
      if (size === 0) {
        // No trailers are expected from tether: the last chunk is followed by an empty line.
        if (buf.length < lineEnd + 4) return null;
        if (buf.slice(lineEnd, lineEnd + 4) !== "\r\n\r\n") return { error: "trailer section" };
        const used = lineEnd + 4;
        return {
          req: { line, headers, framing: "chunked", rawBody: buf.slice(start, used), body },
          used,
        };
      }
      if (buf.length < lineEnd + 2 + size + 2) return null;
      body += buf.slice(lineEnd + 2, lineEnd + 2 + size);
      if (buf.slice(lineEnd + 2 + size, lineEnd + 4 + size) !== "\r\n")
        return { error: "chunk without CRLF" };
      i = lineEnd + 4 + size;
    }
  }
  if (cl.length) {
    if (!/^\d+$/.test(cl[0] as string)) return { error: `content-length ${cl[0]}` };
    const n = Number(cl[0]);
    if (buf.length < start + n) return null;
    const body = buf.slice(start, start + n);
    return { req: { line, headers, framing: `cl:${n}`, rawBody: body, body }, used: start + n };
  }
  return { req: { line, headers, framing: "none", rawBody: "", body: "" }, used: start };
}

/**
 * A strict backend: it frames requests by Content-Length or chunked exactly as
 * RFC 9112 says, answers each complete request with 200 "ok", and records
 * every byte per connection and how each connection ended.
 */
export function recordingBackend(): RecordingBackend {
  const requests: ReceivedRequest[] = [];
  const connections: RecordedConnection[] = [];
  const unreadable: string[] = [];
  const listener = Bun.listen<RecordedConnection>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(s) {
        s.data = { bytes: "", pending: "", end: "open" };
        connections.push(s.data);
      },
      data(s, chunk) {
        const text = latin1(chunk);
        s.data.bytes += text;
        s.data.pending += text;
        for (;;) {
          const parsed = parseRequest(s.data.pending);
          if (parsed === null) return;
          if ("error" in parsed) {
            unreadable.push(parsed.error);
            s.data.pending = "";
            s.end();
            return;
          }
          requests.push(parsed.req);
          s.data.pending = s.data.pending.slice(parsed.used);
          s.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
      },
      end(s) {
        if (s.data.end === "open") s.data.end = "fin";
      },
      close(s, err) {
        if (s.data.end === "open") s.data.end = err ? "reset" : "fin";
      },
      error(s) {
        s.data.end = "reset";
      },
    },
  });
  return {
    url: `http://127.0.0.1:${listener.port}`,
    requests,
    connections,
    unreadable,
    stop: () => listener.stop(true),
  };
}

export interface RawExchange {
  /** Everything the client received, latin1. */
  text: string;
  /** Status codes of the responses, in order. */
  statuses: number[];
  /** True when the server closed the connection (rather than the client giving up). */
  closed: boolean;
}

/**
 * Writes `parts` to 127.0.0.1:port (waiting `gapMs` after each part), then
 * waits until the server closes, or `quietMs` pass with no byte after at
 * least one arrived, or `maxMs` in all. `finAfter` half-closes after the last part.
 */
export function rawExchange(
  port: number,
  parts: string | string[],
  opts: { gapMs?: number; quietMs?: number; maxMs?: number; finAfter?: boolean } = {},
): Promise<RawExchange> {
  const { gapMs = 0, quietMs = 250, maxMs = 3000, finAfter = false } = opts;
  const list = typeof parts === "string" ? [parts] : parts;
  return new Promise((resolve) => {
    let text = "";
    let closed = false;
    let settled = false;
    let quiet: ReturnType<typeof setTimeout> | undefined;
    let sock: { end(): void } | null = null;
    const finish = () => {
      if (settled) return;
      settled = true;
      clearTimeout(quiet);
      clearTimeout(max);
      if (!closed) sock?.end();
      resolve({ text, statuses: statusesOf(text), closed });
    };
    const max = setTimeout(finish, maxMs);
    Bun.connect({
      hostname: "127.0.0.1",
      port,
      socket: {
        async open(s) {
          sock = s;
          for (const p of list) {
            s.write(Buffer.from(p, "latin1"));
            if (gapMs) await Bun.sleep(gapMs);
          }
          if (finAfter) s.shutdown();
        },
        data(_s, d) {
          text += latin1(d);
          clearTimeout(quiet);
          quiet = setTimeout(finish, quietMs);
        },
        close() {
          closed = true;
          finish();
        },
        error() {
          closed = true;
          finish();
        },
      },
    }).catch(finish);
  });
}

/** Statuses of the HTTP/1.1 responses in a byte stream whose bodies never contain "HTTP/1.". */
export function statusesOf(text: string): number[] {
  return [...text.matchAll(/HTTP\/1\.[01] (\d{3}) /g)].map((m) => Number(m[1]));
}
