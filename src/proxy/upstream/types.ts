/**
 * The contract between the proxy and its upstream HTTP/1.1 client
 * (client.ts). The proxy hands over a request whose headers are already
 * final (hop-by-hop removed, X-Forwarded-* set, Host present); the client
 * only frames, sends, parses and streams.
 */

export interface UpstreamTarget {
  /** Pool key for keep-alive reuse, e.g. "http://127.0.0.1:9001". */
  key: string;
  hostname: string;
  port: number;
  /** Present for https:// backends. */
  tls?: {
    /** PEM CA bundle; default: the system's trust store. */
    ca?: string;
    /** SNI name and the name the certificate must match. Default: hostname. */
    serverName?: string;
    /** Verify the certificate (default true). */
    verify: boolean;
  };
}

export interface UpstreamRequest {
  method: string;
  /** Origin-form request target, exactly as the client sent it: "/path;p?q=1". */
  target: string;
  /**
   * Final header fields, flat: name, value, name, value ... (no pair per
   * field). Must not contain Content-Length or Transfer-Encoding.
   */
  fields: readonly string[];
  /** null: no body. */
  body: ReadableStream<Uint8Array> | Uint8Array | null;
  /** Length of body when known (sent as Content-Length); null with a stream body: chunked. */
  bodyLength: number | null;
}

export interface UpstreamResponse {
  status: number;
  statusText: string;
  /** Headers as received, in order (hop-by-hop still present; the proxy strips them). */
  headers: [string, string][];
  /**
   * null for responses that have no body (HEAD, 1xx, 204, 304, Content-Length: 0).
   * A Uint8Array when the whole body had already arrived with the head (fast path),
   * otherwise a stream that applies backpressure to the backend socket and errors
   * if the backend resets mid-body or sends a malformed chunk.
   */
  body: ReadableStream<Uint8Array> | Uint8Array | null;
  /** Content-Length from the backend if it sent one (so HEAD and known-length bodies keep it). */
  contentLength: number | null;
}

export interface RequestOptions {
  connectTimeoutMs: number;
  /** From request written to response head parsed; 0 = no limit. */
  responseTimeoutMs: number;
  /**
   * A stream body that yields no byte for this long fails the exchange with
   * CLIENT_TIMEOUT (the client stalled mid-upload); 0 or absent = no limit.
   */
  bodyIdleMs?: number;
  /** Aborts the exchange (client went away). */
  signal?: AbortLike;
}

/** What the client uses of an AbortSignal; an AbortSignal is one. */
export interface AbortLike {
  readonly aborted: boolean;
  readonly reason: unknown;
  addEventListener(type: "abort", listener: { handleEvent(): void } | (() => void)): void;
  removeEventListener(type: "abort", listener: { handleEvent(): void } | (() => void)): void;
}
