/**
 * One msgpack Encoder and Decoder per thread (reused: a top-level encode()
 * builds a new Encoder per call), shared by worker messages, snapshots and
 * Redis sync. @msgpack/msgpack is required on first use, not at start: a
 * single-thread config without snapshot or Redis never loads it (~2 MiB RSS
 * in the binary). Both calls are synchronous, so sharing them is safe.
 */
import type { Decoder, Encoder } from "@msgpack/msgpack";

let codec: { encoder: Encoder; decoder: Decoder } | null = null;

function load(): { encoder: Encoder; decoder: Decoder } {
  if (!codec) {
    // Synchronous on purpose: snapshots are read while the first runtime is built.
    const m = require("@msgpack/msgpack") as typeof import("@msgpack/msgpack");
    codec = { encoder: new m.Encoder(), decoder: new m.Decoder() };
  }
  return codec;
}

export const encoder = { encode: (value: unknown): Uint8Array => load().encoder.encode(value) };
export const decoder = {
  decode: (bytes: ArrayLike<number> | ArrayBufferView | ArrayBufferLike): unknown =>
    load().decoder.decode(bytes),
};
