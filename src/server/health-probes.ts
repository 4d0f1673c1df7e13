/**
 * The probes behind active health checks: an HTTP GET through an upstream
 * client of its own (one idle connection per backend is plenty at check
 * rates), and a TCP connect for tls-passthrough pools.
 */
import { probeTcp } from "../passthrough/probe.ts";
import { type HealthProbes, isHealthyStatus } from "../pool/health.ts";
import { UpstreamClient } from "../proxy/upstream/client.ts";

export function healthProbes(): HealthProbes & { close(): void } {
  const client = new UpstreamClient({ maxIdlePerTarget: 1 });
  return {
    async http(target, hc) {
      const res = await client.request(
        target,
        {
          method: "GET",
          target: hc.path,
          fields: ["host", `${target.hostname}:${target.port}`, "user-agent", "tether-health-check"],
          body: null,
          bodyLength: null,
        },
        {
          connectTimeoutMs: hc.timeoutMs,
          responseTimeoutMs: hc.timeoutMs,
          signal: AbortSignal.timeout(hc.timeoutMs),
        },
      );
      if (res.body instanceof ReadableStream) await res.body.cancel();
      return { ok: isHealthyStatus(res.status, hc.expectStatus), reason: `status ${res.status}` };
    },
    tcp: (target, opts) => probeTcp(target.hostname, target.port, opts),
    close: () => client.close(),
  };
}
