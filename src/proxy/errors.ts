/**
 * One error type for everything that can go wrong while proxying, with a
 * stable string code (as undici does) instead of a class per failure. The
 * status and the short body a client sees come from the code alone, so no
 * error message can leak a backend address.
 */
export type ProxyErrorCode =
  | "NO_BACKEND" // nothing eligible in the pool
  | "SESSION_HELD" // failover "strict": the session's backend is down, and the session waits for it
  | "CONNECT_FAILED" // refused, unreachable, TLS handshake failure
  | "CONNECT_TIMEOUT" // connectTimeoutMs passed before the connection opened
  | "RESET_BEFORE_RESPONSE" // connection closed or reset before a response byte arrived
  | "RESPONSE_TIMEOUT" // responseTimeoutMs passed before response headers
  | "BAD_RESPONSE" // the backend's response could not be parsed
  | "BODY_TOO_LARGE"
  | "CLIENT_TIMEOUT" // the client sent no request body byte for the listener's clientIdleMs
  | "BAD_REQUEST"
  | "INTERNAL"; // a defect in tether itself: never retried, never held against a backend

const catalog: Record<ProxyErrorCode, { status: number; text: string }> = {
  NO_BACKEND: { status: 503, text: "No backend is available to serve this request." },
  SESSION_HELD: { status: 503, text: "The server holding this session is unavailable; try again shortly." },
  CONNECT_FAILED: { status: 502, text: "The backend could not be reached." },
  CONNECT_TIMEOUT: { status: 504, text: "The backend did not accept the connection in time." },
  RESET_BEFORE_RESPONSE: { status: 502, text: "The backend closed the connection without answering." },
  RESPONSE_TIMEOUT: { status: 504, text: "The backend did not answer in time." },
  BAD_RESPONSE: { status: 502, text: "The backend sent an invalid response." },
  BODY_TOO_LARGE: { status: 413, text: "The request body is too large." },
  CLIENT_TIMEOUT: { status: 408, text: "The request body did not arrive in time." },
  BAD_REQUEST: { status: 400, text: "The request is malformed." },
  INTERNAL: { status: 500, text: "Internal proxy error." },
};

export class ProxyError extends Error {
  readonly status: number;
  constructor(
    readonly code: ProxyErrorCode,
    /** Internal detail for logs only; never sent to the client. */
    readonly detail?: string,
    /** True when no request byte can have reached the backend, so any request may be retried. */
    readonly safeToRetry = code === "CONNECT_FAILED" || code === "CONNECT_TIMEOUT",
    /** Sent as Retry-After (seconds) when set. */
    readonly retryAfterSec?: number,
  ) {
    super(`${code}${detail ? `: ${detail}` : ""}`);
    this.name = "ProxyError";
    this.status = catalog[code].status;
  }
}

/** The response a client gets for a failure: short, plain text, no internals. */
export function errorResponse(status: number, text: string, extraHeaders?: Record<string, string>): Response {
  return new Response(`${text}\n`, {
    status,
    headers: { "content-type": "text/plain; charset=utf-8", "cache-control": "no-store", ...extraHeaders },
  });
}

export function proxyErrorResponse(err: ProxyError): Response {
  if (err.retryAfterSec !== undefined)
    return errorResponse(err.status, catalog[err.code].text, { "retry-after": String(err.retryAfterSec) });
  return errorResponse(err.status, catalog[err.code].text);
}
