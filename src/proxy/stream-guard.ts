/**
 * The wrapper around a streamed response body on its way to Bun. It reports
 * the end of the stream (once, however it ends) and bounds a client that
 * stops reading: Bun pulls only as its socket drains, so a chunk that waits
 * idleMs without a pull means the client stopped reading. The backend side
 * is then cancelled (its connection is destroyed, never pooled) and the
 * stream errored, which makes Bun close the client connection. Without this
 * backpressure would hold the backend connection for as long as the client
 * liked.
 */
import type { UnderlyingSource } from "bun";
import { ProxyError } from "./errors.ts";

type Timer = ReturnType<typeof setTimeout>;

/** What the guard uses of the backend stream's reader. */
interface Reader {
  read(): Promise<{ done: boolean; value?: Uint8Array }>;
  cancel(reason?: unknown): Promise<void>;
}

class Guard implements UnderlyingSource<Uint8Array> {
  private controller!: ReadableStreamDefaultController<Uint8Array>;
  private timer: Timer | null = null;
  /** When a chunk was last handed to Bun; -1 while Bun waits on us (a pull is in progress). */
  private waitingSince = -1;
  private ended = false;

  constructor(
    private readonly reader: Reader,
    private readonly idleMs: number,
    private readonly done: (() => void) | undefined,
  ) {}

  start(controller: ReadableStreamDefaultController<Uint8Array>): void {
    this.controller = controller;
  }

  async pull(controller: ReadableStreamDefaultController<Uint8Array>): Promise<void> {
    this.waitingSince = -1;
    try {
      const { done, value } = await this.reader.read();
      if (this.ended) return;
      if (done) {
        this.end();
        controller.close();
        return;
      }
      controller.enqueue(value as Uint8Array);
      if (this.idleMs > 0) {
        // One timer per stream: a chunk records the time, the timer re-arms itself for what is left.
        this.waitingSince = performance.now();
        if (this.timer === null) this.timer = setTimeout(check, this.idleMs, this);
      }
    } catch (e) {
      if (this.ended) return;
      this.end();
      controller.error(e);
    }
  }

  cancel(reason: unknown): Promise<void> {
    this.end();
    return this.reader.cancel(reason);
  }

  check(): void {
    this.timer = null;
    // Waiting on the backend (a slow stream, server-sent events) is not the client's doing.
    if (this.ended || this.waitingSince < 0) return;
    const left = this.waitingSince + this.idleMs - performance.now();
    if (left > 0) {
      this.timer = setTimeout(check, left, this);
      return;
    }
    const reason = new ProxyError("CLIENT_TIMEOUT", `client read nothing for ${this.idleMs} ms`);
    this.end();
    this.reader.cancel(reason).catch(ignore);
    // No reason: Bun prints an errored response stream's reason to stderr, and an expected
    // timeout (one per slow client) must not fill it. Bun resets the client connection either way.
    this.controller.error();
  }

  private end(): void {
    if (this.ended) return;
    this.ended = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.done?.();
  }
}

/**
 * Passes a body stream through; `done` is called once when it ends, fails,
 * is cancelled or times out. idleMs 0: no read bound.
 */
export function guardStream(
  stream: ReadableStream<Uint8Array>,
  idleMs: number,
  done?: () => void,
): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>(new Guard(stream.getReader(), idleMs, done));
}

function check(guard: Guard): void {
  guard.check();
}

function ignore(): void {}
