/**
 * The admin API as tests call it: a JSON request with the bearer token, and
 * the backend list. `B` is what a test reads of each backend.
 */
export interface AdminClient<B> {
  api(
    method: string,
    path: string,
    body?: unknown,
  ): Promise<{ status: number; body: { backend?: B; error?: string } }>;
  backends(): Promise<B[]>;
}

/** `adminPort` may be a function, for a port known only once the instance has started. */
export function adminClient<B>(adminPort: number | (() => number), token: string): AdminClient<B> {
  const base = () => `http://127.0.0.1:${typeof adminPort === "number" ? adminPort : adminPort()}`;
  const auth = { authorization: `Bearer ${token}` };
  return {
    async api(method, path, body) {
      const res = await fetch(`${base()}${path}`, {
        method,
        headers: { ...auth, "content-type": "application/json" },
        ...(body ? { body: JSON.stringify(body) } : {}),
      });
      return { status: res.status, body: (await res.json()) as { backend?: B; error?: string } };
    },
    async backends() {
      const res = await fetch(`${base()}/api/backends`, { headers: auth });
      return ((await res.json()) as { backends: B[] }).backends;
    },
  };
}
