/**
 * The origin-form request target ("/path;params?query") exactly as it appears
 * in Request.url, without building a URL object on the hot path.
 */
export function requestTarget(url: string): string {
  // Bun gives the bare target ("/a/b?q") when the Host header is missing or not a valid authority.
  if (url.charCodeAt(0) === 47) return url;
  const schemeEnd = url.indexOf("//");
  const pathStart = url.indexOf("/", schemeEnd + 2);
  if (pathStart === -1) return "/";
  return url.slice(pathStart);
}

/** The path part of a target, without the query. */
export function targetPath(target: string): string {
  const q = target.indexOf("?");
  return q === -1 ? target : target.slice(0, q);
}
