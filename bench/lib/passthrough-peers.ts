/**
 * The proxies of the passthrough bench, configured for the same job: one
 * TLS-passthrough listener on loopback in front of the same s_server
 * backends, sticking on the TLS session ID with the client address as the
 * fallback. Config generation is pure (tested in passthrough-harness.test.ts).
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { freePort, HOST } from "./net.ts";
import { waitHandshake } from "./passthrough-openssl.ts";
import type { PtPeerName } from "./passthrough-options.ts";
import { pin } from "./peers.ts";
import { capture, isRunning, logTail, processTree, spawnLogged, stopChild } from "./procs.ts";

export interface PtBackend {
  id: string;
  port: number;
}

/** tether: a tls-passthrough listener; rules tls-session, then client-ip, as the README recommends. */
export function tetherPassthroughConfig(
  port: number,
  backends: PtBackend[],
  admin: { port: number; token: string },
): object {
  return {
    listeners: [{ name: "tls", protocol: "tls-passthrough", address: `${HOST}:${port}`, pool: "app" }],
    pools: {
      app: {
        backends: backends.map((b) => ({ id: b.id, url: `tcp://${HOST}:${b.port}` })),
        persistence: [{ type: "tls-session" }, { type: "client-ip" }],
      },
    },
    // Only read once, after the measured runs: how many session IDs the table learned.
    admin: { address: `${HOST}:${admin.port}`, token: admin.token },
    accessLog: false,
    workers: 0,
    snapshot: false,
    // The bench stops it between runs; no client is left to wait for.
    shutdownGraceMs: 500,
  };
}

/**
 * HAProxy's "SSL session ID persistence" as its 2.6 manual gives it (the
 * example under "stick store-response"), with three changes:
 * - `res.payload_lv` where the manual prints `resp.payload_lv`, which 2.6
 *   rejects ("unknown fetch method");
 * - `tcp-response inspect-delay 5s`: without it the response rules run before
 *   the ServerHello is in the buffer and nothing is learned (0 of 846 sessions
 *   in a trial on this machine; 586 of 586 with it);
 * - `balance source` instead of roundrobin, so that an unknown session falls
 *   back to the client address exactly like tether's client-ip rule.
 * payload_lv(43,1) reads the length byte at offset 43 (5 record + 4 handshake
 * + 2 version + 32 random) and then the ID, so an empty ID (a fresh client) is
 * no key; a fixed payload(43,32) would make every fresh hello one key.
 * A stats socket answers "show table" after the runs; it is idle while measuring.
 */
export function haproxyPassthroughConfig(port: number, backends: PtBackend[], statsSocket: string): string {
  const servers = backends.map((b) => `  server ${b.id} ${HOST}:${b.port}`).join("\n");
  return `global
  nbthread 1
  # Each connection takes two fds; 4096 stays under a 20000 fd limit without raising it.
  maxconn 4096
  stats socket ${statsSocket} mode 600 level user

defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s

listen tls
  bind ${HOST}:${port}
  mode tcp
  balance source
  # maximum SSL session ID length is 32 bytes.
  stick-table type binary len 32 size 30k expire 30m
  acl clienthello req.ssl_hello_type 1
  acl serverhello res.ssl_hello_type 2
  # use tcp content accepts to detect ssl client and server hello.
  tcp-request inspect-delay 5s
  tcp-request content accept if clienthello
  # no timeout on response inspect delay by default.
  tcp-response inspect-delay 5s
  tcp-response content accept if serverhello
  # Match and learn on request if client hello.
  stick on req.payload_lv(43,1) if clienthello
  # Learn on response if server hello.
  stick store-response res.payload_lv(43,1) if serverhello
${servers}
`;
}

export interface PtRunning {
  port: number;
  /** Negotiated cipher of the readiness handshake. */
  cipher: string;
  /** Processes whose CPU time and RSS are charged to this peer. */
  measuredPids(): number[];
  /** Session IDs in the proxy's stick table now, or null when it cannot say. */
  learnedSessions(): Promise<number | null>;
  stop(): Promise<void>;
}

export interface PtPeer {
  readonly name: PtPeerName;
  unavailable(): string | null;
  version(): string;
  lastConfig: string;
  start(dir: string, backends: PtBackend[], proxyCore: string, repoRoot: string): Promise<PtRunning>;
}

const READY_TIMEOUT_MS = 15_000;

async function launch(name: string, cmd: string[], log: string, port: number, cwd?: string) {
  const child = spawnLogged(name, cmd, log, cwd);
  const r = await waitHandshake(port, () => isRunning(child), READY_TIMEOUT_MS);
  if (r.ready) return { child, cipher: r.cipher };
  await stopChild(child);
  throw new Error(`${name} did not start: ${r.reason}\n${logTail(child)}`);
}

function tetherPeer(): PtPeer {
  const peer: PtPeer = {
    name: "tether",
    lastConfig: "",
    unavailable: () => null,
    version: () => {
      try {
        const pkg = JSON.parse(readFileSync(join(import.meta.dir, "../../package.json"), "utf8"));
        return String((pkg as { version?: string }).version ?? "?");
      } catch {
        return "?";
      }
    },
    async start(dir, backends, proxyCore, repoRoot) {
      const port = freePort();
      const admin = { port: freePort(), token: crypto.randomUUID() };
      const cfg = JSON.stringify(tetherPassthroughConfig(port, backends, admin), null, 2);
      const path = join(dir, "tether-passthrough.json");
      writeFileSync(path, cfg);
      peer.lastConfig = cfg.replace(admin.token, "<token>");
      const cmd = [...pin(proxyCore), process.execPath, "src/main.ts", "--config", path];
      const { child, cipher } = await launch("tether", cmd, join(dir, "tether.log"), port, repoRoot);
      return {
        port,
        cipher,
        measuredPids: () => processTree(child.proc.pid),
        async learnedSessions() {
          try {
            const res = await fetch(`http://${HOST}:${admin.port}/api/sessions?pool=app`, {
              headers: { authorization: `Bearer ${admin.token}` },
              signal: AbortSignal.timeout(2000),
            });
            const body = (await res.json()) as { learnedEntries?: Record<string, number> };
            // Keys are "<rule index>:<rule type>".
            const entry = Object.entries(body.learnedEntries ?? {}).find(([k]) => k.endsWith("tls-session"));
            return entry ? entry[1] : null;
          } catch {
            return null;
          }
        },
        stop: () => stopChild(child),
      };
    },
  };
  return peer;
}

/** Sends one command to HAProxy's stats socket and returns the answer. */
async function haproxyCommand(socketPath: string, command: string): Promise<string> {
  let text = "";
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("stats socket timeout")), 2000);
    Bun.connect({
      unix: socketPath,
      socket: {
        open(s) {
          s.write(`${command}\n`);
        },
        data(_s, d) {
          text += new TextDecoder().decode(d);
        },
        close() {
          clearTimeout(timer);
          resolve();
        },
        error(_s, e) {
          clearTimeout(timer);
          reject(e);
        },
      },
    }).catch(reject);
  });
  return text;
}

function haproxyPeer(): PtPeer {
  const peer: PtPeer = {
    name: "haproxy",
    lastConfig: "",
    unavailable: () => (Bun.which("haproxy") ? null : "haproxy is not installed (apt-get install haproxy)"),
    version: () => /version (\S+)/.exec(capture(["haproxy", "-v"]))?.[1] ?? "?",
    async start(dir, backends, proxyCore) {
      const port = freePort();
      const socketPath = join(dir, "haproxy.sock");
      const cfg = haproxyPassthroughConfig(port, backends, socketPath);
      const path = join(dir, "haproxy-passthrough.cfg");
      writeFileSync(path, cfg);
      peer.lastConfig = cfg;
      // -db: one foreground process (no master-worker), so its pid is the one that works.
      const cmd = [...pin(proxyCore), "haproxy", "-db", "-f", path];
      const { child, cipher } = await launch("haproxy", cmd, join(dir, "haproxy.log"), port);
      return {
        port,
        cipher,
        measuredPids: () => processTree(child.proc.pid),
        async learnedSessions() {
          try {
            const m = /used:(\d+)/.exec(await haproxyCommand(socketPath, "show table tls"));
            return m ? Number(m[1]) : null;
          } catch {
            return null;
          }
        },
        stop: () => stopChild(child),
      };
    },
  };
  return peer;
}

/** s_time straight at backend app-1: the ceiling the load core allows. */
function directPeer(): PtPeer {
  return {
    name: "direct",
    lastConfig: "",
    unavailable: () => null,
    version: () => "",
    async start(_dir, backends) {
      const first = backends[0];
      if (!first) throw new Error("no backends");
      const r = await waitHandshake(first.port, () => true, READY_TIMEOUT_MS);
      if (!r.ready) throw new Error(`backend app-1 does not answer: ${r.reason}`);
      return {
        port: first.port,
        cipher: r.cipher,
        measuredPids: () => [],
        learnedSessions: async () => null,
        stop: async () => {},
      };
    },
  };
}

export function makePtPeers(names: PtPeerName[]): PtPeer[] {
  const all: Record<PtPeerName, () => PtPeer> = {
    tether: tetherPeer,
    haproxy: haproxyPeer,
    direct: directPeer,
  };
  return names.map((n) => all[n]());
}
