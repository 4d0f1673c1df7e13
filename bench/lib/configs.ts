/**
 * Configuration of each peer for the same job: one HTTP listener on loopback,
 * the same backends, cookie stickiness on, keep-alive to the backends. Pure
 * functions, so the generated text can be tested and read in the results.
 */

export interface Backend {
  id: string;
  port: number;
}

/** One certificate for every peer of a TLS run: PEM files, and both in one file for HAProxy. */
export interface TlsFiles {
  cert: string;
  key: string;
  /** Certificate followed by its key (HAProxy's `crt`). */
  pem: string;
}

export interface TetherConfigInput {
  port: number;
  backends: Backend[];
  persistence: boolean;
  /** tether's "workers" (default 0: one thread). */
  workers?: number;
  /** An https listener with this certificate instead of the http one. */
  tls?: TlsFiles;
  /** The listener's "protocols" (default: tether's, HTTP/1.1 only). */
  protocols?: string[];
  /** The listener's "engine" (default: the one tether picks for it). */
  engine?: "bun" | "tether";
}

export function tetherConfig({
  port,
  backends,
  persistence,
  workers = 0,
  tls,
  protocols,
  engine,
}: TetherConfigInput): object {
  const pool: Record<string, unknown> = {
    backends: backends.map((b) => ({ id: b.id, url: `http://127.0.0.1:${b.port}` })),
  };
  if (persistence) pool.persistence = [{ type: "cookie", mode: "insert", name: "TETHER" }];
  const listener: Record<string, unknown> = {
    name: "web",
    protocol: tls ? "https" : "http",
    address: `127.0.0.1:${port}`,
    pool: "app",
  };
  if (tls) listener.tls = { certificates: [{ cert: tls.cert, key: tls.key }] };
  if (protocols) listener.protocols = protocols;
  if (engine) listener.engine = engine;
  return {
    listeners: [listener],
    pools: { app: pool },
    accessLog: false,
    workers,
    snapshot: false,
  };
}

/**
 * nginx OSS cannot insert a cookie, so stickiness is a consistent hash of the
 * cookie the client brings (the Lua client makes one up when none is set).
 * keepalive_requests is raised on both sides: the 1000-request default closes
 * client and upstream connections mid-run, a cost the other peers do not pay.
 */
export function nginxConfig(dir: string, port: number, backends: Backend[], h2?: NginxH2): string {
  const servers = backends.map((b) => `    server 127.0.0.1:${b.port};`).join("\n");
  const listen = h2 ? nginxH2Listen(port, h2) : `    listen 127.0.0.1:${port};`;
  return `daemon off;
master_process on;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/nginx-error.log warn;

events {
  worker_connections 4096;
}

http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;

  upstream app {
    hash $cookie_SRVID consistent;
${servers}
    keepalive 64;
    keepalive_requests 1000000;
  }

  server {
${listen}
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`;
}

/** HTTP/2 over TLS for nginx: the certificate, and which way this nginx spells "h2 on this listener". */
export interface NginxH2 {
  tls: TlsFiles;
  /** `http2 on;` exists from nginx 1.25.1; older versions take `http2` as a `listen` parameter. */
  directive: boolean;
}

function nginxH2Listen(port: number, { tls, directive }: NginxH2): string {
  return [
    directive
      ? `    listen 127.0.0.1:${port} ssl;\n    http2 on;`
      : `    listen 127.0.0.1:${port} ssl http2;`,
    `    ssl_certificate ${tls.cert};`,
    `    ssl_certificate_key ${tls.key};`,
  ].join("\n");
}

/** Whether nginx `version` ("1.22.1") knows the `http2` directive (1.25.1 and later). */
export function nginxHasHttp2Directive(version: string): boolean {
  const [major = 0, minor = 0, patch = 0] = version.split(".").map(Number);
  return major > 1 || (major === 1 && (minor > 25 || (minor === 25 && patch >= 1)));
}

/**
 * HAProxy inserts its own cookie naming the server (s1, s2, ...) and strips it before forwarding.
 * With `pem` (certificate and key in one file) it terminates TLS on the same bind, and with
 * `alpn` ("h2,http/1.1") it offers those protocols there.
 */
export function haproxyConfig(port: number, backends: Backend[], pem?: string, alpn?: string): string {
  const servers = backends
    .map((b, i) => `  server s${i + 1} 127.0.0.1:${b.port} cookie s${i + 1}`)
    .join("\n");
  return `global
  nbthread 1
  # Each connection takes two fds; 4096 stays under a 20000 fd limit without raising it.
  maxconn 4096

defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always

listen web
  bind 127.0.0.1:${port}${pem ? ` ssl crt ${pem}` : ""}${pem && alpn ? ` alpn ${alpn}` : ""}
  balance roundrobin
  cookie SRVID insert indirect nocache
${servers}
`;
}
