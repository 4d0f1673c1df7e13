/**
 * The relay's backpressure and half-close rules, driven by fake sockets
 * whose write() takes only as many bytes as the test allows.
 */
import { describe, expect, test } from "bun:test";
import { Relay, type RelaySocket } from "../../src/passthrough/relay.ts";

class FakeSocket implements RelaySocket {
  /** Bytes the next write() calls may take in total. */
  room = Number.POSITIVE_INFINITY;
  written: number[] = [];
  paused = false;
  shutdowns = 0;
  ended = false;
  terminated = false;

  write(data: Uint8Array): number {
    if (this.ended || this.terminated) return -1;
    const n = Math.min(this.room, data.length);
    this.room -= n;
    for (const b of data.subarray(0, n)) this.written.push(b);
    return n;
  }
  pause() {
    this.paused = true;
  }
  resume() {
    this.paused = false;
  }
  shutdown() {
    this.shutdowns++;
  }
  end() {
    this.ended = true;
  }
  terminate() {
    this.terminated = true;
  }
}

function setup() {
  let done = 0;
  const relay = new Relay(() => done++);
  const client = new FakeSocket();
  const backend = new FakeSocket();
  relay.client.socket = client;
  relay.backend.socket = backend;
  return { relay, client, backend, done: () => done };
}

const bytes = (...v: number[]) => new Uint8Array(v);

describe("relay backpressure", () => {
  test("bytes the destination takes at once pass straight through, nothing queued", () => {
    const { relay, client, backend } = setup();
    relay.data(relay.client, bytes(1, 2, 3));
    relay.data(relay.backend, bytes(9));
    expect(backend.written).toEqual([1, 2, 3]);
    expect(client.written).toEqual([9]);
    expect(relay.backend.queued).toBe(0);
    expect(client.paused).toBe(false);
    expect([relay.up, relay.down]).toEqual([3, 1]);
  });

  test("a partial write queues the rest and pauses the source; drain writes it and resumes", () => {
    const { relay, client, backend } = setup();
    backend.room = 2;
    relay.data(relay.client, bytes(1, 2, 3, 4));
    expect(backend.written).toEqual([1, 2]);
    expect(relay.backend.queued).toBe(2);
    expect(client.paused).toBe(true);
    // Bytes already read when the pause took effect join the queue, in order.
    relay.data(relay.client, bytes(5));
    expect(relay.backend.queued).toBe(3);
    backend.room = 1;
    relay.drain(relay.backend);
    expect(backend.written).toEqual([1, 2, 3]);
    expect(client.paused).toBe(true);
    backend.room = Number.POSITIVE_INFINITY;
    relay.drain(relay.backend);
    expect(backend.written).toEqual([1, 2, 3, 4, 5]);
    expect(relay.backend.queued).toBe(0);
    expect(client.paused).toBe(false);
    expect(relay.peakQueued).toBe(3);
  });

  test("the two directions are independent: a full backend does not pause the backend's bytes to the client", () => {
    const { relay, client, backend } = setup();
    backend.room = 0;
    relay.data(relay.client, bytes(1));
    expect(client.paused).toBe(true);
    relay.data(relay.backend, bytes(7, 8));
    expect(client.written).toEqual([7, 8]);
    expect(backend.paused).toBe(false);
  });
});

describe("relay half-close", () => {
  test("a client FIN shuts down the backend's write side; the backend's answer still reaches the client", () => {
    const { relay, client, backend, done } = setup();
    relay.end(relay.client);
    expect(backend.shutdowns).toBe(1);
    expect(backend.ended).toBe(false);
    relay.data(relay.backend, bytes(4, 2));
    expect(client.written).toEqual([4, 2]);
    // Then the backend finishes too: the client's write side is shut and both are closed.
    relay.end(relay.backend);
    expect(client.ended).toBe(true);
    relay.close(relay.client);
    relay.close(relay.backend);
    expect(done()).toBe(1);
  });

  test("a FIN waits behind queued bytes: shutdown only once the queue is written", () => {
    const { relay, backend } = setup();
    backend.room = 1;
    relay.data(relay.client, bytes(1, 2, 3));
    relay.end(relay.client);
    expect(backend.shutdowns).toBe(0);
    backend.room = Number.POSITIVE_INFINITY;
    relay.drain(relay.backend);
    expect(backend.written).toEqual([1, 2, 3]);
    expect(backend.shutdowns).toBe(1);
  });

  test("a side that closes drops what was queued for it and ends the other after its queue", () => {
    const { relay, client, backend, done } = setup();
    client.room = 0;
    relay.data(relay.backend, bytes(1, 2)); // queued for the client
    backend.room = 0;
    relay.data(relay.client, bytes(3)); // queued for the backend
    relay.close(relay.client);
    expect(relay.client.queued).toBe(0);
    expect(backend.ended).toBe(false);
    backend.room = Number.POSITIVE_INFINITY;
    relay.drain(relay.backend);
    expect(backend.written).toEqual([3]);
    expect(backend.ended).toBe(true);
    expect(done()).toBe(1);
  });

  test("abort closes both at once and finishes exactly once", () => {
    const { relay, client, backend, done } = setup();
    backend.room = 0;
    relay.data(relay.client, bytes(1));
    relay.abort();
    relay.abort();
    relay.close(relay.client);
    expect(client.terminated && backend.terminated).toBe(true);
    expect(done()).toBe(1);
  });
});
