// Herald admin console: queue, subscriptions, apps and delivery figures.
// Talks to the admin API of the Herald that serves this page.

const TOKEN_KEY = 'herald.adminToken';
// /admin -> /api/v1/ (also when the page is mounted under a path prefix).
const API = new URL('api/v1/', location.href).href.replace(/\/admin\/api\/v1\/$/, '/api/v1/');
const STATUSES = ['pending', 'in_flight', 'delivered', 'failed', 'gone', 'expired'];

const $ = (sel, root = document) => root.querySelector(sel);

/** Small DOM builder: h('td', {class: 'num'}, 'text', childNode). Text is never parsed as HTML. */
function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else if (k in e && typeof v !== 'string') e[k] = v;
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

// ------------------------------------------------------------------ API

let token = sessionStorage.getItem(TOKEN_KEY);

class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code;
    this.field = e.field;
  }
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json', Authorization: `Bearer ${token}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(API + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  } catch (err) {
    throw new ApiError(0, { error: { message: `Herald is not reachable (${err.message}).` } });
  }
  const text = await res.text();
  let data = null;
  if (text) { try { data = JSON.parse(text); } catch { data = null; } }
  if (res.status === 401) {
    signOut('The admin token was not accepted. Sign in again.');
    throw new ApiError(401, data);
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

// ------------------------------------------------------------------ feedback

const toast = $('#toast');
let toastTimer;
function say(message, kind = 'ok') {
  clearTimeout(toastTimer);
  toast.className = `status ${kind}`;
  toast.textContent = message;
  if (kind === 'ok') toastTimer = setTimeout(() => { toast.textContent = ''; }, 6000);
}
function fail(prefix, err) {
  if (err?.status === 401) return;
  say(`${prefix}: ${err?.message || err}`, 'error');
}

/** Runs fn with the button disabled, reporting failures. */
async function busy(button, fn, label) {
  if (button) { button.disabled = true; button.setAttribute('aria-busy', 'true'); }
  try {
    return await fn();
  } catch (err) {
    fail(label || 'Failed', err);
    return undefined;
  } finally {
    if (button) { button.disabled = false; button.removeAttribute('aria-busy'); }
  }
}

// ------------------------------------------------------------------ formatting

function fmtTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const diff = Math.round((d.getTime() - Date.now()) / 1000);
  const abs = Math.abs(diff);
  let rel;
  if (abs < 5) rel = 'now';
  else if (abs < 90) rel = `${abs} s`;
  else if (abs < 5400) rel = `${Math.round(abs / 60)} min`;
  else if (abs < 129600) rel = `${Math.round(abs / 3600)} h`;
  else rel = `${Math.round(abs / 86400)} d`;
  if (rel !== 'now') rel = diff > 0 ? `in ${rel}` : `${rel} ago`;
  return h('time', { datetime: iso, title: d.toLocaleString() }, rel);
}

function fmtMs(ms) {
  if (ms == null || Number.isNaN(Number(ms))) return '—';
  const n = Number(ms);
  if (n < 1000) return `${Math.round(n)} ms`;
  if (n < 60000) return `${(n / 1000).toFixed(n < 10000 ? 2 : 1)} s`;
  return `${(n / 60000).toFixed(1)} min`;
}

function fmtNum(n) { return n == null ? '—' : Number(n).toLocaleString(); }

function shortId(id) {
  const s = String(id ?? '');
  return h('code', { title: s }, s.length > 12 ? `${s.slice(0, 8)}…` : s);
}

function statusBadge(status) {
  return h('span', { class: `badge ${status}` }, String(status).replace('_', ' '));
}

function emptyRow(tbody, cols, text) {
  tbody.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: cols }, text)));
}

// ------------------------------------------------------------------ confirmation dialog

const dialog = $('#confirm');
function confirmDialog({ title, body, ok, typeToConfirm }) {
  $('#confirm-title').textContent = title;
  $('#confirm-body').replaceChildren(...[].concat(body).map((b) => (typeof b === 'string' ? h('p', null, b) : b)));
  $('#confirm-ok').textContent = ok;
  const wrap = $('#confirm-type-wrap');
  const input = $('#confirm-type');
  input.value = '';
  wrap.hidden = !typeToConfirm;
  $('#confirm-ok').disabled = !!typeToConfirm;
  if (typeToConfirm) {
    $('#confirm-type-label').textContent = `Type “${typeToConfirm}” to confirm`;
    input.oninput = () => { $('#confirm-ok').disabled = input.value.trim() !== typeToConfirm; };
  }
  return new Promise((resolve) => {
    dialog.returnValue = '';
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.showModal();
    (typeToConfirm ? input : $('#confirm-cancel')).focus();
  });
}

// ------------------------------------------------------------------ apps

let apps = [];

function appName(id) {
  const a = apps.find((x) => x.id === id || x.name === id);
  return a ? a.name : id;
}

function fillAppSelects() {
  for (const [sel, withAll] of [['#queue-app', true], ['#subs-app', false]]) {
    const select = $(sel);
    const prev = select.value;
    const opts = apps.map((a) => h('option', { value: a.id }, a.name));
    if (withAll) opts.unshift(h('option', { value: '' }, 'All apps'));
    else if (!apps.length) opts.unshift(h('option', { value: '' }, 'No apps yet'));
    select.replaceChildren(...opts);
    if ([...select.options].some((o) => o.value === prev)) select.value = prev;
  }
  updateClearButton();
}

function renderApps() {
  const tbody = $('#apps-table tbody');
  if (!apps.length) return emptyRow(tbody, 6, 'No apps yet. Create one above.');
  tbody.replaceChildren(...apps.map((a) => {
    const contact = h('input', { type: 'text', value: a.contact || '', 'aria-label': `Contact of ${a.name}`, spellcheck: 'false' });
    const conc = h('input', { type: 'number', min: '0', step: '1', value: String(a.max_concurrency ?? ''), 'aria-label': `Max concurrency of ${a.name}` });
    const save = h('button', { type: 'button', class: 'btn small', disabled: true }, 'Save');
    const dirty = () => { save.disabled = contact.value === (a.contact || '') && conc.value === String(a.max_concurrency ?? ''); };
    contact.addEventListener('input', dirty);
    conc.addEventListener('input', dirty);
    save.addEventListener('click', () => busy(save, async () => {
      const patch = {};
      if (contact.value !== (a.contact || '')) patch.contact = contact.value.trim();
      if (conc.value !== String(a.max_concurrency ?? '')) {
        const n = Number(conc.value);
        if (!Number.isInteger(n) || n < 0) throw new Error('Max concurrency must be a whole number, 0 or more.');
        patch.max_concurrency = n;
      }
      const updated = await api('PATCH', `apps/${encodeURIComponent(a.id)}`, patch);
      Object.assign(a, updated || patch);
      say(`Saved ${a.name}.`);
      renderApps();
    }, `Could not save ${a.name}`));
    const regen = h('button', { type: 'button', class: 'btn small danger' }, 'Regenerate credentials');
    regen.addEventListener('click', () => regenerate(a, regen));
    const paused = a.max_concurrency === 0 ? h('span', { class: 'badge gone' }, 'paused') : null;
    return h('tr', { 'data-app': a.id },
      h('td', { 'data-label': 'App', class: 'wrap' }, h('strong', null, a.name), h('br'), h('code', { class: 'small muted' }, a.id),
        a.last_config_error ? h('div', { class: 'status error small' }, `Configuration error: ${a.last_config_error}`) : null),
      h('td', { 'data-label': 'Contact' }, contact),
      h('td', { 'data-label': 'Max concurrency' }, h('div', { class: 'btn-row' }, conc, paused)),
      h('td', { 'data-label': 'VAPID public key', class: 'wrap' }, h('code', { class: 'small', title: a.vapid_public_key }, a.vapid_public_key ? `${a.vapid_public_key.slice(0, 16)}…` : '—')),
      h('td', { 'data-label': 'Created' }, fmtTime(a.created_at)),
      h('td', { 'data-label': '' }, h('div', { class: 'btn-row' }, save, regen)));
  }));
}

async function loadApps() {
  const data = await api('GET', 'apps');
  apps = (data && data.apps) || [];
  apps.sort((x, y) => String(x.name).localeCompare(String(y.name)));
  renderApps();
  fillAppSelects();
}

async function regenerate(a, button) {
  const ok = await confirmDialog({
    title: `Regenerate credentials of “${a.name}”?`,
    body: [
      'Herald creates a new VAPID key pair for this app and permanently deletes:',
      h('ul', null,
        h('li', null, h('strong', null, 'every push subscription of the app'), ' — all users\' devices stop receiving notifications and must opt in again;'),
        h('li', null, h('strong', null, 'every queued delivery of the app'), ' — notifications not yet delivered are lost.')),
      'The app\'s API key stays the same. This cannot be undone.',
    ],
    ok: 'Regenerate credentials',
    typeToConfirm: a.name,
  });
  if (!ok) return;
  await busy(button, async () => {
    const r = await api('POST', `apps/${encodeURIComponent(a.id)}/credentials/regenerate`);
    say(`New credentials for ${a.name}: ${fmtNum(r?.subscriptions_removed)} subscriptions and ${fmtNum(r?.deliveries_removed)} queued deliveries removed.`);
    await Promise.all([loadApps(), loadQueue()]);
  }, `Could not regenerate the credentials of ${a.name}`);
}

$('#app-create').addEventListener('submit', (e) => {
  e.preventDefault();
  const form = e.currentTarget;
  const button = form.querySelector('button[type="submit"]');
  busy(button, async () => {
    const name = form.name.value.trim();
    const contact = form.contact.value.trim();
    const created = await api('POST', 'apps', { name, contact });
    form.reset();
    showApiKey(created);
    await loadApps();
  }, 'Could not create the app');
});

function showApiKey(created) {
  const box = $('#app-created');
  const code = h('code', { id: 'new-api-key' }, created.api_key);
  const copy = h('button', { type: 'button', class: 'btn small' }, 'Copy');
  copy.addEventListener('click', async () => {
    try { await navigator.clipboard.writeText(created.api_key); copy.textContent = 'Copied'; } catch {
      const r = document.createRange(); r.selectNodeContents(code);
      getSelection().removeAllRanges(); getSelection().addRange(r);
      copy.textContent = 'Selected — press Ctrl+C';
    }
  });
  const dismiss = h('button', { type: 'button', class: 'btn small' }, 'I have copied it');
  dismiss.addEventListener('click', () => { box.hidden = true; box.replaceChildren(); });
  box.replaceChildren(
    h('p', null, h('strong', null, `App “${created.name}” created (id `, h('code', null, created.id), ').')),
    h('p', null, 'Copy its API key now: Herald shows it only this once. Your app\'s backend uses it to register subscriptions and send notifications.'),
    h('div', { class: 'secret' }, code, copy),
    dismiss);
  box.hidden = false;
}

// ------------------------------------------------------------------ queue

function queueQuery() {
  const q = new URLSearchParams();
  const app = $('#queue-app').value;
  const status = $('#queue-status').value;
  if (app) q.set('app', app);
  if (status) q.set('status', status);
  q.set('limit', $('#queue-limit').value);
  return q.toString();
}

function updateClearButton() {
  const app = $('#queue-app').value;
  const b = $('#queue-clear');
  b.disabled = !app;
  b.title = app ? `Remove every delivery of ${appName(app)} from the queue` : 'Choose an app first';
  b.textContent = app ? `Clear ${appName(app)}'s queue` : 'Clear app\'s queue';
}

async function loadQueue() {
  const data = await api('GET', `queue?${queueQuery()}`);
  const rows = (data && data.deliveries) || [];
  const tbody = $('#queue-table tbody');
  const counts = {};
  for (const d of rows) counts[d.status] = (counts[d.status] || 0) + 1;
  $('#queue-summary').textContent = rows.length
    ? `${rows.length} deliveries shown: ${STATUSES.filter((s) => counts[s]).map((s) => `${counts[s]} ${s.replace('_', ' ')}`).join(', ')}.`
    : '';
  if (!rows.length) return emptyRow(tbody, 10, 'The queue is empty for this filter.');
  tbody.replaceChildren(...rows.map((d) => {
    const remove = h('button', { type: 'button', class: 'btn small danger', 'aria-label': `Remove delivery ${d.id}` }, 'Remove');
    remove.addEventListener('click', async () => {
      const ok = await confirmDialog({
        title: 'Remove this delivery?',
        body: [`“${d.title ?? ''}” to ${d.user ?? 'unknown user'} (${d.endpoint_host ?? ''}) will not be delivered.`],
        ok: 'Remove',
      });
      if (!ok) return;
      await busy(remove, async () => {
        const r = await api('DELETE', `queue/${encodeURIComponent(d.id)}`);
        say(`Removed ${fmtNum(r?.removed ?? 1)} delivery.`);
        await loadQueue();
      }, 'Could not remove the delivery');
    });
    return h('tr', { 'data-delivery': d.id },
      h('td', { 'data-label': 'ID' }, shortId(d.id)),
      h('td', { 'data-label': 'App' }, appName(d.app)),
      h('td', { 'data-label': 'User' }, d.user ?? '—'),
      h('td', { 'data-label': 'Title', class: 'wrap' }, d.title ?? '—'),
      h('td', { 'data-label': 'Endpoint host', class: 'wrap host' }, d.endpoint_host ?? '—'),
      h('td', { 'data-label': 'Status' }, statusBadge(d.status)),
      h('td', { 'data-label': 'Attempts', class: 'num' }, fmtNum(d.attempts)),
      h('td', { 'data-label': 'Last error', class: 'wrap small' }, d.last_error || '—'),
      h('td', { 'data-label': 'Next attempt' }, d.status === 'pending' || d.status === 'in_flight' ? fmtTime(d.next_attempt_at) : '—'),
      h('td', { 'data-label': '' }, remove));
  }));
}

$('#queue-filters').addEventListener('submit', (e) => {
  e.preventDefault();
  busy(e.submitter, loadQueue, 'Could not load the queue');
});
for (const id of ['#queue-app', '#queue-status', '#queue-limit']) {
  $(id).addEventListener('change', () => { updateClearButton(); busy(null, loadQueue, 'Could not load the queue'); });
}

$('#queue-push').addEventListener('click', (e) => busy(e.currentTarget, async () => {
  const r = await api('POST', 'queue/push');
  say(`Push now: ${fmtNum(r?.due)} deliveries due.`);
  await loadQueue();
}, 'Push now failed'));

$('#queue-force').addEventListener('click', (e) => busy(e.currentTarget, async () => {
  const r = await api('POST', 'queue/force');
  say(`Force: ${fmtNum(r?.forced)} deliveries made due now.`);
  await loadQueue();
}, 'Force failed'));

$('#queue-clear').addEventListener('click', async (e) => {
  const button = e.currentTarget;
  const app = $('#queue-app').value;
  if (!app) return;
  const ok = await confirmDialog({
    title: `Clear the queue of “${appName(app)}”?`,
    body: [`Every delivery of ${appName(app)} in the queue is removed; notifications not yet delivered are lost.`],
    ok: 'Clear queue',
  });
  if (!ok) return;
  await busy(button, async () => {
    const r = await api('DELETE', `queue?app=${encodeURIComponent(app)}`);
    say(`Removed ${fmtNum(r?.removed)} deliveries of ${appName(app)}.`);
    await loadQueue();
  }, 'Could not clear the queue');
  updateClearButton();
});

// ------------------------------------------------------------------ subscriptions

async function loadSubs() {
  const app = $('#subs-app').value;
  const tbody = $('#subs-table tbody');
  if (!app) { $('#subs-summary').textContent = ''; return emptyRow(tbody, 8, 'Choose an app.'); }
  const user = $('#subs-user').value.trim();
  const q = user ? `?user=${encodeURIComponent(user)}` : '';
  const data = await api('GET', `apps/${encodeURIComponent(app)}/subscriptions${q}`);
  const rows = (data && data.subscriptions) || [];
  $('#subs-summary').textContent = `${rows.length} subscription${rows.length === 1 ? '' : 's'} of ${appName(app)}${user ? ` for user “${user}”` : ''}.`;
  if (!rows.length) return emptyRow(tbody, 8, 'No subscriptions.');
  tbody.replaceChildren(...rows.map((s) => {
    const del = h('button', { type: 'button', class: 'btn small danger', 'aria-label': `Delete subscription ${s.id}` }, 'Delete');
    del.addEventListener('click', async () => {
      const ok = await confirmDialog({
        title: 'Delete this subscription?',
        body: [`The device of ${s.user} at ${s.endpoint_host} stops receiving notifications of ${appName(app)} until it opts in again.`],
        ok: 'Delete',
      });
      if (!ok) return;
      await busy(del, async () => {
        await api('DELETE', `apps/${encodeURIComponent(app)}/subscriptions/${encodeURIComponent(s.id)}`);
        say('Subscription deleted.');
        await loadSubs();
      }, 'Could not delete the subscription');
    });
    return h('tr', { 'data-subscription': s.id },
      h('td', { 'data-label': 'ID' }, shortId(s.id)),
      h('td', { 'data-label': 'User' }, s.user),
      h('td', { 'data-label': 'Endpoint host' }, s.endpoint_host),
      h('td', { 'data-label': 'Encoding' }, s.content_encoding || '—'),
      h('td', { 'data-label': 'Topics', class: 'wrap' }, (s.topics || []).length ? s.topics.join(', ') : '—'),
      h('td', { 'data-label': 'Created' }, fmtTime(s.created_at)),
      h('td', { 'data-label': 'Updated' }, fmtTime(s.updated_at)),
      h('td', { 'data-label': '' }, del));
  }));
}

$('#subs-filters').addEventListener('submit', (e) => {
  e.preventDefault();
  busy(e.submitter, loadSubs, 'Could not load the subscriptions');
});
$('#subs-app').addEventListener('change', () => busy(null, loadSubs, 'Could not load the subscriptions'));

// ------------------------------------------------------------------ stats

async function loadStats() {
  const data = await api('GET', 'stats');
  const q = (data && data.queue) || {};
  $('#stats-tiles').replaceChildren(
    h('div', { class: 'tile' }, h('div', { class: 'value' }, fmtNum(q.pending ?? 0)), h('div', { class: 'label' }, 'Pending')),
    h('div', { class: 'tile' }, h('div', { class: 'value' }, fmtNum(q.in_flight ?? 0)), h('div', { class: 'label' }, 'In flight')));
  const vendors = (data && data.vendors) || [];
  const names = { fcm: 'Google (FCM)', apple: 'Apple', mozilla: 'Mozilla', wns: 'Microsoft (WNS)', other: 'Other' };
  const tbody = $('#stats-table tbody');
  if (!vendors.length) return emptyRow(tbody, 7, 'No deliveries yet.');
  tbody.replaceChildren(...vendors.map((v) => h('tr', { 'data-vendor': v.vendor },
    h('th', { scope: 'row', 'data-label': 'Push service' }, names[v.vendor] || v.vendor),
    h('td', { 'data-label': 'Delivered', class: 'num' }, fmtNum(v.delivered)),
    h('td', { 'data-label': 'Failed', class: 'num' }, fmtNum(v.failed)),
    h('td', { 'data-label': 'Gone', class: 'num' }, fmtNum(v.gone)),
    h('td', { 'data-label': 'Expired', class: 'num' }, fmtNum(v.expired)),
    h('td', { 'data-label': 'Avg. wait in queue', class: 'num' }, fmtMs(v.avg_queue_wait_ms)),
    h('td', { 'data-label': 'Avg. delivery time', class: 'num' }, fmtMs(v.avg_delivery_ms)))));
}

$('#stats-refresh').addEventListener('click', (e) => busy(e.currentTarget, loadStats, 'Could not load the figures'));

// ------------------------------------------------------------------ session

function showConsole(on) {
  $('#login').hidden = on;
  $('#console').hidden = !on;
  $('#nav').hidden = !on;
  $('#logout').hidden = !on;
}

function signOut(message) {
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  showConsole(false);
  const err = $('#login-error');
  err.textContent = message || '';
  $('#login-token').focus();
}

async function start() {
  showConsole(true);
  try {
    await loadApps();
  } catch (err) {
    if (err.status !== 401) fail('Could not load the apps', err);
    if (err.status === 401) return;
  }
  await Promise.all([
    busy(null, loadQueue, 'Could not load the queue'),
    busy(null, loadStats, 'Could not load the figures'),
    busy(null, loadSubs, 'Could not load the subscriptions'),
  ]);
}

$('#login-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const value = $('#login-token').value.trim();
  if (!value) return;
  token = value;
  sessionStorage.setItem(TOKEN_KEY, value);
  $('#login-token').value = '';
  $('#login-error').textContent = '';
  start();
});

$('#logout').addEventListener('click', () => signOut(''));

if (token) start();
else signOut('');
