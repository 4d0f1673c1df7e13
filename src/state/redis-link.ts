/**
 * A link to one Redis, kept up in the background: a command connection and a
 * subscriber connection to one channel, a PING watchdog, and reconnection
 * with backoff. What travels over it is the owner's business (cluster.ts).
 *
 * Bun's RedisClient, measured (1.4.5): with autoReconnect, connect() to a
 * stopped server stays pending until every retry is spent and subscriptions
 * are not restored after a reconnect; a stopped (SIGSTOP) server leaves
 * commands pending forever with `connected` still true; with the offline
 * queue on, commands for a dead server are held indefinitely. So autoReconnect
 * and the offline queue are off and this class owns reconnection: each
 * attempt makes two fresh clients (commands, and the subscriber, which can
 * run nothing else), subscribes, and the watchdog tears down a link that
 * stops answering.
 */

import { RedisClient } from "bun";
import type { Logger } from "../log.ts";

export interface RedisLinkOptions {
  /** redis://host:port (or rediss://, with credentials if any). */
  url: string;
  /** The channel the subscriber connection listens on. */
  channel: string;
  /** Starts every log line, e.g. "cluster". */
  name: string;
}

/** What the owner of a link hears from it. */
export interface RedisLinkHandlers {
  /** A message on the channel. */
  message(message: string): void;
  /** A live link dropped (a connection closed, or PING went unanswered); a reconnect is scheduled. */
  lost(error: Error): void;
  /** A reconnect attempt succeeded; `wasConnected` is false if the link had never been up before. */
  reconnected(wasConnected: boolean): Promise<void> | void;
}

/** Bounds every connection attempt (both connections and the subscription). */
const CONNECT_TIMEOUT_MS = 1000;
/** A link whose PING takes longer than this is torn down and rebuilt. */
const PING_INTERVAL_MS = 1000;
const PING_TIMEOUT_MS = 1000;
const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 2000;
/** The same failure is logged at most once per this period, with a count of the suppressed ones. */
const LOG_EVERY_MS = 10_000;

interface Clients {
  gen: number;
  /** Every command but SUBSCRIBE. */
  cmd: RedisClient;
  /** Subscribed to the channel; Redis allows nothing else on it. */
  sub: RedisClient;
}

export class RedisLink {
  private clients: Clients | null = null;
  private gen = 0;
  private stopped = false;
  private everConnected = false;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private retryMs = RETRY_MIN_MS;
  private watchdog: ReturnType<typeof setInterval> | null = null;
  private pinging = false;
  private readonly lastLogged = new Map<string, { at: number; suppressed: number }>();

  constructor(
    private readonly opts: RedisLinkOptions,
    private readonly log: Logger,
    private readonly handlers: RedisLinkHandlers,
  ) {}

  /** True while both connections are up and the subscription is in place. */
  get connected(): boolean {
    const c = this.clients;
    if (!c) return false;
    return c.cmd.connected && c.sub.connected;
  }

  /** The command connection while the link is up, else null. */
  get cmd(): RedisClient | null {
    return this.clients?.cmd ?? null;
  }

  /**
   * Starts the watchdog and makes the first connection attempt, waiting at
   * most ~1 s. Resolves null once connected and subscribed, or with the error
   * after scheduling reconnects in the background. Never rejects. Call once.
   */
  async start(): Promise<Error | null> {
    this.watchdog = setInterval(() => this.ping(), PING_INTERVAL_MS);
    this.watchdog.unref?.();
    const error = await this.connectOnce();
    if (error !== null) this.scheduleReconnect();
    return error;
  }

  /**
   * Stops reconnecting and the watchdog, waits for `drain` (the owner's last
   * writes on the link as it is), then closes both connections.
   */
  async stop(drain?: () => Promise<unknown> | null | undefined): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.watchdog) clearInterval(this.watchdog);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.watchdog = this.retryTimer = null;
    const pending = drain?.();
    if (pending) await pending.catch(() => {});
    this.gen++;
    const clients = this.clients;
    this.clients = null;
    if (clients) closeClients(clients);
  }

  /** Logs a failure at most once per LOG_EVERY_MS per kind, with how many were suppressed. */
  report(what: string, e: unknown): void {
    const now = Date.now();
    const last = this.lastLogged.get(what);
    if (last && now - last.at < LOG_EVERY_MS) {
      last.suppressed++;
      return;
    }
    this.log.warn(`${this.opts.name}: redis ${what} failed`, {
      error: e instanceof Error ? e.message : String(e),
      ...(last?.suppressed ? { suppressed: last.suppressed } : {}),
    });
    this.lastLogged.set(what, { at: now, suppressed: 0 });
  }

  /** One connection attempt: null when the link is up and subscribed, else the error. */
  private async connectOnce(): Promise<Error | null> {
    const gen = ++this.gen;
    const options = {
      connectionTimeout: CONNECT_TIMEOUT_MS,
      autoReconnect: false,
      enableOfflineQueue: false,
    };
    const clients: Clients = {
      gen,
      cmd: new RedisClient(this.opts.url, options),
      sub: new RedisClient(this.opts.url, options),
    };
    const onclose = (e: Error) => this.lost(gen, e);
    clients.cmd.onclose = onclose;
    clients.sub.onclose = onclose;
    try {
      await withTimeout(
        Promise.all([clients.cmd.connect(), clients.sub.connect()]).then(() =>
          clients.sub.subscribe(this.opts.channel, this.onMessage),
        ),
        CONNECT_TIMEOUT_MS,
        "connecting",
      );
    } catch (e) {
      closeClients(clients);
      return e instanceof Error ? e : new Error(String(e));
    }
    if (this.stopped || gen !== this.gen) {
      closeClients(clients);
      return new Error("stopped");
    }
    this.clients = clients;
    this.everConnected = true;
    this.retryMs = RETRY_MIN_MS;
    return null;
  }

  private readonly onMessage = (message: string): void => this.handlers.message(message);

  /** A live link dropped (either connection closed, or PING went unanswered). */
  private lost(gen: number, e: Error): void {
    const clients = this.clients;
    if (!clients || clients.gen !== gen) return;
    this.clients = null;
    closeClients(clients);
    if (this.stopped) return;
    this.handlers.lost(e);
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.stopped || this.retryTimer) return;
    // Jitter keeps a fleet of instances from reconnecting in lockstep.
    const delay = this.retryMs * (0.75 + Math.random() * 0.5);
    this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
    this.retryTimer = setTimeout(async () => {
      this.retryTimer = null;
      if (this.stopped) return;
      const wasConnected = this.everConnected;
      const error = await this.connectOnce();
      if (error !== null) {
        if (!this.stopped) {
          this.report("reconnect", error);
          this.scheduleReconnect();
        }
        return;
      }
      await this.handlers.reconnected(wasConnected);
    }, delay);
    this.retryTimer.unref?.();
  }

  private async ping(): Promise<void> {
    const clients = this.clients;
    if (!clients || this.pinging) return;
    this.pinging = true;
    try {
      await withTimeout(clients.cmd.send("PING", []), PING_TIMEOUT_MS, "ping");
    } catch (e) {
      this.lost(clients.gen, e instanceof Error ? e : new Error(String(e)));
    } finally {
      this.pinging = false;
    }
  }
}

function closeClients(clients: Clients): void {
  clients.cmd.onclose = null;
  clients.sub.onclose = null;
  for (const c of [clients.cmd, clients.sub]) {
    try {
      c.close();
    } catch {
      // Already closed.
    }
  }
}

/** Rejects with "<what> timed out after <ms> ms" unless `p` settles first. */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([p, deadline]).finally(() => clearTimeout(timer));
}
