/** Test support: HTTP/2 clients (node:http2), over TLS (h2) or cleartext with prior knowledge (h2c). */
import http2 from "node:http2";

export interface H2Response {
  status: number;
  /** Headers as node gives them (Set-Cookie as an array). */
  headers: http2.IncomingHttpHeaders;
  body: string;
}

export interface H2Client {
  /** One request on this client's connection. */
  request(headers: http2.OutgoingHttpHeaders): Promise<H2Response>;
  close(): void;
}

/** One HTTP/2 connection to `origin` (https:// for h2, http:// for h2c), for several requests. */
export function h2Client(origin: string): H2Client {
  const session = http2.connect(origin, { rejectUnauthorized: false });
  let failed: Error | null = null;
  const pending = new Set<(e: Error) => void>();
  session.on("error", (e) => {
    failed = e;
    for (const reject of pending) reject(e);
  });
  return {
    request: (headers) =>
      new Promise<H2Response>((resolve, reject) => {
        if (failed) return reject(failed);
        pending.add(reject);
        const done = () => pending.delete(reject);
        const req = session.request(headers);
        let body = "";
        let head: http2.IncomingHttpHeaders = {};
        req.on("response", (h) => (head = h));
        req.setEncoding("utf8");
        req.on("data", (d) => (body += d));
        req.on("end", () => {
          done();
          resolve({ status: Number(head[":status"]), headers: head, body });
        });
        req.on("error", (e) => {
          done();
          reject(e);
        });
        req.end();
      }),
    close: () => session.close(),
  };
}

/** One request on a connection of its own. */
export async function h2Request(origin: string, headers: http2.OutgoingHttpHeaders): Promise<H2Response> {
  const client = h2Client(origin);
  try {
    return await client.request(headers);
  } finally {
    client.close();
  }
}
