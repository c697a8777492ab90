// End to end with a real browser: headless Firefox ESR opts in on Herald's
// settings page, Herald encrypts and sends through a local push service that
// speaks Mozilla's protocols (push-server.mjs), and Firefox decrypts the push
// in Herald's service worker.
//
//   node tests/browser/firefox/e2e.mjs
//
// Needs /usr/bin/firefox-esr (FIREFOX_PATH), geckodriver (GECKODRIVER),
// openssl and a built Herald (the debug build, or HERALD_BIN); see
// scripts/install-browser-deps.sh. Logs and screenshots go to
// test-artifacts/browser/firefox-*.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { ROOT, freePort, removeOnExit, startHerald } from '../lib/herald.mjs';
import { makeCerts } from './certs.mjs';
import { startPushServer } from './push-server.mjs';
import { startFirefox } from './webdriver.mjs';

const ARTIFACTS = path.join(ROOT, 'test-artifacts/browser');
const LOG = {
  herald: path.join(ARTIFACTS, 'firefox-herald.log'),
  firefox: path.join(ARTIFACTS, 'firefox-geckodriver.log'),
  push: path.join(ARTIFACTS, 'firefox-push-service.log'),
};
const T = { timeout: 120_000 };
const USER = 'firefox-user';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let dir;
let pushLog;
let push;
let herald;
let ff;
let app;
let userToken;

/** Herald's backend API with the app's key. */
const backend = (method, p, body) => herald.api(method, `apps/${app.id}/${p}`, body, app.api_key);

/** Runs fn; on failure keeps a screenshot of the page and the push service's last events. */
async function step(name, fn) {
  try {
    await fn();
  } catch (err) {
    await ff?.screenshot(path.join(ARTIFACTS, `firefox-${name}-failed.png`)).catch(() => {});
    err.message += `\npush service events: ${JSON.stringify(push?.events.slice(-12), null, 1)}`;
    throw err;
  }
}

/** The payloads the service worker announced to the page (see static/sw.js, herald:push). */
const received = () => ff.execute(() => window.heraldPushes || null);

function waitReceived(id, what, timeoutMs = 30_000) {
  return ff.waitFor((wanted) => (window.heraldPushes || []).find((p) => p && p.id === wanted) || null, [id], what, timeoutMs);
}

/** The notifications Herald's service worker registration shows. */
const shownNotifications = () => ff.execute(async () => {
  const reg = await navigator.serviceWorker.ready;
  return (await reg.getNotifications()).map((n) => ({ title: n.title, body: n.body, tag: n.tag, data: n.data }));
});

async function send(notification) {
  const res = await backend('POST', 'notifications', { to: { user: USER }, ...notification });
  assert.equal(res.status, 202);
  assert.equal(res.body.deliveries, 1, 'one subscribed device');
  return res.body.id;
}

/** The push service's record of a notification, once Firefox has answered it. */
async function pushAndAck(afterIndex, what) {
  const pushed = await push.waitFor((ev) => ev.slice(afterIndex).find((e) => e.type === 'push'), `Herald to push ${what}`);
  const ack = await push.waitFor((ev) => ev.find((e) => e.type === 'ack' && e.version === pushed.version), `Firefox to acknowledge ${what}`);
  return { pushed, ack };
}

before(async () => {
  await fs.mkdir(ARTIFACTS, { recursive: true });
  for (const f of Object.values(LOG)) await fs.rm(f, { force: true });
  for (const f of await fs.readdir(ARTIFACTS)) {
    if (/^firefox-.*-failed\.png$/.test(f)) await fs.rm(path.join(ARTIFACTS, f), { force: true });
  }
  dir = removeOnExit(await fs.mkdtemp(path.join(os.tmpdir(), 'herald-firefox-')));

  const certs = await makeCerts(path.join(dir, 'certs'));
  pushLog = createWriteStream(LOG.push, { flags: 'a' });
  push = await startPushServer({
    tls: { key: certs.key, cert: certs.cert },
    log: (line) => pushLog.write(`${new Date().toISOString()} ${line}\n`),
  });

  herald = await startHerald({
    dir: path.join(dir, 'herald'),
    logFile: LOG.herald,
    env: {
      HERALD_ALLOWED_PUSH_HOSTS: 'localhost',
      HERALD_EXTRA_CA_FILES: certs.caFile,
      HERALD_NO_PROXY: 'localhost,127.0.0.1',
    },
  });
  app = (await herald.api('POST', 'apps', { name: 'firefox-e2e', contact: 'mailto:e2e@example.com' })).body;
  userToken = (await herald.api('POST', `apps/${app.id}/user-tokens`, { user: USER }, app.api_key)).body.token;

  const nowhere = await freePort();
  ff = await startFirefox({
    logFile: LOG.firefox,
    profileRoot: dir,
    prefs: {
      // Firefox's push client talks to the local push service ...
      'dom.push.serverURL': push.wsUrl,
      'dom.push.testing.allowInsecureServerURL': true,
      // ... which WebDriver sessions turn off by default.
      'dom.push.connection.enabled': true,
      // Notifications are allowed without a prompt.
      'permissions.default.desktop-notification': 1,
      // Headless, the system backend fails showNotification, and Firefox drops
      // a subscription whose pushes show nothing.
      'alerts.useSystemBackend': false,
      // Everything else Firefox would fetch goes to a proxy that is not there.
      'network.proxy.type': 1,
      'network.proxy.http': '127.0.0.1',
      'network.proxy.http_port': nowhere,
      'network.proxy.ssl': '127.0.0.1',
      'network.proxy.ssl_port': nowhere,
      // Diagnostics for the log.
      'dom.push.loglevel': 'debug',
      'devtools.console.stdout.content': true,
      'devtools.console.stdout.chrome': true,
    },
  });
});

after(async () => {
  await ff?.quit();
  await herald?.stop();
  await push?.close();
  pushLog?.end();
  if (dir) await fs.rm(dir, { recursive: true, force: true });
});

describe('Firefox end to end', () => {
  let registration;

  test('the settings page opts Firefox in through the push service and registers at Herald', T, () => step('opt-in', async () => {
    await ff.navigate(`${herald.url}/settings?app=${encodeURIComponent(app.id)}&token=${encodeURIComponent(userToken)}`);
    await ff.waitText('#push-status', 'off on this device');
    await ff.click('#push-switch');
    await ff.waitText('#push-status', 'enabled on this device', 30_000);
    await ff.screenshot(path.join(ARTIFACTS, 'firefox-settings-subscribed.png'));

    registration = push.events.find((e) => e.type === 'register');
    assert.ok(registration, 'Firefox registered a channel at the push service');
    assert.equal(registration.key.replace(/=+$/, ''), app.vapid_public_key, 'subscribed with the app’s VAPID key');

    const endpoint = await ff.execute(async () => (await (await navigator.serviceWorker.ready).pushManager.getSubscription())?.endpoint);
    assert.equal(endpoint, registration.pushEndpoint);

    const subs = (await backend('GET', `subscriptions?user=${USER}`)).body.subscriptions;
    assert.equal(subs.length, 1, 'Herald has the subscription');
    assert.equal(subs[0].vendor, 'mozilla');
    assert.equal(subs[0].content_encoding, 'aes128gcm');
  }));

  test('Herald sends and Firefox’s service worker receives exactly that payload, and shows it', T, () => step('deliver', async () => {
    assert.ok(registration, 'needs the subscription of the previous test');
    await ff.execute(() => {
      window.heraldPushes = [];
      navigator.serviceWorker.addEventListener('message', (e) => {
        if (e.data && e.data.type === 'herald:push') window.heraldPushes.push(e.data.payload);
      });
      navigator.serviceWorker.startMessages();
      return true;
    });

    const sent = {
      title: 'Reimbursement approved ✓',
      body: '€42 is on its way — ünïcödé, 日本語, 🚀',
      target_url: `${herald.url}/settings?from=push`,
      tag: 'reimbursement-42',
      type: 'success',
      data: { amount: 42, items: ['taxi', 'hotel'], nested: { ok: true, none: null }, note: 'x'.repeat(1500) },
    };
    const from = push.events.length;
    const id = await send({ ...sent, ttl: 3600, urgency: 'high' });
    const { pushed, ack } = await pushAndAck(from, 'the notification');
    assert.equal(pushed.channelID, registration.channelID);
    assert.equal(pushed.encoding, 'aes128gcm');
    // Herald sends the time left until the notification expires.
    assert.ok(pushed.ttl > 3500 && pushed.ttl <= 3600, `TTL ${pushed.ttl}`);
    assert.equal(pushed.urgency, 'high');
    assert.equal(ack.code, 100, 'Firefox acknowledges a delivered push with code 100');

    const got = await waitReceived(id, 'the service worker to announce the push');
    assert.deepEqual(got, { id, ...sent }, 'the service worker receives exactly the payload Herald sent');
    assert.equal((await received()).length, 1, 'delivered once');

    const shown = await shownNotifications();
    const n = shown.find((x) => x.tag === sent.tag);
    assert.ok(n, `a notification is shown; showing: ${JSON.stringify(shown)}`);
    assert.equal(n.title, sent.title);
    assert.equal(n.body, sent.body);
    assert.deepEqual(n.data, { ...sent.data, target_url: sent.target_url, id, type: 'success' });
    await ff.screenshot(path.join(ARTIFACTS, 'firefox-delivered.png'));

    const status = (await backend('GET', `notifications/${id}`)).body;
    assert.equal(status.delivered, 1, `Herald reports it delivered: ${JSON.stringify(status)}`);
  }));

  test('a tampered body is refused by Firefox; the next intact push arrives', T, () => step('tampered', async () => {
    assert.ok(registration, 'needs the subscription of the previous tests');
    const before = (await received()).length;

    push.tamperNext();
    let from = push.events.length;
    const bad = await send({ title: 'Tampered', body: 'must not arrive', tag: 'tampered' });
    const refused = await pushAndAck(from, 'the tampered notification');
    assert.equal(refused.pushed.tampered, true);
    assert.equal(refused.ack.code, 101, 'Firefox answers a push it cannot decrypt with code 101 (decryption error)');
    await sleep(3000);
    assert.equal((await received()).find((p) => p?.id === bad), undefined, 'the tampered push reached the service worker');

    from = push.events.length;
    const good = await send({ title: 'After tampering', body: 'intact', tag: 'intact' });
    const delivered = await pushAndAck(from, 'the intact notification');
    assert.equal(delivered.pushed.tampered, false);
    assert.equal(delivered.ack.code, 100);
    const got = await waitReceived(good, 'the intact push after the tampered one');
    assert.deepEqual(got, { id: good, title: 'After tampering', body: 'intact', tag: 'intact' });

    const all = await received();
    assert.equal(all.length, before + 1, `only the intact push arrived: ${JSON.stringify(all.map((p) => p?.title))}`);
    const shown = await shownNotifications();
    assert.ok(shown.some((x) => x.title === 'After tampering'), 'the intact push is shown');
    assert.ok(!shown.some((x) => x.title === 'Tampered'), 'nothing is shown for the tampered push');
  }));

  test('switching off unsubscribes at the push service and at Herald', T, () => step('opt-out', async () => {
    assert.ok(registration, 'needs the subscription of the previous tests');
    await ff.click('#push-switch');
    await ff.waitText('#push-status', 'off on this device', 30_000);
    await push.waitFor((ev) => ev.find((e) => e.type === 'unregister' && e.channelID === registration.channelID),
      'Firefox to unregister the channel');
    const subs = (await backend('GET', `subscriptions?user=${USER}`)).body.subscriptions;
    assert.equal(subs.length, 0, 'Herald forgot the subscription');
    await ff.screenshot(path.join(ARTIFACTS, 'firefox-settings-off.png'));
  }));
});
