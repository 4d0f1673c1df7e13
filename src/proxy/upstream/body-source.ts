/**
 * The response body stream's underlying source. Backpressure: the socket is
 * paused when the queue is full and resumed in pull().
 */
import type { UnderlyingSource } from "bun";
import type { BodyErrorSink } from "./exchange.ts";

/** The connection reading the body: it resumes the socket when the stream asks for more. */
export interface BodyReader {
  resumeFor(source: BodySource): void;
}

/** The exchange the body belongs to: told when the client cancels the stream. */
export interface BodyOwner {
  cancelled(reason: unknown): void;
}

export class BodySource implements UnderlyingSource<Uint8Array>, BodyErrorSink {
  controller!: ReadableStreamDefaultController<Uint8Array>;

  constructor(
    private readonly conn: BodyReader,
    private readonly ex: BodyOwner,
  ) {}

  start(controller: ReadableStreamDefaultController<Uint8Array>): void {
    this.controller = controller;
  }

  pull(): void {
    this.conn.resumeFor(this);
  }

  cancel(reason: unknown): void {
    this.ex.cancelled(reason);
  }

  error(reason: unknown): void {
    this.controller.error(reason);
  }
}
