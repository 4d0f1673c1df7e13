/**
 * The few SVG pieces the bench scripts draw with: a document with a title and
 * a white background, and elements built from attribute records. Text is
 * escaped here, so a caller never writes markup by hand.
 */

export type Attrs = Record<string, string | number | undefined>;

const ESCAPES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" };

export function escapeXml(s: string): string {
  return s.replace(/[&<>"]/g, (c) => ESCAPES[c] as string);
}

/** Coordinates to one decimal: enough for a screen, and no 97.60000000000001 in the file. */
export function num(n: number): string {
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

function attrs(a: Attrs): string {
  let out = "";
  for (const [k, v] of Object.entries(a)) {
    if (v === undefined) continue;
    out += ` ${k}="${typeof v === "number" ? num(v) : escapeXml(v)}"`;
  }
  return out;
}

/** `<name a="…"/>`, or with `inner` (markup, already escaped) between the tags. */
export function el(name: string, a: Attrs, inner?: string): string {
  return inner === undefined ? `<${name}${attrs(a)}/>` : `<${name}${attrs(a)}>${inner}</${name}>`;
}

/** A `<text>` element; `content` is plain text. */
export function text(x: number, y: number, content: string, a: Attrs = {}): string {
  return el("text", { x, y, ...a }, escapeXml(content));
}

/** A whole document: `title` is what a viewer shows for the file; the body is the drawing. */
export function svgDocument(width: number, height: number, title: string, body: string[]): string {
  return `${[
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    el("title", {}, escapeXml(title)),
    el("rect", { width, height, fill: "white" }),
    ...body,
    "</svg>",
  ].join("\n")}\n`;
}
