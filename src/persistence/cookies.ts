/**
 * Small cookie helpers (RFC 6265). Only what the rules need: find a cookie in
 * a Cookie header, rewrite or drop one, read a Set-Cookie's name and value.
 */

/** The value of cookie `name` in a Cookie header, or null. The first occurrence wins. */
export function getCookie(header: string | null, name: string): string | null {
  if (!header) return null;
  let i = 0;
  while (i < header.length) {
    while (header.charCodeAt(i) === 32 || header.charCodeAt(i) === 59) i++; // " " and ";"
    const end = header.indexOf(";", i);
    const stop = end === -1 ? header.length : end;
    const eq = header.indexOf("=", i);
    if (eq !== -1 && eq < stop && namedAt(header, i, eq, name)) return header.slice(eq + 1, stop).trim();
    i = stop + 1;
  }
  return null;
}

const isBlank = (c: number) => c === 32 || c === 9;

/** Whether header[from, eq) is `name`, give or take blanks around it, compared in place. */
function namedAt(header: string, from: number, eq: number, name: string): boolean {
  let start = from;
  let end = eq;
  while (start < end && isBlank(header.charCodeAt(start))) start++;
  while (end > start && isBlank(header.charCodeAt(end - 1))) end--;
  return end - start === name.length && header.startsWith(name, start);
}

/** The Cookie header with cookie `name` replaced by `map(value)` (null drops it). "" when nothing is left. */
export function mapCookie(header: string, name: string, map: (value: string) => string | null): string {
  const out: string[] = [];
  for (const part of header.split(";")) {
    const p = part.trim();
    if (!p) continue;
    const eq = p.indexOf("=");
    if (eq !== -1 && p.slice(0, eq).trim() === name) {
      const v = map(p.slice(eq + 1).trim());
      if (v !== null) out.push(`${name}=${v}`);
    } else {
      out.push(p);
    }
  }
  return out.join("; ");
}

/** Name and value of a Set-Cookie header, or null if malformed. */
export function parseSetCookie(header: string): { name: string; value: string; attrs: string } | null {
  const semi = header.indexOf(";");
  const pair = semi === -1 ? header : header.slice(0, semi);
  const eq = pair.indexOf("=");
  if (eq <= 0) return null;
  return {
    name: pair.slice(0, eq).trim(),
    value: pair.slice(eq + 1).trim(),
    attrs: semi === -1 ? "" : header.slice(semi),
  };
}

/** True for a Set-Cookie that deletes its cookie (empty value, Max-Age<=0 or an Expires in the past). */
export function isDeletion(value: string, attrs: string, nowMs = Date.now()): boolean {
  if (value === "" || value === '""') return true;
  const maxAge = /;\s*max-age\s*=\s*(-?\d+)/i.exec(attrs);
  if (maxAge && Number(maxAge[1]) <= 0) return true;
  const expires = /;\s*expires\s*=\s*([^;]+)/i.exec(attrs);
  if (expires) {
    const t = Date.parse(expires[1] as string);
    if (!Number.isNaN(t) && t < nowMs) return true;
  }
  return false;
}
