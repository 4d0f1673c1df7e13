/**
 * The demo backends behind a running tether, as a browser uses them.
 */
import { afterEach, expect, test } from "bun:test";
import type { Server } from "bun";
import type { ConfigInput } from "../../src/config/schema.ts";
import { startDemoBackend } from "../../src/demo/backend.ts";
import { type Running, startInProcess } from "../support/tether.ts";

let demo: Server<undefined>[] = [];
let proxy: Running | null = null;
afterEach(async () => {
  await proxy?.stop();
  for (const s of demo) s.stop(true);
  demo = [];
  proxy = null;
});

test("a reload counts one visit: the browser's /favicon.ico is answered 404 and not counted", async () => {
  demo = [startDemoBackend("b1", "127.0.0.1:0"), startDemoBackend("b2", "127.0.0.1:0")];
  proxy = startInProcess({
    listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
    pools: {
      app: {
        backends: demo.map((s, i) => ({ id: `b${i + 1}`, url: `http://127.0.0.1:${s.port}` })),
        persistence: [{ type: "cookie", mode: "insert", name: "TETHER" }],
      },
    },
    secrets: { cookieKeys: [Buffer.alloc(32, 7).toString("base64")] },
  } as ConfigInput);
  const cookies = new Map<string, string>();
  // What a browser does on each load: the page, then its icon, both with the session's cookies.
  const load = async () => {
    const get = async (path: string, accept: string) => {
      const cookie = [...cookies].map(([k, v]) => `${k}=${v}`).join("; ");
      const res = await fetch(`${proxy?.url()}${path}`, { headers: { accept, cookie } });
      for (const sc of res.headers.getSetCookie()) {
        const [pair = ""] = sc.split(";");
        cookies.set(pair.slice(0, pair.indexOf("=")), pair.slice(pair.indexOf("=") + 1));
      }
      return res;
    };
    const page = await get("/", "text/html");
    const icon = await get("/favicon.ico", "image/*");
    expect(icon.status).toBe(404);
    await icon.arrayBuffer();
    return Number(/<b id="visits">(\d+)<\/b>/.exec(await page.text())?.[1]);
  };
  expect(await load()).toBe(1);
  expect(await load()).toBe(2);
  expect(await load()).toBe(3);
});

test("an icon request without a session starts none", async () => {
  demo = [startDemoBackend("b1", "127.0.0.1:0")];
  const res = await fetch(`http://127.0.0.1:${demo[0]?.port}/favicon.ico`);
  expect(res.status).toBe(404);
  expect(res.headers.getSetCookie()).toEqual([]);
});
