// Firefox through geckodriver, with plain W3C WebDriver HTTP calls.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { freePort, startProcess, waitHttp } from '../lib/herald.mjs';

export const FIREFOX = process.env.FIREFOX_PATH || '/usr/bin/firefox-esr';

const ELEMENT = 'element-6066-11e4-a52e-4f735466cecf';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** geckodriver on PATH, else in cargo's bin directory; GECKODRIVER overrides. */
export function findGeckodriver() {
  if (process.env.GECKODRIVER) return process.env.GECKODRIVER;
  const dirs = (process.env.PATH || '').split(path.delimiter).filter(Boolean);
  dirs.push(path.join(process.env.CARGO_HOME || path.join(os.homedir(), '.cargo'), 'bin'));
  for (const d of dirs) {
    const p = path.join(d, 'geckodriver');
    try { fs.accessSync(p, fs.constants.X_OK); return p; } catch { /* next */ }
  }
  return null;
}

export class WebDriverError extends Error {}

/**
 * Starts geckodriver and a headless Firefox with a fresh profile (created
 * under `profileRoot`) and `prefs`. Resolves to a Session.
 */
export async function startFirefox({ prefs = {}, logFile, profileRoot }) {
  const gecko = findGeckodriver();
  if (!gecko) throw new Error('geckodriver not found (scripts/install-browser-deps.sh installs it with cargo install geckodriver)');
  if (!fs.existsSync(FIREFOX)) throw new Error(`${FIREFOX} not found (scripts/install-browser-deps.sh installs firefox-esr)`);
  const port = await freePort();
  const wsPort = await freePort();
  const proc = startProcess(gecko, ['--port', String(port), '--websocket-port', String(wsPort), '--profile-root', profileRoot, '--log', 'info'], {
    logFile,
    env: { ...process.env, MOZ_HEADLESS: '1' },
  });
  const url = `http://127.0.0.1:${port}`;
  await waitHttp(`${url}/status`, proc, { what: 'geckodriver', logFile, timeoutMs: 15_000 });
  const res = await call(url, 'POST', '/session', {
    capabilities: {
      alwaysMatch: {
        browserName: 'firefox',
        'moz:firefoxOptions': { binary: FIREFOX, args: ['-headless'], prefs, log: { level: 'info' } },
      },
    },
  }, 90_000);
  return new Session(url, res.sessionId, proc, res.capabilities);
}

async function call(base, method, p, body, timeoutMs = 60_000) {
  const res = await fetch(base + p, {
    method,
    headers: body === undefined ? {} : { 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const json = await res.json().catch(() => ({}));
  if (!res.ok || (json.value && json.value.error)) {
    const v = json.value || {};
    throw new WebDriverError(`WebDriver ${method} ${p}: ${v.error || res.status}: ${v.message || JSON.stringify(json)}`);
  }
  return json.value;
}

export class Session {
  constructor(base, id, proc, capabilities) {
    this.base = base;
    this.id = id;
    this.proc = proc;
    this.capabilities = capabilities;
  }

  cmd(method, p, body, timeoutMs) {
    return call(this.base, method, `/session/${this.id}${p}`, body, timeoutMs);
  }

  navigate(url) { return this.cmd('POST', '/url', { url }); }

  async find(css) {
    const v = await this.cmd('POST', '/element', { using: 'css selector', value: css });
    return v[ELEMENT];
  }

  async click(css) {
    const el = await this.find(css);
    await this.cmd('POST', `/element/${el}/click`, {});
  }

  /** Runs `fn` (a function or its source) in the page with `args`; a returned promise is awaited. */
  execute(fn, ...args) {
    const body = typeof fn === 'function' ? `return (${fn}).apply(null, arguments);` : fn;
    return this.cmd('POST', '/execute/sync', { script: body, args });
  }

  /** Polls fn(...args) in the page until it returns something truthy. */
  async waitFor(fn, args, what, timeoutMs = 15_000) {
    const deadline = Date.now() + timeoutMs;
    let last;
    while (Date.now() < deadline) {
      last = await this.execute(fn, ...args);
      if (last) return last;
      await sleep(100);
    }
    throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
  }

  /** Waits for `text` in the element `css`; the error says what it reads instead. */
  async waitText(css, text, timeoutMs = 15_000) {
    try {
      await this.waitFor((sel, t) => document.querySelector(sel)?.textContent.includes(t) || false, [css, text], `“${text}” in ${css}`, timeoutMs);
    } catch (err) {
      const actual = await this.execute((sel) => document.querySelector(sel)?.textContent ?? null, css).catch(() => '(page gone)');
      throw new Error(`${err.message}; it reads: ${JSON.stringify(actual)}`);
    }
  }

  async screenshot(file) {
    const b64 = await this.cmd('GET', '/screenshot');
    await fsp.mkdir(path.dirname(file), { recursive: true });
    await fsp.writeFile(file, Buffer.from(b64, 'base64'));
    return file;
  }

  async quit() {
    try { await this.cmd('DELETE', '', undefined, 30_000); } catch { /* Firefox already gone */ }
    await this.proc.stop();
  }
}
