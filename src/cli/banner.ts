/** The start-up banner: where tether listens and a command to try. */
import type { Config } from "../config/load.ts";
import type { Tether } from "../server/app.ts";

export function printBanner(
  tether: Tether,
  config: Config,
  /** With worker threads, the ports the primary settled (it has no listeners of its own). */
  ports?: Record<string, number>,
  out: (s: string) => void = (s) => process.stderr.write(s),
) {
  const lines: string[] = [];
  let firstUrl = "";
  const bound = ports
    ? config.listeners.map((l) => ({ config: l, hostname: l.hostname, port: ports[l.name] ?? l.port }))
    : [...tether.listeners.values()].map((h) => ({
        config: h.config,
        hostname: h.server.hostname,
        port: h.server.port,
      }));
  for (const handle of bound) {
    const host = handle.hostname?.includes(":") ? `[${handle.hostname}]` : handle.hostname;
    const url = `${handle.config.protocol}://${host}:${handle.port}/`;
    firstUrl ||= url;
    lines.push(`  ${handle.config.name.padEnd(12)} ${url}  → pool ${handle.config.pool}`);
  }
  const pools = Object.entries(config.pools).map(
    ([name, p]) =>
      `  ${name.padEnd(12)} ${p.backends.map((b) => `${b.id}${b.state === "ready" ? "" : ` (${b.state})`}`).join(", ")}`,
  );
  const k = firstUrl.startsWith("https") ? "-k " : "";
  const admin = tether.admin;
  const adminHost = config.admin?.hostname.includes(":")
    ? `[${config.admin.hostname}]`
    : config.admin?.hostname;
  // A generated token is shown here once, on stderr, so the shipped config works out of the box.
  const adminLines = admin
    ? [
        "admin:",
        `  dashboard    http://${adminHost}:${admin.port}/${admin.generated ? `#token=${admin.token}` : ""}`,
        ...(admin.generated
          ? ["               (token generated at start; set admin.token to choose one)"]
          : []),
      ]
    : [];
  out(
    [
      "",
      "tether is running",
      ...lines,
      "pools:",
      ...pools,
      ...adminLines,
      ...(config.demo ? ['demo backends are running (delete the "demo" block in real deployments)'] : []),
      "",
      "try:",
      `  curl ${k}-c /tmp/tether-jar -b /tmp/tether-jar ${firstUrl}`,
      "",
      "",
    ].join("\n"),
  );
}
