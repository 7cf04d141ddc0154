/**
 * The user's-browser half of the demo and the soak: a cookie jar, form parsing, and a sign-in that
 * follows the example server's redirects and fills its real login and consent forms.
 */
export class SignInFailure extends Error {}

const TIMEOUT_MS = 10_000;

interface StoredCookie {
  readonly name: string;
  readonly value: string;
  readonly path: string;
}

/** Enough of RFC 6265 for one origin: name, value, Path, expiry by Max-Age / Expires. */
class CookieJar {
  private readonly cookies = new Map<string, StoredCookie>();

  store(url: URL, response: Response): void {
    for (const header of response.headers.getSetCookie()) {
      const [pair = '', ...attributes] = header.split(';');
      const eq = pair.indexOf('=');
      if (eq < 1) continue;
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      let path = url.pathname.slice(0, Math.max(url.pathname.lastIndexOf('/'), 1)) || '/';
      let expired = false;
      for (const attribute of attributes) {
        const [key = '', ...rest] = attribute.trim().split('=');
        const attributeValue = rest.join('=').trim();
        const lower = key.toLowerCase();
        if (lower === 'path' && attributeValue.startsWith('/')) path = attributeValue;
        else if (lower === 'max-age' && Number(attributeValue) <= 0) expired = true;
        else if (lower === 'expires' && Date.parse(attributeValue) <= Date.now()) expired = true;
      }
      const id = `${name};${path}`;
      if (expired) this.cookies.delete(id);
      else this.cookies.set(id, { name, value, path });
    }
  }

  header(url: URL): string | undefined {
    const requestPath = url.pathname;
    const matches = [...this.cookies.values()]
      .filter(({ path }) => requestPath === path || (requestPath.startsWith(path) && (path.endsWith('/') || requestPath[path.length] === '/')))
      .sort((a, b) => b.path.length - a.path.length);
    return matches.length ? matches.map(({ name, value }) => `${name}=${value}`).join('; ') : undefined;
  }
}

export const unescapeHtml = (value: string): string =>
  value
    .replace(/&quot;/g, '"')
    .replace(/&#39;/g, "'")
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&amp;/g, '&');
const attribute = (tag: string, name: string): string | undefined => {
  const match = new RegExp(`\\b${name}\\s*=\\s*"([^"]*)"`, 'i').exec(tag);
  return match ? unescapeHtml(match[1]!) : undefined;
};

interface HtmlForm {
  readonly action: string;
  readonly method: string;
  readonly inputs: Map<string, string>;
}

/** The forms of a page: action, method and the named inputs with their values. */
function formsOf(page: string): HtmlForm[] {
  const forms: HtmlForm[] = [];
  for (const match of page.matchAll(/<form\b([^>]*)>([\s\S]*?)<\/form>/gi)) {
    const inputs = new Map<string, string>();
    for (const input of match[2]!.matchAll(/<input\b[^>]*>/gi)) {
      const name = attribute(input[0], 'name');
      if (name) inputs.set(name, attribute(input[0], 'value') ?? '');
    }
    forms.push({ action: attribute(match[1]!, 'action') ?? '', method: (attribute(match[1]!, 'method') ?? 'get').toUpperCase(), inputs });
  }
  return forms;
}

/** A path with its long random segments (interaction ids) shortened, for printing. */
export const shortPath = (url: URL): string =>
  url.pathname
    .split('/')
    .map((segment) => (segment.length > 16 ? `${segment.slice(0, 6)}…` : segment))
    .join('/');

export const pageText = (page: string): string =>
  unescapeHtml(page.replace(/<style[\s\S]*?<\/style>/gi, '').replace(/<[^>]+>/g, ' '))
    .replace(/\s+/g, ' ')
    .trim();

interface Hop {
  readonly method: string;
  readonly url: URL;
  readonly body?: URLSearchParams;
}

/**
 * Acts as the user's browser from the authorization URL to the redirect to `redirectUri`: GETs every
 * redirect, fills and POSTs the login form, POSTs the consent form's Allow. Returns the redirect URL
 * (with `code`, `state`, `iss`) without requesting it.
 */
export async function signInThroughTheForms(
  authorizationUrl: URL,
  redirectUri: string,
  username: string,
  password: string,
  out: (line: string) => void = () => {},
): Promise<URL> {
  const jar = new CookieJar();
  const origin = authorizationUrl.origin;
  let hop: Hop = { method: 'GET', url: authorizationUrl };
  for (let step = 0; step < 12; step += 1) {
    const headers: Record<string, string> = { accept: 'text/html' };
    const cookie = jar.header(hop.url);
    if (cookie) headers.cookie = cookie;
    if (hop.body) headers['content-type'] = 'application/x-www-form-urlencoded';
    const response = await fetch(hop.url, {
      method: hop.method,
      headers,
      body: hop.body?.toString(),
      redirect: 'manual',
      signal: AbortSignal.timeout(TIMEOUT_MS),
    });
    jar.store(hop.url, response);
    const page = await response.text();
    const location = response.headers.get('location');
    const shown = shortPath(hop.url) + (hop.url.pathname.endsWith('/auth') && hop.url.search ? '?…' : '');

    if (location && response.status >= 300 && response.status < 400) {
      const target = new URL(location, hop.url);
      const isCallback = target.origin + target.pathname === redirectUri;
      out(`     ${hop.method.padEnd(4)} ${shown.padEnd(36)} ${response.status} → ${isCallback ? `${redirectUri}?code=…&state=…&iss=…` : shortPath(target)}`);
      if (isCallback) return target;
      if (target.origin !== origin) throw new SignInFailure(`redirected to an unexpected origin: ${target.origin}`);
      hop = { method: 'GET', url: target };
      continue;
    }
    if (response.status !== 200) {
      throw new SignInFailure(`${hop.method} ${hop.url.pathname} answered ${response.status}: ${pageText(page).slice(0, 300)}`);
    }

    const forms = formsOf(page);
    const login = forms.find((form) => form.method === 'POST' && form.inputs.has('username') && form.inputs.has('password'));
    if (login) {
      out(`     ${hop.method.padEnd(4)} ${shown.padEnd(36)} 200   the login page: username + password form`);
      const body = new URLSearchParams([...login.inputs]);
      body.set('username', username);
      body.set('password', password);
      hop = { method: 'POST', url: new URL(login.action, hop.url), body };
      continue;
    }
    const consent = forms.find((form) => form.method === 'POST' && /\/confirm$/.test(form.action));
    if (consent) {
      out(`     ${hop.method.padEnd(4)} ${shown.padEnd(36)} 200   the consent page: "Allow access?" → Allow`);
      hop = { method: 'POST', url: new URL(consent.action, hop.url), body: new URLSearchParams([...consent.inputs]) };
      continue;
    }
    throw new SignInFailure(`${hop.url.pathname} is neither a login nor a consent page: ${pageText(page).slice(0, 300)}`);
  }
  throw new SignInFailure('too many redirects and forms before the redirect back to the client');
}
