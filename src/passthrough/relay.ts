/**
 * Bytes both ways between a client and a backend socket, with backpressure
 * and half-close. No timers and no Bun types: the tunnel feeds it socket
 * events, and a fake socket can drive it in tests.
 *
 * Backpressure: a Bun socket's write() returns how many bytes the kernel
 * took. The rest waits in the destination side's queue and the source is
 * paused; the destination's drain event writes the queue out and resumes
 * the source. So each direction holds at most what was already read when
 * the pause took effect: one or two reads, never the stream.
 *
 * Half-close: a FIN from one side shuts down the write side of the other
 * once its queue is written, and the other direction keeps flowing. A side
 * that closes (both directions over) ends the other after its queue is
 * written; bytes for the closed side are dropped.
 *
 * Reset: a side that closed abortively (RST, or another socket error) has
 * the other side terminated at once (RST too), its queue dropped: a FIN in
 * its place would tell the peer the stream ended cleanly.
 */

/** What the relay needs of a socket; Bun's Socket has all of it. */
export interface RelaySocket {
  /** Bytes accepted, which may be fewer than given (or negative once closed). */
  write(data: Uint8Array): number;
  pause(): void;
  resume(): void;
  /** Half-close: FIN on our write side; reading goes on. */
  shutdown(): void;
  /** Close gracefully (after the kernel's buffer is sent). */
  end(): void;
  /** Close now. */
  terminate(): void;
}

export class Side {
  socket: RelaySocket | null = null;
  /** Bytes read from the other side, waiting to be written to this one. */
  queue: Uint8Array[] = [];
  queued = 0;
  /** This socket's peer sent FIN (or the socket closed): nothing more will be read from it. */
  eof = false;
  /** We shut down this socket's write side. */
  shut = false;
  closed = false;
  /** We paused reading from this socket because the other side's queue is not empty. */
  paused = false;

  constructor(readonly name: "client" | "backend") {}
}

export class Relay {
  readonly client = new Side("client");
  readonly backend = new Side("backend");
  /** Bytes client → backend and backend → client. */
  up = 0;
  down = 0;
  /** The most bytes ever queued for one side (the memory bound, observed). */
  peakQueued = 0;
  private finished = false;

  constructor(private readonly onDone: () => void) {}

  other(s: Side): Side {
    return s === this.client ? this.backend : this.client;
  }

  get done(): boolean {
    return this.finished;
  }

  /** Bytes read from `from`: on to the other side, pausing `from` if they cannot all be written now. */
  data(from: Side, chunk: Uint8Array): void {
    const to = this.other(from);
    if (to.closed || to.shut) return;
    if (from === this.client) this.up += chunk.length;
    else this.down += chunk.length;
    if (this.send(to, chunk)) return;
    if (!from.paused && !from.closed) {
      from.paused = true;
      from.socket?.pause();
    }
  }

  /**
   * Writes `chunk` to `to`, or queues what the socket did not take. True when
   * all of it was written. Also used for the bytes read before the backend was connected.
   */
  send(to: Side, chunk: Uint8Array): boolean {
    if (chunk.length === 0) return to.queued === 0;
    if (to.queued === 0 && to.socket) {
      const n = Math.max(0, to.socket.write(chunk));
      if (n >= chunk.length) return true;
      to.queue.push(n === 0 ? chunk : chunk.subarray(n));
      to.queued = chunk.length - n;
    } else {
      to.queue.push(chunk);
      to.queued += chunk.length;
    }
    if (to.queued > this.peakQueued) this.peakQueued = to.queued;
    return false;
  }

  /** `to` can take more: write its queue out; when empty, resume (or finish) the other side. */
  drain(to: Side): void {
    if (to.closed || !to.socket) return;
    while (to.queue.length > 0) {
      const head = to.queue[0] as Uint8Array;
      const n = Math.max(0, to.socket.write(head));
      if (n < head.length) {
        to.queue[0] = head.subarray(n);
        to.queued -= n;
        return;
      }
      to.queue.shift();
      to.queued -= head.length;
    }
    this.flushed(to);
  }

  /** `from` sent FIN. */
  end(from: Side): void {
    if (from.eof) return;
    from.eof = true;
    const to = this.other(from);
    if (to.queued === 0) this.flushed(to);
  }

  /** `side` closed: whatever was queued for it is dropped; the other side ends once its queue is written. */
  close(side: Side): void {
    if (side.closed) return;
    side.closed = true;
    side.eof = true;
    side.queue = [];
    side.queued = 0;
    const other = this.other(side);
    if (!other.closed && (other.queued === 0 || !other.socket)) this.endSide(other);
    this.checkDone();
  }

  /** `side` was reset: reset the other side now, dropping what is queued either way. */
  reset(side: Side): void {
    if (side.closed) return;
    // Its socket is already gone: only the other one is terminated.
    side.closed = side.eof = side.shut = true;
    this.abort();
  }

  /** Closes both sides now, dropping what is queued (timeouts, shutdown). */
  abort(): void {
    for (const s of [this.client, this.backend]) {
      s.queue = [];
      s.queued = 0;
      if (s.closed) continue;
      s.closed = s.eof = s.shut = true;
      s.socket?.terminate();
    }
    this.checkDone();
  }

  /** Called once `to`'s queue is empty. */
  private flushed(to: Side): void {
    const from = this.other(to);
    if (from.closed) this.endSide(to);
    else if (from.eof) this.shutdownSide(to);
    else if (from.paused) {
      from.paused = false;
      from.socket?.resume();
    }
  }

  /** No more bytes for `s`: FIN its write side, or close it when its peer has finished too. */
  private shutdownSide(s: Side): void {
    if (s.shut || s.closed) return;
    s.shut = true;
    if (s.eof) this.endSide(s);
    else s.socket?.shutdown();
  }

  private endSide(s: Side): void {
    if (s.closed) return;
    s.closed = true;
    s.eof = true;
    s.shut = true;
    // Marked first: end() may call back into close() synchronously.
    s.socket?.end();
    this.checkDone();
  }

  private checkDone(): void {
    if (this.finished || !this.client.closed || !this.backend.closed) return;
    this.finished = true;
    this.onDone();
  }
}
