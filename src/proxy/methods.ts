/** Methods a proxy may repeat on its own (RFC 9110 §9.2.2): the one list the forwarder and the upstream client both use. */
export const IDEMPOTENT: ReadonlySet<string> = new Set(["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"]);
