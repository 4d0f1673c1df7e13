/** Test support: HTTP/2 clients (node:http2). */
import http2 from "node:http2";

/** One request over node:http2: status, headers as node gives them (Set-Cookie as an array), body. */
export async function h2Request(
  origin: string,
  headers: http2.OutgoingHttpHeaders,
): Promise<{ status: number; headers: http2.IncomingHttpHeaders; body: string }> {
  const session = http2.connect(origin, { rejectUnauthorized: false });
  try {
    return await new Promise((resolve, reject) => {
      session.on("error", reject);
      const req = session.request(headers);
      let body = "";
      let head: http2.IncomingHttpHeaders = {};
      req.on("response", (h) => (head = h));
      req.setEncoding("utf8");
      req.on("data", (d) => (body += d));
      req.on("end", () => resolve({ status: Number(head[":status"]), headers: head, body }));
      req.on("error", reject);
      req.end();
    });
  } finally {
    session.close();
  }
}
