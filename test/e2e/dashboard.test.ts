/**
 * The admin dashboard in a real browser: Debian's chromium driven by playwright-core,
 * against tether started through the real CLI. Nothing here downloads a browser.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import type { Browser, Locator, Page } from "playwright-core";
import { dashboardHtml } from "../../src/admin/dashboard.ts";
import { backend, type TestBackend } from "../support/backends.ts";
import { launchChromium } from "../support/chromium.ts";
import { REPO, tempDir, writeConfig } from "../support/files.ts";
import { type Child, spawnCli } from "../support/tether.ts";

const TOKEN = "some-test-token";
const SCREENSHOT = join(REPO, "test/.tmp/dashboard.png");

let browser: Promise<Browser> | undefined;
function launch(): Promise<Browser> {
  browser ??= launchChromium();
  return browser;
}

interface Tab {
  page: Page;
  /** Every request URL the page made, including the navigations. */
  urls: string[];
  /** The Authorization header of each /api request, in order. */
  apiAuth: (string | undefined)[];
  /** Uncaught exceptions in the page. */
  errors: Error[];
  close(): Promise<void>;
}

async function openTab(): Promise<Tab> {
  const context = await (await launch()).newContext({ viewport: { width: 1280, height: 640 } });
  const page = await context.newPage();
  const tab: Tab = { page, urls: [], apiAuth: [], errors: [], close: () => context.close() };
  page.on("request", (r) => {
    tab.urls.push(r.url());
    if (new URL(r.url()).pathname.startsWith("/api/")) tab.apiAuth.push(r.headers().authorization);
  });
  page.on("pageerror", (e) => tab.errors.push(e));
  return tab;
}

/** Waits until the locator's text matches; on timeout, says what it saw instead. */
async function waitForText(locator: Locator, expected: string | RegExp, what: string, timeoutMs = 5_000) {
  const matches = (s: string) => (typeof expected === "string" ? s === expected : expected.test(s));
  const deadline = Date.now() + timeoutMs;
  let last: string | null = null;
  while (Date.now() < deadline) {
    last = await locator.textContent({ timeout: 250 }).catch(() => null);
    if (last !== null && matches(last)) return;
    await Bun.sleep(50);
  }
  throw new Error(`${what}: expected ${expected}, last saw ${JSON.stringify(last)}`);
}

const row = (page: Page, id: string) => page.locator(`tr[data-pool="app"][data-backend="${id}"]`);
const field = (page: Page, id: string, name: string) => row(page, id).locator(`[data-field="${name}"]`);

let backends: TestBackend[] = [];
let child: Child;
let admin: string;
let web: string;

/** What the API itself says about a backend's state. */
async function apiState(id: string): Promise<string | undefined> {
  const res = await fetch(`${admin}/api/backends`, { headers: { authorization: `Bearer ${TOKEN}` } });
  expect(res.status).toBe(200);
  const body = (await res.json()) as { backends: { pool: string; id: string; state: string }[] };
  return body.backends.find((b) => b.pool === "app" && b.id === id)?.state;
}

beforeAll(async () => {
  backends = [backend("app-1"), backend("app-2")];
  const file = writeConfig(tempDir(), {
    listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
    pools: {
      app: {
        backends: backends.map((b, i) => ({ id: `app-${i + 1}`, url: b.url })),
        // A header rule, so traffic from one test client still makes distinct sessions.
        persistence: [{ type: "header", name: "x-user" }],
      },
    },
    admin: { address: "127.0.0.1:0", token: "env:TETHER_ADMIN_TOKEN" },
  });
  child = spawnCli(["--config", file], { TETHER_ADMIN_TOKEN: TOKEN });
  admin = `http://127.0.0.1:${await child.listening("admin")}`;
  web = `http://127.0.0.1:${await child.listening("web")}`;
});

afterAll(async () => {
  await (await browser?.catch(() => undefined))?.close();
  await child?.stop();
  for (const b of backends) b.stop();
});

describe("admin dashboard", () => {
  test("without a token it shows the token form and calls no API", async () => {
    const tab = await openTab();
    try {
      await tab.page.goto(`${admin}/`);
      await tab.page.getByLabel("Token").waitFor({ state: "visible" });
      await waitForText(tab.page.getByRole("status"), /enter the admin token/i, "status line");
      expect(await tab.page.getByRole("button", { name: "Open dashboard" }).isVisible()).toBe(true);
      expect(await tab.page.locator("tr[data-backend]").count()).toBe(0);
      expect(tab.urls.filter((u) => u.includes("/api/"))).toEqual([]);
      expect(tab.errors).toEqual([]);
    } finally {
      await tab.close();
    }
  });

  test("a wrong token shows 'token rejected' and the form again, and is not kept", async () => {
    const tab = await openTab();
    try {
      await tab.page.goto(`${admin}/#token=wrong-token`);
      await waitForText(tab.page.locator("#login-message"), /token rejected/i, "form message");
      await waitForText(tab.page.getByRole("status"), /token rejected/i, "status line");
      expect(await tab.page.getByLabel("Token").isVisible()).toBe(true);
      expect(await tab.page.locator("tr[data-backend]").count()).toBe(0);
      expect(tab.page.url()).toBe(`${admin}/`);
      expect(await tab.page.evaluate(() => sessionStorage.length)).toBe(0);
      expect(tab.apiAuth).toContain("Bearer wrong-token");
      expect(tab.errors).toEqual([]);
    } finally {
      await tab.close();
    }
  });

  test("with the token in the fragment it lists both backends; Drain, Maint and Restore change app-1's state", async () => {
    const tab = await openTab();
    // Steady traffic, with a new session now and then, so the bars and sparklines have something to show.
    let n = 0;
    const traffic = setInterval(() => {
      n++;
      fetch(`${web}/`, { headers: { "x-user": `user-${n % 12}` } }).catch(() => {});
    }, 40);
    try {
      const { page } = tab;
      await page.goto(`${admin}/#token=${TOKEN}`);
      await row(page, "app-1").waitFor({ state: "visible" });
      await row(page, "app-2").waitFor({ state: "visible" });
      // The token left the address bar for sessionStorage.
      expect(page.url()).toBe(`${admin}/`);
      expect(await page.evaluate(() => Object.values(sessionStorage))).toEqual([TOKEN]);
      await waitForText(field(page, "app-1", "state"), "ready", "app-1 state before drain");
      await waitForText(field(page, "app-1", "health"), "up", "app-1 health");
      await waitForText(field(page, "app-2", "state"), "ready", "app-2 state");

      await page.getByRole("button", { name: "Drain app-1 in pool app", exact: true }).click();
      await waitForText(field(page, "app-1", "state"), "drain", "app-1 state after Drain");
      await waitForText(page.getByRole("status"), /app-1 .*is now drain/, "status line after Drain");
      expect(await apiState("app-1")).toBe("drain");
      expect(await apiState("app-2")).toBe("ready");

      await page.getByRole("button", { name: "Maint app-1 in pool app", exact: true }).click();
      await waitForText(field(page, "app-1", "state"), "maint", "app-1 state after Maint");
      expect(await apiState("app-1")).toBe("maint");

      await page.getByRole("button", { name: "Restore app-1 in pool app", exact: true }).click();
      await waitForText(field(page, "app-1", "state"), "ready", "app-1 state after Restore");
      expect(await apiState("app-1")).toBe("ready");

      // Let a few more polls land so the rates and sparklines are drawn, then keep a picture.
      await waitForText(field(page, "app-2", "rps"), /^\d+(\.\d)?$/, "app-2 requests per second");
      await Bun.sleep(3_000);
      mkdirSync(join(REPO, "test/.tmp"), { recursive: true });
      await page.screenshot({ path: SCREENSHOT, fullPage: true });

      expect(tab.apiAuth.length).toBeGreaterThan(2);
      expect(tab.apiAuth.every((h) => h === `Bearer ${TOKEN}`)).toBe(true);
      // A fragment never leaves the browser (the navigation is reported without it), and the
      // page sends the token only as a header: no request URL carries it.
      expect(tab.urls.filter((u) => u.includes(TOKEN))).toEqual([]);
      expect(tab.errors).toEqual([]);
    } finally {
      clearInterval(traffic);
      await tab.close();
    }
  }, 30_000);

  test("the form signs in; the token survives a reload in sessionStorage and 'Forget token' drops it", async () => {
    const tab = await openTab();
    try {
      const { page } = tab;
      await page.goto(`${admin}/`);
      await page.getByLabel("Token").fill(TOKEN);
      await page.getByRole("button", { name: "Open dashboard" }).click();
      await row(page, "app-1").waitFor({ state: "visible" });
      expect(page.url()).toBe(`${admin}/`);

      await page.reload();
      await row(page, "app-2").waitFor({ state: "visible" });
      expect(await page.getByLabel("Token").isVisible()).toBe(false);

      await page.getByRole("button", { name: "Forget token" }).click();
      await page.getByLabel("Token").waitFor({ state: "visible" });
      expect(await page.evaluate(() => sessionStorage.length)).toBe(0);
      expect(await page.locator("tr[data-backend]").count()).toBe(0);
      expect(tab.urls.filter((u) => u.includes(TOKEN))).toEqual([]);
      expect(tab.errors).toEqual([]);
    } finally {
      await tab.close();
    }
  });

  test("strings from the API are shown as text, never parsed as HTML", async () => {
    // tether's config only allows plain ids, so a stand-in API serves the same page with hostile ones.
    const evil = '<img src=x onerror="window.pwned=1">';
    const view = {
      pool: "<b>p</b>",
      id: evil,
      url: "http://127.0.0.1:1/<script>window.pwned=2</script>",
      state: "ready",
      health: "up",
      inflight: 0,
      activeSessions: 1,
      requests: 0,
      errors: 0,
      lastPinnedAt: null,
    };
    const stub = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: (req) =>
        new URL(req.url).pathname === "/api/pools"
          ? Response.json({ pools: [{ name: view.pool, backends: [view] }] })
          : new Response(dashboardHtml, { headers: { "content-type": "text/html; charset=utf-8" } }),
    });
    const tab = await openTab();
    try {
      const { page } = tab;
      await page.goto(`http://127.0.0.1:${stub.port}/#token=x`);
      const cell = page.locator("tbody th .id");
      await waitForText(cell, evil, "backend id cell");
      await waitForText(page.locator("section h2"), "Pool <b>p</b>", "pool heading");
      expect(await page.locator("main img, main script, main b").count()).toBe(0);
      expect(
        await page.getByRole("button", { name: `Drain ${evil} in pool <b>p</b>`, exact: true }).count(),
      ).toBe(1);
      expect(await page.evaluate(() => (globalThis as any).pwned)).toBeUndefined();
      expect(tab.errors).toEqual([]);
    } finally {
      await tab.close();
      stub.stop(true);
    }
  });
});
