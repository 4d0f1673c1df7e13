/** Test support: run a command, and make throwaway certificates with openssl. */
import { join } from "node:path";

export async function run(
  cmd: string[],
  stdin = "",
  timeoutMs = 10_000,
): Promise<{ code: number; out: string }> {
  const p = Bun.spawn(cmd, {
    stdin: new TextEncoder().encode(stdin),
    stdout: "pipe",
    stderr: "pipe",
    timeout: timeoutMs,
  });
  const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  return { code: await p.exited, out: out + err };
}

/** A self-signed P-256 certificate for `cn` (plus any extra subjectAltNames), valid 2 days. */
export async function makeCert(
  dir: string,
  cn: string,
  extraSans: string[] = [],
): Promise<{ cert: string; key: string }> {
  const cert = join(dir, `${cn}.pem`);
  const key = join(dir, `${cn}-key.pem`);
  const sans = [`DNS:${cn}`, ...extraSans].join(",");
  const r = await run([
    "openssl",
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-days",
    "2",
    "-subj",
    `/CN=${cn}`,
    "-addext",
    `subjectAltName=${sans}`,
    "-keyout",
    key,
    "-out",
    cert,
  ]);
  if (r.code !== 0) throw new Error(r.out);
  return { cert, key };
}
