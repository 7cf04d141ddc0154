import type { Response } from 'express';

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** A piece of HTML that is already safe to emit. */
export class Html {
  constructor(readonly value: string) {}
  toString(): string {
    return this.value;
  }
}

export const escape = (value: unknown): string => String(value).replace(/[&<>"']/g, (c) => ESCAPES[c]!);

/** Tagged template: interpolated values are escaped unless they are {@link Html} (or arrays of it). */
export function html(strings: TemplateStringsArray, ...values: unknown[]): Html {
  let out = strings[0]!;
  values.forEach((value, i) => {
    out += render(value) + strings[i + 1]!;
  });
  return new Html(out);
}

function render(value: unknown): string {
  if (value instanceof Html) return value.value;
  if (Array.isArray(value)) return value.map(render).join('');
  if (value === undefined || value === null || value === false) return '';
  return escape(value);
}

export const json = (value: unknown): Html => html`<pre>${JSON.stringify(value, null, 2)}</pre>`;

const STYLE = `
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem}
pre{background:#f4f4f6;padding:.75rem;overflow-x:auto;font-size:.85rem;border-radius:4px}
form.inline{display:inline}button{font-size:1rem;padding:.4rem .9rem;margin:.2rem 0;cursor:pointer}
label{display:block;margin:.5rem 0}input{font-size:1rem;padding:.3rem}
.step{border-left:4px solid #0a66c2;padding:.2rem 1rem;margin:1rem 0}
.ok{color:#116329}.bad{color:#b42318}.muted{color:#666}.error{background:#fdecea;padding:.5rem 1rem;border-radius:4px}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:left}
`;

const NO_SCRIPTS = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/** The headers of every HTML page the example sends: never cached, never sniffed, no referrer, `csp`. */
export const pageHeaders = (res: Response, status: number, csp: string): Response =>
  res
    .status(status)
    .set('Content-Type', 'text/html; charset=utf-8')
    .set('Content-Security-Policy', csp)
    .set('Cache-Control', 'no-store')
    .set('X-Content-Type-Options', 'nosniff')
    .set('Referrer-Policy', 'no-referrer');

/** Sends a complete HTML page with a strict Content-Security-Policy (no scripts at all). */
export function sendPage(res: Response, title: string, body: Html, status = 200): void {
  pageHeaders(res, status, NO_SCRIPTS).send(
    html`<!doctype html>
      <html lang="en">
        <head>
          <meta charset="utf-8" />
          <meta name="viewport" content="width=device-width,initial-scale=1" />
          <title>${title}</title>
          <style>
            ${new Html(STYLE)}
          </style>
        </head>
        <body>
          ${body}
        </body>
      </html>`.value,
  );
}

/** oidc-provider's `renderError` for the example's providers: a plain page with a way back. */
export function renderError(back: { readonly href: string; readonly label: string }) {
  return (ctx: { type: string; body: unknown }, out: { readonly error: string; readonly error_description?: string }): void => {
    ctx.type = 'html';
    ctx.body = html`<!doctype html>
      <html lang="en">
        <head>
          <meta charset="utf-8" />
          <title>Error</title>
        </head>
        <body>
          <h1>${out.error}</h1>
          <p>${out.error_description ?? ''}</p>
          <p><a href="${back.href}">${back.label}</a></p>
        </body>
      </html>`.value;
  };
}
