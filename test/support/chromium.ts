/**
 * Test support: Debian's chromium driven by playwright-core (which never
 * downloads a browser), and what a browser needs to trust a test certificate
 * over QUIC.
 */
import { createHash, X509Certificate } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { type Browser, chromium } from "playwright-core";

export const CHROMIUM = "/usr/bin/chromium";

/** Launches headless chromium with `extraArgs`; throws when the system browser is missing. */
export function launchChromium(extraArgs: string[] = []): Promise<Browser> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `${CHROMIUM} is missing: the browser tests drive Debian's chromium (apt-get install chromium) and never download a browser`,
    );
  }
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--no-first-run",
      "--disable-dev-shm-usage",
      ...extraArgs,
    ],
  });
}

/**
 * Chromium's flags for HTTP/3 to a test server at 127.0.0.1:port: QUIC from the
 * first request (no Alt-Svc round needed), and the certificate trusted by the
 * SHA-256 of its public key (QUIC ignores --ignore-certificate-errors).
 */
export function quicFlags(port: number, certFile: string): string[] {
  const spki = new X509Certificate(readFileSync(certFile)).publicKey.export({ type: "spki", format: "der" });
  return [
    `--origin-to-force-quic-on=127.0.0.1:${port}`,
    `--ignore-certificate-errors-spki-list=${createHash("sha256").update(spki).digest("base64")}`,
  ];
}
