/**
 * Cache-Control for a response that carries a session cookie (RFC 9111 §5.2.2):
 * a shared cache must not store it and hand the cookie to another user.
 */

/** The directives of a Cache-Control list, split on commas outside quoted strings (RFC 9110 §5.6.1). */
function directives(value: string): string[] {
  const out: string[] = [];
  let start = 0;
  let quoted = false;
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    if (quoted && c === "\\") i++;
    else if (c === '"') quoted = !quoted;
    else if (c === "," && !quoted) {
      out.push(value.slice(start, i));
      start = i + 1;
    }
  }
  out.push(value.slice(start));
  return out.map((d) => d.trim()).filter((d) => d !== "");
}

/** A directive's name, lowercased (directive names are case-insensitive, RFC 9111 §5.2). */
function nameOf(directive: string): string {
  const eq = directive.indexOf("=");
  return (eq === -1 ? directive : directive.slice(0, eq)).trim().toLowerCase();
}

/**
 * The Cache-Control value for a response that sets a session cookie, or null
 * to leave it as it is. `current` is the response's whole list (several
 * Cache-Control lines joined with ", "), null when it has none.
 *
 * A plain `private` or a `no-store` already keeps the response out of shared
 * caches. `no-cache` does not: a shared cache may store the response and
 * serve it after revalidation (§5.2.2.4). Otherwise `private` is added, and the
 * directives that speak to shared caches go: `public` (§5.2.2.9), `s-maxage`
 * (§5.2.2.10) and a field-qualified `private="..."` (§5.2.2.7), which the
 * plain `private` supersedes.
 */
export function privateCacheControl(current: string | null): string | null {
  const list = current ? directives(current) : [];
  const kept: string[] = [];
  for (const d of list) {
    const name = nameOf(d);
    if (name === "no-store" || d.toLowerCase() === "private") return null;
    if (name !== "public" && name !== "s-maxage" && name !== "private") kept.push(d);
  }
  return kept.length ? `private, ${kept.join(", ")}` : "private";
}
