/** Loaded before every test file (bunfig.toml [test].preload). */
import { setDefaultTimeout } from "bun:test";

setDefaultTimeout(20_000);
