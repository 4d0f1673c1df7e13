/**
 * tether in this process, from a given checkout, with the allocation counter
 * bench/alloc.ts reads: on "mark" it collects fully and notes the heap's
 * object counts; on "count" it prints how many objects were created since
 * (objectTypeCounts counts dead objects until a collection frees them, so a
 * window with no collection in it sees every object allocated in it).
 *
 *   bun bench/lib/alloc-probe.ts --repo DIR --config FILE
 */
import { fullGC, heapStats } from "bun:jsc";
import { join } from "node:path";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: { repo: { type: "string" }, config: { type: "string" }, variant: { type: "string" } },
});
const repo = values.repo as string;

/** tether from the checkout, or (--variant) one of bench/price-servers.ts's one-change servers. */
async function start(): Promise<number> {
  const { loadConfigFile } = await import(join(repo, "src/config/load.ts"));
  const config = loadConfigFile(values.config as string);
  if (values.variant) {
    const { serveVariant } = await import(join(repo, "bench/price-servers.ts"));
    const url = new URL(config.pools.app.backends[0].url);
    const target = { key: url.origin, hostname: url.hostname, port: Number(url.port) };
    return serveVariant(values.variant, 0, target).port;
  }
  const { createLogger } = await import(join(repo, "src/log.ts"));
  const { startTether } = await import(join(repo, "src/server/app.ts"));
  const tether = startTether(
    config,
    createLogger(() => {}, "error"),
  );
  return [...tether.listeners.values()][0]?.server.port;
}
process.stdout.write(`ready ${await start()}\n`);

const total = () => {
  const s = heapStats();
  let n = 0;
  for (const v of Object.values(s.objectTypeCounts)) n += v as number;
  return { objects: n, heap: s.heapSize, types: s.objectTypeCounts as Record<string, number> };
};
let mark = total();
/** The types that grew since the mark, most first: where the objects come from. */
function typeDeltas(now: ReturnType<typeof total>): string {
  return Object.entries(now.types)
    .map(([t, c]) => [t, c - (mark.types[t] ?? 0)] as const)
    .filter(([, d]) => d > 0)
    .sort((a, b) => b[1] - a[1])
    .map(([t, d]) => `${t}=${d}`)
    .join(",");
}
let buffered = "";
for await (const chunk of Bun.stdin.stream()) {
  buffered += new TextDecoder().decode(chunk);
  let nl = buffered.indexOf("\n");
  while (nl !== -1) {
    const cmd = buffered.slice(0, nl);
    buffered = buffered.slice(nl + 1);
    if (cmd === "mark") {
      fullGC();
      mark = total();
      process.stdout.write("marked\n");
    } else if (cmd === "count") {
      const now = total();
      // A heap that shrank means a collection ran inside the window: the count is not whole.
      process.stdout.write(
        `count ${now.objects - mark.objects} ${now.heap < mark.heap ? "collected" : "whole"} ${typeDeltas(now)}\n`,
      );
    }
    nl = buffered.indexOf("\n");
  }
}
