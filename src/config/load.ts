/**
 * Turns a config file into a validated, resolved Config: JSON parsed, schema
 * checked, relative paths resolved against the config file's folder, "env:"
 * secrets read, certificate files loaded. Every problem is collected with its
 * JSON path, so `tether check` can list them all at once.
 */
import { readFileSync } from "node:fs";
import { dirname, isAbsolute, resolve } from "node:path";
import { deserialize, serialize } from "node:v8";
import { type ParseError, parse as parseJsonc, printParseErrorCode } from "jsonc-parser";
import type { z } from "zod";
import {
  type BackendConfig,
  type BackendSource,
  type ConfigShape,
  configSchema,
  type ListenerConfig,
  listenerEngine,
  type PoolConfig,
} from "./schema.ts";

export interface Problem {
  path: string;
  message: string;
}

export class ConfigError extends Error {
  constructor(
    readonly source: string,
    readonly problems: Problem[],
  ) {
    super(
      `${source}: ${problems.length} problem(s)\n${problems.map((p) => `  ${formatProblem(p)}`).join("\n")}`,
    );
    this.name = "ConfigError";
  }
}

export const formatProblem = (p: Problem) => (p.path ? `${p.path}: ${p.message}` : p.message);

export interface ResolvedBackend extends BackendConfig {
  /** Parsed once here so the hot path never parses a URL. */
  hostname: string;
  port: number;
  secure: boolean;
  /** A tcp:// backend of a tls-passthrough pool. */
  tcp: boolean;
  /** Origin with a trailing slash removed, e.g. "http://127.0.0.1:9001". */
  origin: string;
  caPem?: string;
  /** Absent for backends of the config file; "dns" or "api" for those added while running. */
  source?: Exclude<BackendSource, "config">;
  /** A dynamic backend being removed: it drains until it leaves. */
  removing?: boolean;
  /** A backend being removed: its drain deadline (ms since the epoch). */
  removeUntil?: number;
}

export interface ResolvedCertificate {
  cert: string;
  key: string;
  serverName?: string;
  certFile: string;
  keyFile: string;
}

export interface ResolvedListener extends Omit<ListenerConfig, "tls" | "engine"> {
  /** The front end, decided (listenerEngine). */
  engine: "bun" | "tether";
  hostname: string;
  port: number;
  certificates: ResolvedCertificate[];
}

export interface ResolvedPool extends Omit<PoolConfig, "backends"> {
  backends: ResolvedBackend[];
  /** discover.tls.ca, read. */
  discoverCaPem?: string;
}

export interface Config extends Omit<ConfigShape, "listeners" | "pools" | "secrets" | "admin"> {
  listeners: ResolvedListener[];
  pools: Record<string, ResolvedPool>;
  secrets: {
    /** Decoded 32-byte keys; the first seals. */
    cookieKeys?: Buffer[];
  };
  /** Where the snapshot goes, when there is one. */
  snapshotFile?: string;
  /** The Redis URL with its env: reference resolved. */
  redisUrl?: string;
  /** The admin block with its token resolved. */
  admin?: { address: string; hostname: string; port: number; token?: string; activeWindowMs: number };
  /** Absolute path of the file this came from ("" when built from an object). */
  file: string;
  auditFile?: string;
}

/** ["pools", "app", "backends", 2, "url"] → "pools.app.backends[2].url" */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const part of path) {
    if (typeof part === "number") out += `[${part}]`;
    else {
      const s = String(part);
      out += /^[A-Za-z_$][\w$-]*$/.test(s) ? (out ? `.${s}` : s) : `[${JSON.stringify(s)}]`;
    }
  }
  return out;
}

function zodProblems(error: z.ZodError): Problem[] {
  return error.issues.map((issue) => {
    let message = issue.message;
    if (issue.code === "unrecognized_keys") {
      message = `unknown key${issue.keys.length > 1 ? "s" : ""} ${issue.keys.map((k) => `"${k}"`).join(", ")}`;
    } else if (issue.code === "invalid_type" && message.includes("received undefined")) {
      message = "is required";
    }
    return { path: formatPath(issue.path), message };
  });
}

/**
 * Parses JSON text. Bun's JSON.parse gives no position for a syntax error, so
 * errors are located with jsonc-parser (strict mode: no comments, no trailing commas).
 */
function parseJson(text: string): { value?: unknown; problem?: Problem } {
  const errors: ParseError[] = [];
  const value = parseJsonc(text, errors, { disallowComments: true, allowTrailingComma: false });
  const first = errors[0];
  if (!first) return { value };
  const before = text.slice(0, first.offset);
  const line = before.split("\n").length;
  const col = before.length - before.lastIndexOf("\n");
  return {
    problem: {
      path: "",
      message: `invalid JSON at line ${line}, column ${col}: ${printParseErrorCode(first.error)}`,
    },
  };
}

/** Reads `env:NAME` references; any other string is returned as written. */
function resolveSecret(
  value: string,
  env: Record<string, string | undefined>,
  path: string,
  problems: Problem[],
): string | undefined {
  if (!value.startsWith("env:")) return value;
  const varName = value.slice(4);
  const found = env[varName];
  if (found === undefined || found === "") {
    problems.push({ path, message: `environment variable ${varName} is not set` });
    return undefined;
  }
  return found;
}

function readText(file: string, path: string, problems: Problem[]): string {
  try {
    return readFileSync(file, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    problems.push({ path, message: `cannot read ${file}${code ? ` (${code})` : ""}` });
    return "";
  }
}

export interface LoadOptions {
  /** Folder that relative paths resolve against. */
  baseDir: string;
  env?: Record<string, string | undefined>;
  /** Source name used in error messages. */
  source?: string;
}

/** Validates and resolves a config object (already parsed from JSON). */
export function resolveConfig(raw: unknown, opts: LoadOptions): Config {
  const source = opts.source ?? "config";
  const parsed = configSchema.safeParse(raw);
  if (!parsed.success) throw new ConfigError(source, zodProblems(parsed.error));
  const shape = parsed.data;
  const env = opts.env ?? process.env;
  const problems: Problem[] = [];
  const abs = (p: string) => (isAbsolute(p) ? p : resolve(opts.baseDir, p));

  const listeners: ResolvedListener[] = shape.listeners.map((l, i) => {
    const { tls, ...rest } = l;
    const { hostname, port } = splitAddress(l.address);
    const certificates = (tls?.certificates ?? []).map((c, j) => {
      const at = `listeners[${i}].tls.certificates[${j}]`;
      const certFile = abs(c.cert);
      const keyFile = abs(c.key);
      const cert = readText(certFile, `${at}.cert`, problems);
      const key = readText(keyFile, `${at}.key`, problems);
      if (cert && !cert.includes("-----BEGIN CERTIFICATE-----"))
        problems.push({ path: `${at}.cert`, message: `${certFile} is not a PEM certificate` });
      if (key && !/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(key))
        problems.push({ path: `${at}.key`, message: `${keyFile} is not a PEM private key` });
      return { cert, key, certFile, keyFile, ...(c.serverName ? { serverName: c.serverName } : {}) };
    });
    return { ...rest, engine: listenerEngine(l), hostname, port, certificates };
  });

  const pools: Config["pools"] = {};
  for (const [poolName, pool] of Object.entries(shape.pools)) {
    pools[poolName] = {
      ...pool,
      backends: pool.backends.map((b, i) => {
        const resolved = resolveBackend(b);
        if (b.tls?.ca)
          resolved.caPem = readText(abs(b.tls.ca), `pools.${poolName}.backends[${i}].tls.ca`, problems);
        return resolved;
      }),
    };
    const ca = pool.discover?.tls?.ca;
    if (ca)
      (pools[poolName] as ResolvedPool).discoverCaPem = readText(
        abs(ca),
        `pools.${poolName}.discover.tls.ca`,
        problems,
      );
  }

  const secrets: Config["secrets"] = {};

  if (shape.secrets.cookieKeys) {
    secrets.cookieKeys = [];
    shape.secrets.cookieKeys.forEach((raw, i) => {
      const path = `secrets.cookieKeys[${i}]`;
      const v = resolveSecret(raw, env, path, problems);
      if (v === undefined) return;
      const key = Buffer.from(v, "base64");
      if (key.length !== 32)
        problems.push({ path, message: "must be 32 bytes, base64-encoded (tether keygen makes one)" });
      else secrets.cookieKeys?.push(key);
    });
  }

  let admin: Config["admin"];
  if (shape.admin) {
    const token =
      shape.admin.token === undefined
        ? undefined
        : resolveSecret(shape.admin.token, env, "admin.token", problems);
    admin = { ...shape.admin, ...splitAddress(shape.admin.address), ...(token ? { token } : {}) };
  }

  let redisUrl: string | undefined;
  if (shape.cluster) redisUrl = resolveSecret(shape.cluster.redis.url, env, "cluster.redis.url", problems);
  // A config read from a file snapshots beside it by default; one built in code only when asked.
  const fromFile = Boolean(opts.source && isAbsolute(opts.source));
  let snapshotFile: string | undefined;
  if (shape.snapshot !== false && (shape.snapshot || fromFile)) {
    snapshotFile = abs(shape.snapshot?.file ?? "tether-state.msgpack");
  }

  if (problems.length) throw new ConfigError(source, problems);
  const { listeners: _l, pools: _p, secrets: _s, admin: _a, ...top } = shape;
  return {
    ...top,
    listeners,
    pools,
    secrets,
    ...(admin ? { admin } : {}),
    ...(snapshotFile ? { snapshotFile } : {}),
    ...(redisUrl ? { redisUrl } : {}),
    file: opts.source && isAbsolute(opts.source) ? opts.source : "",
    ...(shape.audit && shape.audit !== "stdout" ? { auditFile: abs(shape.audit) } : {}),
  };
}

/** A validated backend with its URL parsed once (the hot path never parses one). */
export function resolveBackend(b: BackendConfig): ResolvedBackend {
  const u = new URL(b.url);
  const secure = u.protocol === "https:";
  return {
    ...b,
    hostname: u.hostname.replace(/^\[|\]$/g, ""),
    port: u.port ? Number(u.port) : secure ? 443 : 80,
    tcp: u.protocol === "tcp:",
    secure,
    origin: u.origin,
  };
}

/** Reads, validates and resolves a config file. Throws ConfigError. */
export function loadConfigFile(file: string, env: Record<string, string | undefined> = process.env): Config {
  const absFile = resolve(file);
  let text: string;
  try {
    text = readFileSync(absFile, "utf8");
  } catch (e) {
    throw new ConfigError(absFile, [
      { path: "", message: `cannot read config file (${(e as NodeJS.ErrnoException).code ?? "error"})` },
    ]);
  }
  const { value, problem } = parseJson(text);
  if (problem) throw new ConfigError(absFile, [problem]);
  return resolveConfig(value, { baseDir: dirname(absFile), env, source: absFile });
}

export function splitAddress(address: string): { hostname: string; port: number } {
  const i = address.lastIndexOf(":");
  return { hostname: address.slice(0, i).replace(/^\[|\]$/g, ""), port: Number(address.slice(i + 1)) };
}

/**
 * A resolved Config as bytes for another thread (structured clone: Buffers,
 * PEM text and resolved secrets included), so that thread runs exactly this
 * config and never reads the file or the environment itself.
 */
export function encodeConfig(config: Config): Uint8Array {
  return serialize(config);
}

export function decodeConfig(bytes: Uint8Array): Config {
  return deserialize(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)) as Config;
}
