/**
 * The admin dashboard: one self-contained page (inline CSS and script, no build
 * step, no CDN) served at GET / on the admin listener. It reads the API with the
 * Bearer token the user gives it; see dashboard.html.
 */
import html from "./dashboard.html" with { type: "text" };

// Bun's types describe a plain `*.html` import as an HTMLBundle; with `type: "text"` it is the file's text,
// embedded in the compiled binary like any other module.
export const dashboardHtml: string = html as unknown as string;
