/**
 * Writes config.schema.json from the zod schema in src/config/schema.ts, so
 * editors complete and validate config.json. A test fails if the committed
 * file is out of date: run `bun scripts/gen-schema.ts` after changing the schema.
 */
import { configJsonSchema } from "../src/config/json-schema.ts";

const out = new URL("../config.schema.json", import.meta.url);
await Bun.write(out, `${JSON.stringify(configJsonSchema(), null, 2)}\n`);
console.log(`wrote ${out.pathname}`);
