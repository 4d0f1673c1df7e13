/**
 * A real DNS server for discovery tests: dnsmasq (Debian's dnsmasq-base) as
 * an unprivileged process on 127.0.0.1 and a free port, answering from an
 * addn-hosts file it re-reads on SIGHUP. It does not re-read --srv-host on
 * SIGHUP: SRV records are fixed for its lifetime.
 */

import { Resolver } from "node:dns/promises";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { tempDir } from "./files.ts";

export const DNSMASQ = "/usr/sbin/dnsmasq";

export interface Dnsmasq {
  /** "127.0.0.1:PORT", for discover.resolver. */
  address: string;
  /** Rewrites the hosts file ("ADDRESS NAME" lines) and waits until dnsmasq answers from it. */
  setHosts(lines: string[], name: string): Promise<void>;
  stop(): Promise<void>;
}

function freeUdpPort(): Promise<number> {
  return Bun.udpSocket({ hostname: "127.0.0.1", port: 0 }).then((s) => {
    const p = s.port;
    s.close();
    return p;
  });
}

export async function startDnsmasq(hosts: string[], srv: string[] = []): Promise<Dnsmasq> {
  // The free UDP port may be taken for TCP (dnsmasq binds both): try another.
  let lastError: unknown;
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      return await startOnce(hosts, srv);
    } catch (e) {
      lastError = e;
    }
  }
  throw lastError;
}

async function startOnce(hosts: string[], srv: string[]): Promise<Dnsmasq> {
  const dir = tempDir("tether-dns-");
  const file = join(dir, "hosts");
  writeFileSync(file, `${hosts.join("\n")}\n`);
  const port = await freeUdpPort();
  const proc = Bun.spawn(
    [
      DNSMASQ,
      "--no-daemon",
      "--no-resolv",
      "--no-hosts",
      `--addn-hosts=${file}`,
      "--listen-address=127.0.0.1",
      "--bind-interfaces",
      `--port=${port}`,
      "--pid-file=",
      "--cache-size=0",
      ...srv.map((s) => `--srv-host=${s}`),
    ],
    { stdout: "ignore", stderr: "pipe" },
  );
  const address = `127.0.0.1:${port}`;
  const r = new Resolver({ timeout: 200, tries: 1 });
  r.setServers([address]);
  const answers = async (name: string) => {
    try {
      return (await r.resolve4(name)).sort();
    } catch {
      return null;
    }
  };
  let exited = false;
  void proc.exited.then(() => {
    exited = true;
  });
  const waitFor = async (name: string, want: string[] | null) => {
    const end = Date.now() + 5_000;
    const key = JSON.stringify(want?.sort() ?? null);
    while (Date.now() < end) {
      if (JSON.stringify(await answers(name)) === key) return;
      if (exited) break;
      await Bun.sleep(25);
    }
    proc.kill();
    const err = await new Response(proc.stderr as ReadableStream).text();
    throw new Error(`dnsmasq did not answer ${key} for ${name}: ${err}`);
  };
  const first = hosts[0]?.split(/\s+/);
  if (first?.[1])
    await waitFor(
      first[1],
      hosts.filter((h) => h.endsWith(` ${first[1]}`)).map((h) => h.split(/\s+/)[0] as string),
    );
  return {
    address,
    async setHosts(lines, name) {
      writeFileSync(file, `${lines.join("\n")}\n`);
      proc.kill("SIGHUP");
      const want = lines.filter((l) => l.split(/\s+/)[1] === name).map((l) => l.split(/\s+/)[0] as string);
      await waitFor(name, want.length ? want : null);
    },
    async stop() {
      proc.kill("SIGTERM");
      await proc.exited;
    },
  };
}
