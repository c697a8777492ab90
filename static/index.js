// Demo page: admin token -> "demo" app -> user token for "me" -> opt in -> test notification.

const TOKEN_KEY = 'herald.adminToken';
const APP_NAME = 'demo';
const APP_CONTACT = 'mailto:admin@example.com';
const USER = 'me';
const API = new URL('api/v1/', location.href).href;

const $ = (sel) => document.querySelector(sel);

let adminToken = sessionStorage.getItem(TOKEN_KEY);
let app = null;
let userToken = null;

function setStatus(id, kind, ...parts) {
  const box = $(id);
  box.className = `status${kind ? ` ${kind}` : ''}`;
  box.replaceChildren(...parts.map((p) => {
    if (p instanceof Node) return p;
    const e = document.createElement('p');
    e.textContent = p;
    return e;
  }));
}

function node(tag, text, attrs = {}) {
  const e = document.createElement(tag);
  if (text != null) e.textContent = text;
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function step(id, state) {
  const li = $(id);
  li.classList.toggle('done', state === 'done');
  li.classList.toggle('locked', state === 'locked');
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json', Authorization: `Bearer ${adminToken}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(API + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  const text = await res.text();
  let data = null;
  if (text) { try { data = JSON.parse(text); } catch { data = null; } }
  if (!res.ok) {
    const err = new Error((data && data.error && data.error.message) || `HTTP ${res.status}`);
    err.status = res.status;
    err.code = data && data.error && data.error.code;
    throw err;
  }
  return data;
}

// ---------------------------------------------------------------- step 0: health

fetch(new URL('healthz', location.href), { cache: 'no-store' }).then((res) => {
  if (!res.ok) throw new Error(`HTTP ${res.status}`);
  setStatus('#health', 'ok', 'Herald is running.');
}).catch((err) => {
  setStatus('#health', 'error', `Herald does not answer its health check (${err.message}).`);
});

if (new URLSearchParams(location.search).get('from') === 'notification') {
  const note = node('div', 'You opened this page by clicking the test notification: the whole round trip works.', { class: 'status ok', role: 'status' });
  $('#health').after(note);
}

// ---------------------------------------------------------------- step 1: admin token

$('#token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const value = $('#admin-token').value.trim();
  if (!value) return;
  adminToken = value;
  run();
});

async function run() {
  const submit = $('#token-form button');
  submit.disabled = true;
  try {
    // Step 2: find or create the "demo" app (this also checks the admin token).
    step('#step-app', '');
    setStatus('#app-status', '', 'Looking for the app “demo”…');
    let list;
    try {
      list = await api('GET', 'apps');
    } catch (err) {
      if (err.status === 401 || err.status === 403) {
        sessionStorage.removeItem(TOKEN_KEY);
        setStatus('#token-status', 'error', 'Herald did not accept this admin token. Copy it again from keys/admin-token.');
        step('#step-app', 'locked');
        $('#app-status').replaceChildren();
        return;
      }
      throw err;
    }
    sessionStorage.setItem(TOKEN_KEY, adminToken);
    $('#admin-token').value = '';
    setStatus('#token-status', 'ok', 'Signed in.');
    step('#step-token', 'done');

    app = (list.apps || []).find((a) => a.name === APP_NAME) || null;
    if (app) {
      setStatus('#app-status', 'ok', node('p', null));
      $('#app-status p').append('Found the app “demo” (id ', node('code', app.id), ').');
    } else {
      const created = await api('POST', 'apps', { name: APP_NAME, contact: APP_CONTACT });
      app = created;
      const p = node('p', null);
      p.append('Created the app “demo” (id ', node('code', created.id), `) with contact ${APP_CONTACT}.`);
      const keyNote = node('p', 'Its API key, for a real backend — shown only this once:', { class: 'small' });
      const key = node('div', null, { class: 'secret' });
      key.append(node('code', created.api_key));
      setStatus('#app-status', 'ok', p, keyNote, key);
    }
    step('#step-app', 'done');

    // Step 3: user token for "me".
    step('#step-user', '');
    setStatus('#user-status', '', 'Minting a user token for “me”…');
    const t = await api('POST', `apps/${encodeURIComponent(app.id)}/user-tokens`, { user: USER, ttl_seconds: 3600 });
    userToken = t.token;
    const expires = t.expires_at ? ` It expires ${new Date(t.expires_at).toLocaleTimeString()}.` : '';
    setStatus('#user-status', 'ok', `Got a user token for “me”.${expires}`);
    step('#step-user', 'done');

    // Step 4: embed the settings page.
    step('#step-enable', '');
    const src = new URL('settings', location.href);
    src.searchParams.set('app', app.id);
    src.searchParams.set('token', userToken);
    src.searchParams.set('start', new URL('./', location.href).pathname);
    const frame = node('iframe', null, { class: 'settings-frame', title: 'Push notification settings', src: src.href });
    $('#settings-slot').replaceChildren(frame);

    step('#step-send', '');
    $('#send').disabled = false;
  } catch (err) {
    setStatus('#token-status', 'error', `Something went wrong: ${err.message}`);
  } finally {
    submit.disabled = false;
  }
}

// The embedded settings page reports its state (and height).
window.addEventListener('message', (e) => {
  if (e.origin !== location.origin || !e.data || e.data.type !== 'herald:state') return;
  const frame = $('#settings-slot iframe');
  if (frame && e.data.height) frame.style.height = `${Math.ceil(e.data.height) + 4}px`;
  step('#step-enable', e.data.state === 'subscribed' ? 'done' : '');
});

// ---------------------------------------------------------------- step 5: send

function summarize(n) {
  // Counts delivery states from whatever the notification resource reports.
  const counts = {};
  const errors = [];
  if (Array.isArray(n.deliveries)) {
    for (const d of n.deliveries) {
      counts[d.status] = (counts[d.status] || 0) + 1;
      if (d.last_error) errors.push(d.last_error);
    }
  } else if (n.deliveries && typeof n.deliveries === 'object') {
    for (const [k, v] of Object.entries(n.deliveries)) if (typeof v === 'number') counts[k] = v;
  } else if (n.status) {
    counts[n.status] = 1;
  }
  if (n.counts && typeof n.counts === 'object') Object.assign(counts, n.counts);
  return { counts, errors };
}

const FINAL = ['delivered', 'failed', 'gone', 'expired'];

$('#send').addEventListener('click', async (e) => {
  const button = e.currentTarget;
  button.disabled = true;
  try {
    setStatus('#send-status', '', 'Sending…');
    const sent = await api('POST', `apps/${encodeURIComponent(app.id)}/notifications`, {
      to: { user: USER },
      title: 'Hello from Herald',
      body: 'Your test notification arrived. Click it to come back here.',
      target_url: new URL('./?from=notification', location.href).href,
      type: 'success',
      tag: 'herald-demo',
    });
    if (!sent.deliveries) {
      setStatus('#send-status', 'warn', 'No device of user “me” is subscribed, so there is nothing to deliver. Turn on the switch in step 4 first.');
      return;
    }
    setStatus('#send-status', '', `Queued ${sent.deliveries} deliver${sent.deliveries === 1 ? 'y' : 'ies'}; waiting for the push service…`);
    const until = Date.now() + 30000;
    let last = null;
    while (Date.now() < until) {
      await new Promise((r) => setTimeout(r, 1000));
      const n = await api('GET', `apps/${encodeURIComponent(app.id)}/notifications/${encodeURIComponent(sent.id)}`);
      last = summarize(n);
      const parts = Object.entries(last.counts).map(([k, v]) => `${v} ${k.replace('_', ' ')}`);
      const text = parts.length ? parts.join(', ') : 'waiting';
      const pending = Object.entries(last.counts).some(([k, v]) => v > 0 && !FINAL.includes(k));
      if (!pending && parts.length) {
        const ok = (last.counts.delivered || 0) > 0;
        setStatus('#send-status', ok ? 'ok' : 'error',
          `Delivery status: ${text}.`,
          ok ? 'The push service accepted it; the notification should be on your screen now.'
            : `It was not delivered${last.errors.length ? `: ${last.errors[0]}` : '.'}`);
        step('#step-send', ok ? 'done' : '');
        return;
      }
      setStatus('#send-status', '', `Delivery status: ${text}…`);
    }
    setStatus('#send-status', 'warn', 'Still not delivered after 30 seconds; Herald keeps retrying. See the queue in the admin console.');
  } catch (err) {
    setStatus('#send-status', 'error', `Could not send: ${err.message}`);
  } finally {
    button.disabled = false;
  }
});

if (adminToken) run();
