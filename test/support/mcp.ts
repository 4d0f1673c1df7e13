/**
 * Stateful MCP servers built with the official TypeScript SDK
 * (Streamable HTTP, one transport per session, as the SDK's own examples
 * keep them), and SDK clients that talk to them through tether.
 */
import { randomUUID } from "node:crypto";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { WebStandardStreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/webStandardStreamableHttp.js";
import type { Server } from "bun";

export interface McpBackend {
  name: string;
  url: string;
  server: Server<undefined>;
  /** Requests naming a session this server does not hold: what a stateful server answers 404 to. */
  sessionNotFound: number;
  /** Sessions this server initialized. */
  sessions: number;
  stop(): void;
}

/** A session's state lives in this process only: another server has never heard of it. */
export function mcpBackend(name: string): McpBackend {
  const transports = new Map<string, WebStandardStreamableHTTPServerTransport>();
  const b: McpBackend = {
    name,
    url: "",
    sessionNotFound: 0,
    sessions: 0,
    stop: () => {
      for (const t of transports.values()) void t.close();
      b.server.stop(true);
    },
    server: Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      idleTimeout: 0,
      async fetch(req) {
        const sessionId = req.headers.get("mcp-session-id");
        if (sessionId !== null) {
          const known = transports.get(sessionId);
          if (known) return known.handleRequest(req);
          b.sessionNotFound++;
          return Response.json(
            { jsonrpc: "2.0", error: { code: -32001, message: "Session not found" }, id: null },
            { status: 404 },
          );
        }
        // No session named: an initialize request opens one.
        let calls = 0;
        const server = new McpServer({ name: `tether-test-${name}`, version: "1.0.0" });
        server.registerTool("where", { description: "Names the server holding this session" }, async () => {
          calls++;
          return { content: [{ type: "text", text: `${name}:${calls}` }] };
        });
        const transport = new WebStandardStreamableHTTPServerTransport({
          sessionIdGenerator: randomUUID,
          onsessioninitialized: (id) => {
            b.sessions++;
            transports.set(id, transport);
          },
          onsessionclosed: (id) => {
            transports.delete(id);
          },
        });
        await server.connect(transport);
        return transport.handleRequest(req);
      },
    }),
  };
  b.url = `http://127.0.0.1:${b.server.port}`;
  return b;
}

/** One SDK client's run: `calls` tool calls through `url`, and what each answered. */
export async function mcpSession(
  url: string,
  calls: number,
): Promise<{ answers: string[]; errors: string[] }> {
  const client = new Client({ name: "tether-test-client", version: "1.0.0" });
  const transport = new StreamableHTTPClientTransport(new URL(`${url}/mcp`));
  const answers: string[] = [];
  const errors: string[] = [];
  try {
    await client.connect(transport);
    for (let i = 0; i < calls; i++) {
      try {
        const r = await client.callTool({ name: "where", arguments: {} });
        const first = (r.content as { type: string; text?: string }[])[0];
        answers.push(first?.text ?? "");
      } catch (e) {
        errors.push(String(e));
      }
    }
  } catch (e) {
    errors.push(String(e));
  } finally {
    await transport.terminateSession().catch((e) => errors.push(`terminate: ${e}`));
    await client.close();
  }
  return { answers, errors };
}
