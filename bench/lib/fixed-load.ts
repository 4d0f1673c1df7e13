/**
 * A load of an exact number of requests, on demand: reads a count per line
 * from stdin, sends that many GETs over `--connections` keep-alive loops as a
 * returning client (the session cookie from the first answer), and prints
 * "done N" when all are answered. For bench/alloc.ts, which must know exactly
 * how many requests a window held.
 *
 *   bun bench/lib/fixed-load.ts --port P [--connections 8]
 */
import { parseArgs } from "node:util";

const { values } = parseArgs({ options: { port: { type: "string" }, connections: { type: "string" } } });
const url = `http://127.0.0.1:${values.port}/`;
const loops = Number(values.connections ?? 8);

const first = await fetch(url);
await first.arrayBuffer();
const cookie = (first.headers.get("set-cookie") ?? "").split(";")[0] ?? "";
const headers: Record<string, string> = cookie ? { cookie } : {};

async function run(count: number): Promise<void> {
  let left = count;
  const loop = async () => {
    while (left > 0) {
      left--;
      const res = await fetch(url, { headers });
      await res.arrayBuffer();
    }
  };
  await Promise.all(Array.from({ length: loops }, loop));
}

let buffered = "";
for await (const chunk of Bun.stdin.stream()) {
  buffered += new TextDecoder().decode(chunk);
  let nl = buffered.indexOf("\n");
  while (nl !== -1) {
    const count = Number(buffered.slice(0, nl));
    buffered = buffered.slice(nl + 1);
    await run(count);
    process.stdout.write(`done ${count}\n`);
    nl = buffered.indexOf("\n");
  }
}
