// Starts a real Herald (debug/herald under the cargo target directory, or
// HERALD_BIN) in a temporary directory with its own SQLite database, keys
// and admin token, and helpers for processes the browser tests start.
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
// Where `cargo build` put it: target/, or CARGO_TARGET_DIR when set.
const TARGET_DIR = process.env.CARGO_TARGET_DIR
  ? path.resolve(ROOT, process.env.CARGO_TARGET_DIR)
  : path.join(ROOT, 'target');
export const HERALD_BIN = process.env.HERALD_BIN || path.join(TARGET_DIR, 'debug/herald');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// Every process started here runs in its own process group. When this process
// is stopped by a signal, each group gets SIGTERM and a few seconds to clean
// up; whatever is left when this process exits gets SIGKILL.
const children = new Set();
function killGroup(child, signal = 'SIGTERM') {
  try { process.kill(-child.pid, signal); } catch { /* already gone */ }
}
const tempDirs = new Set();
process.on('exit', () => {
  for (const p of children) killGroup(p.child, 'SIGKILL');
  for (const d of tempDirs) { try { fs.rmSync(d, { recursive: true, force: true }); } catch { /* best effort */ } }
});

/** Removes `dir` when this process exits. */
export function removeOnExit(dir) {
  tempDirs.add(dir);
  return dir;
}
let stopping = false;
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, async () => {
    if (stopping) return;
    stopping = true;
    await Promise.race([Promise.all([...children].map((p) => p.stop())), sleep(10_000)]);
    process.exit(128 + os.constants.signals[sig]);
  });
}

/**
 * Spawns `cmd` in its own process group with stdout and stderr appended to
 * `logFile` (or shared with this process without one). `stop()` sends SIGTERM
 * to the group, then SIGKILL after `graceMs`.
 */
export function startProcess(cmd, args, { env, cwd, logFile, graceMs = 5000 } = {}) {
  const out = logFile ? fs.openSync(logFile, 'a') : null;
  const child = spawn(cmd, args, { env, cwd, detached: true, stdio: out === null ? 'inherit' : ['ignore', out, out] });
  if (out !== null) fs.closeSync(out);
  let exited = null;
  const done = new Promise((resolve) => {
    child.once('exit', (code, signal) => { exited = { code, signal }; children.delete(handle); resolve(exited); });
    child.once('error', (err) => { exited = { code: null, signal: null, error: err }; children.delete(handle); resolve(exited); });
  });
  const handle = {
    child,
    get exited() { return exited; },
    done,
    async stop() {
      if (exited) return exited;
      killGroup(child, 'SIGTERM');
      const timer = setTimeout(() => killGroup(child, 'SIGKILL'), graceMs);
      await done;
      clearTimeout(timer);
      killGroup(child, 'SIGKILL'); // whatever it left behind in its group
      return exited;
    },
  };
  children.add(handle);
  return handle;
}

/** Polls `url` until it answers 200, the process exits, or `timeoutMs` passes. */
export async function waitHttp(url, proc, { timeoutMs = 30_000, what = url, logFile } = {}) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc?.exited) {
      const tail = logFile ? (await fsp.readFile(logFile, 'utf8').catch(() => '')).split('\n').slice(-20).join('\n') : '';
      throw new Error(`${what} exited (${JSON.stringify(proc.exited)}) before answering ${url}\n${tail}`);
    }
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
      if (res.ok) return;
    } catch { /* not yet */ }
    await sleep(100);
  }
  throw new Error(`${what} did not answer ${url} within ${timeoutMs} ms`);
}

/**
 * Starts Herald on a free port. `env` adds settings (e.g.
 * HERALD_ALLOWED_PUSH_HOSTS). Pushes go through a proxy that does not exist
 * unless `env` says otherwise, so nothing leaves this machine.
 * Resolves to { url, adminToken, dir, logFile, api(method, path, body, token), stop() }.
 */
export async function startHerald({ env = {}, logFile, dir } = {}) {
  if (!fs.existsSync(HERALD_BIN)) throw new Error(`${HERALD_BIN} does not exist: run cargo build first`);
  dir = dir || removeOnExit(await fsp.mkdtemp(path.join(os.tmpdir(), 'herald-')));
  await fsp.mkdir(dir, { recursive: true });
  logFile = logFile || path.join(dir, 'herald.log');
  const port = await freePort();
  const adminToken = `admin-${crypto.randomBytes(18).toString('base64url')}`;
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HERALD_')));
  const proc = startProcess(HERALD_BIN, [], {
    cwd: dir,
    logFile,
    env: {
      ...base,
      HERALD_BIND: `127.0.0.1:${port}`,
      HERALD_DATABASE_URL: `sqlite://${path.join(dir, 'herald.db')}`,
      HERALD_KEYS_DIR: path.join(dir, 'keys'),
      HERALD_ADMIN_TOKEN: adminToken,
      HERALD_STATIC_DIR: path.join(ROOT, 'static'),
      HERALD_PROXY: `http://127.0.0.1:${await freePort()}`,
      HERALD_LOG: 'info,herald=debug,sqlx=warn',
      NO_COLOR: '1',
      ...env,
    },
  });
  const url = `http://127.0.0.1:${port}`;
  await waitHttp(`${url}/healthz`, proc, { what: 'Herald', logFile });

  async function api(method, p, body, token = adminToken, headers = {}) {
    const res = await fetch(`${url}/api/v1/${p}`, {
      method,
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json', ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`Herald ${method} /api/v1/${p}: ${res.status} ${text}`);
    return { status: res.status, body: text ? JSON.parse(text) : null };
  }

  return {
    url,
    adminToken,
    dir,
    logFile,
    proc,
    api,
    async stop() {
      await proc.stop();
    },
  };
}
