// Runs a private D-Bus session bus with a stand-in notification server, so
// that tests can see the notifications Chromium shows and click them.
import { spawn, spawnSync } from 'node:child_process';
import readline from 'node:readline';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PYTHON = '/usr/bin/python3';

/** Why the fake notification server cannot run here, or null when it can. */
export function notificationServerUnavailable() {
  const dbus = spawnSync('dbus-daemon', ['--version'], { stdio: 'ignore' });
  if (dbus.error || dbus.status !== 0) return 'dbus-daemon is not installed (apt-get install dbus)';
  const py = spawnSync(PYTHON, ['-c', 'import dbus, gi; from gi.repository import GLib'], { stdio: 'ignore' });
  if (py.error || py.status !== 0) return 'python3-dbus / python3-gi are not installed';
  return null;
}

function waitLine(stream, test, timeoutMs, what) {
  return new Promise((resolve, reject) => {
    const rl = readline.createInterface({ input: stream });
    const timer = setTimeout(() => { rl.close(); reject(new Error(`timed out waiting for ${what}`)); }, timeoutMs);
    rl.on('line', (line) => {
      if (test(line)) { clearTimeout(timer); rl.close(); resolve(line); }
    });
  });
}

export async function startNotificationServer() {
  const bus = spawn('dbus-daemon', ['--session', '--nofork', '--nopidfile', '--print-address=1'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const address = (await waitLine(bus.stdout, (l) => l.startsWith('unix:'), 10000, 'the D-Bus address')).trim();
  const env = { ...process.env, DBUS_SESSION_BUS_ADDRESS: address };
  const daemon = spawn(PYTHON, [path.join(HERE, 'fake-notifications.py')], { env, stdio: ['pipe', 'pipe', 'inherit'] });

  const shown = [];
  const closed = new Set();
  const waiters = [];
  const rl = readline.createInterface({ input: daemon.stdout });
  let ready;
  const readyPromise = new Promise((r) => { ready = r; });
  rl.on('line', (line) => {
    let msg;
    try { msg = JSON.parse(line); } catch { return; }
    if (msg.event === 'ready') ready();
    if (msg.event === 'notify') {
      const i = shown.findIndex((n) => n.id === msg.id);
      if (i >= 0) shown.splice(i, 1);
      shown.push(msg);
      closed.delete(msg.id);
    }
    if (msg.event === 'close') closed.add(msg.id);
    for (const w of [...waiters]) w();
  });
  let startTimer;
  await Promise.race([readyPromise, new Promise((_, rej) => {
    startTimer = setTimeout(() => rej(new Error('notification server did not start')), 10000);
  })]).finally(() => clearTimeout(startTimer));

  const onChange = (check, timeoutMs, what) => new Promise((resolve, reject) => {
    const tryIt = () => {
      const v = check();
      if (v) { waiters.splice(waiters.indexOf(tryIt), 1); clearTimeout(timer); resolve(v); }
    };
    const timer = setTimeout(() => { waiters.splice(waiters.indexOf(tryIt), 1); reject(new Error(`timed out waiting for ${what}`)); }, timeoutMs);
    waiters.push(tryIt);
    tryIt();
  });

  return {
    env: { DBUS_SESSION_BUS_ADDRESS: address },
    /** Every notification shown so far (latest version of each id). */
    get shown() { return shown.slice(); },
    isClosed: (id) => closed.has(id),
    /** Waits for a notification whose summary (title) matches. */
    waitFor: (summary, timeoutMs = 10000) =>
      onChange(() => shown.find((n) => n.summary === summary && !closed.has(n.id)), timeoutMs, `notification “${summary}”`),
    /** Waits for a shown notification that satisfies `pred`. */
    waitForMatch: (pred, what, timeoutMs = 10000) =>
      onChange(() => shown.find((n) => pred(n) && !closed.has(n.id)), timeoutMs, what),
    waitClosed: (id, timeoutMs = 10000) => onChange(() => closed.has(id), timeoutMs, `notification ${id} to close`),
    click: (id) => { daemon.stdin.write(`click ${id}\n`); },
    async stop() {
      daemon.stdin.end();
      daemon.kill();
      bus.kill();
    },
  };
}
