/**
 * The client's Response, built from the backend's: hop-by-hop fields removed,
 * the persistence rules' effects applied (Set-Cookie, Cache-Control: private),
 * the listener's own fields added, a streamed body guarded against a client
 * that stopped reading.
 */
import type { Effect, ResponseFacts } from "../persistence/types.ts";
import { privateCacheControl } from "./cache-control.ts";
import { clientResponseHeaders } from "./headers.ts";
import { guardStream } from "./stream-guard.ts";
import type { UpstreamResponse } from "./upstream/types.ts";

const NO_EFFECTS: readonly Effect[] = [];

/** Builds the client's Response from the backend's, applying persistence effects. */
export function toClientResponse(
  res: UpstreamResponse,
  method: string,
  effects: readonly Effect[] = NO_EFFECTS,
  /** Told once the response (its whole body, for a stream) has been handed to the client. */
  finishing: { responded?: () => void } | null = null,
  /** A streamed body Bun does not pull for this long is cut (the client stopped reading); 0: never. */
  clientIdleMs = 0,
  /** Strict-Transport-Security for an https listener, unless the backend sent its own. */
  hsts: string | null = null,
  /**
   * The client asked to close (Connection: close): Bun closes after answering
   * but does not say so, and a client that reads the answer as keep-alive
   * sends its next request into a closed socket (RFC 9112 §9.6).
   */
  close = false,
): Response {
  const headers = clientResponseHeaders(res.headers);
  if (effects.length) applyEffects(headers, effects);
  const bodyless = method === "HEAD" || res.status === 204 || res.status === 304;
  if (res.contentLength !== null && res.status !== 204 && (bodyless || !(res.body instanceof Uint8Array))) {
    // Bun keeps an explicit Content-Length on a streamed or HEAD response instead of chunking.
    headers.set("content-length", String(res.contentLength));
  }
  if (hsts !== null && !headers.has("strict-transport-security"))
    headers.set("strict-transport-security", hsts);
  if (close) headers.set("connection", "close");
  let body = bodyless ? null : res.body;
  // Only a stream gets the wrapper (and its timer): a body that arrived whole is handed over at once.
  if (body instanceof ReadableStream) {
    if (finishing?.responded || clientIdleMs > 0) body = guarded(body, clientIdleMs, finishing);
  } else finishing?.responded?.();
  return new Response(body, { status: res.status, statusText: res.statusText, headers });
}

/** Apart from toClientResponse, so a response that arrived whole allocates no closure scope. */
function guarded(
  body: ReadableStream<Uint8Array>,
  clientIdleMs: number,
  finishing: { responded?: () => void } | null,
): ReadableStream<Uint8Array> {
  const done = finishing?.responded ? () => finishing.responded?.() : undefined;
  return guardStream(body, clientIdleMs, done);
}

/**
 * The persistence rules' effects on the client's headers: a Set-Cookie
 * rewritten (by its position among the response's Set-Cookies, as the rules
 * saw them in responseFacts) or added, and Cache-Control made private.
 */
export function applyEffects(headers: Headers, effects: readonly Effect[]): void {
  let cookies: string[] | null = null;
  let cachePrivate = false;
  for (const e of effects) {
    if (e.kind === "rewrite-set-cookie") {
      cookies ??= headers.getSetCookie();
      if (e.index < cookies.length) cookies[e.index] = e.header;
    } else if (e.kind === "set-cookie") {
      cookies ??= headers.getSetCookie();
      cookies.push(e.header);
    } else if (e.kind === "cache-private") cachePrivate = true;
    else if (e.kind === "set-header") headers.set(e.name, e.value);
  }
  if (cookies !== null) {
    headers.delete("set-cookie");
    for (const line of cookies) headers.append("set-cookie", line);
  }
  if (!cachePrivate) return;
  // Several Cache-Control lines are one list (RFC 9110 §5.3): Headers joins them, and one replaces them.
  const cc = privateCacheControl(headers.get("cache-control"));
  if (cc !== null) headers.set("cache-control", cc);
}

/**
 * What the persistence rules read of the backend's answer. Read on first
 * use: a returning session's rules usually read nothing, and then the
 * response's fields are not walked for it.
 */
class BackendAnswer implements ResponseFacts {
  private read = false;
  private cookies: string[] = NO_COOKIES;
  private loc: string | null = null;
  private cache: string | null = null;

  constructor(
    private readonly headers: readonly [string, string][],
    readonly secure: boolean,
  ) {}

  get setCookies(): string[] {
    if (!this.read) this.scan();
    return this.cookies;
  }

  get location(): string | null {
    if (!this.read) this.scan();
    return this.loc;
  }

  get cacheControl(): string | null {
    if (!this.read) this.scan();
    return this.cache;
  }

  /** A field by its lowercase name: walked on each call, and only the header rules call it. */
  header(name: string): string | null {
    for (const [n, value] of this.headers)
      if (n.length === name.length && n.toLowerCase() === name) return value;
    return null;
  }

  private scan(): void {
    this.read = true;
    for (const [name, value] of this.headers) {
      // Most fields are none of the three: their length rules them out without lowercasing.
      const n = name.length;
      if (n !== 10 && n !== 8 && n !== 13) continue;
      const lower = name.toLowerCase();
      if (lower === "set-cookie") {
        if (this.cookies === NO_COOKIES) this.cookies = [];
        this.cookies.push(value);
      } else if (lower === "location") this.loc = value;
      else if (lower === "cache-control") this.cache = value;
    }
  }
}

const NO_COOKIES: string[] = [];

export function responseFacts(res: UpstreamResponse, secure: boolean): ResponseFacts {
  return new BackendAnswer(res.headers, secure);
}
