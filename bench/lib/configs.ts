/**
 * Configuration of each peer for the same job: one HTTP listener on loopback,
 * the same backends, cookie stickiness on, keep-alive to the backends. Pure
 * functions, so the generated text can be tested and read in the results.
 */

export interface Backend {
  id: string;
  port: number;
}

export interface TetherConfigInput {
  port: number;
  backends: Backend[];
  persistence: boolean;
  /** tether's "workers" (default 0: one thread). */
  workers?: number;
}

export function tetherConfig({ port, backends, persistence, workers = 0 }: TetherConfigInput): object {
  const pool: Record<string, unknown> = {
    backends: backends.map((b) => ({ id: b.id, url: `http://127.0.0.1:${b.port}` })),
  };
  if (persistence) pool.persistence = [{ type: "cookie", mode: "insert", name: "TETHER" }];
  return {
    listeners: [{ name: "web", protocol: "http", address: `127.0.0.1:${port}`, pool: "app" }],
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
export function nginxConfig(dir: string, port: number, backends: Backend[]): string {
  const servers = backends.map((b) => `    server 127.0.0.1:${b.port};`).join("\n");
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
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`;
}

/**
 * HAProxy inserts its own cookie naming the server (s1, s2, ...) and strips it before forwarding.
 * With `pem` (certificate and key in one file) it terminates TLS on the same bind.
 */
export function haproxyConfig(port: number, backends: Backend[], pem?: string): string {
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
  bind 127.0.0.1:${port}${pem ? ` ssl crt ${pem}` : ""}
  balance roundrobin
  cookie SRVID insert indirect nocache
${servers}
`;
}
