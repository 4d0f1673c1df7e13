/** Decodes what it receives the way a tether worker would, then answers. */
import { decode } from "../../src/workers/messages.ts";

declare const self: Worker;
self.onmessage = (ev: MessageEvent) => {
  const d = ev.data;
  if (d instanceof Uint8Array) decode(d);
  else if (typeof d === "string") JSON.parse(d);
  self.postMessage(1);
};
