// Settings page: one switch that opts this device in or out of push notifications.
// Query parameters: app (required), token (user token), server (Herald origin),
// start (page opened when a notification without a target is clicked).

const Herald = globalThis.Herald;
const params = new URLSearchParams(location.search);
const app = params.get('app');
const token = params.get('token');
const server = params.get('server') || undefined;
const start = params.get('start') || undefined;

const embedded = window.parent !== window;
if (embedded) document.body.classList.add('embedded');
// Browsers do not let cross-origin frames ask for notification permission.
let crossOriginFrame = false;
if (embedded) {
  try { crossOriginFrame = window.parent.location.origin !== location.origin; } catch { crossOriginFrame = true; }
}

const sw = document.getElementById('push-switch');
const statusBox = document.getElementById('push-status');

let current = 'loading';
let busy = false;

function el(tag, text) {
  const e = document.createElement(tag);
  if (text != null) e.textContent = text;
  return e;
}

function setStatus(kind, ...blocks) {
  statusBox.className = 'status' + (kind ? ' ' + kind : '');
  statusBox.replaceChildren(...blocks.map((b) => (typeof b === 'string' ? el('p', b) : b)));
  notifyParent();
}

function list(tag, items) {
  const l = el(tag);
  for (const item of items) l.append(el('li', item));
  return l;
}

function setSwitch(on, enabled) {
  sw.setAttribute('aria-checked', on ? 'true' : 'false');
  sw.disabled = !enabled;
}

let lastError = null;

function notifyParent() {
  if (!embedded) return;
  try {
    window.parent.postMessage({
      type: 'herald:state',
      app,
      state: current,
      error: lastError ? { code: lastError.code, message: lastError.message } : null,
      height: document.documentElement.scrollHeight,
    }, '*');
  } catch { /* parent gone */ }
}

function blockedHelp() {
  return [
    el('p', 'Notifications are blocked for this site, so this device cannot receive push notifications.'),
    el('p', 'To unblock them:'),
    list('ol', [
      'Open the site settings: click the icon left of the address (a lock or sliders), or on a phone open the browser menu and choose "Site settings" (Safari: Settings → Notifications for web apps added to the Home Screen).',
      'Set "Notifications" to "Allow" (or "Ask").',
      'Reload this page and turn the switch on.',
    ]),
  ];
}

function failedHelp(on) {
  return [
    el('p', 'This device failed to enable push notifications.'),
    el('p', on
      ? 'The service changed its notification keys, so this device has to subscribe again. To enable push notifications with the new key, turn the switch off and then on again.'
      : 'To enable push notifications again with the service\'s current key, turn the switch on again. If the switch is on, turn it off and then on again.'),
  ];
}

function render(state, error) {
  current = state;
  lastError = error || null;
  sw.removeAttribute('aria-busy');
  switch (state) {
    case 'unsupported': {
      setSwitch(false, false);
      const ios = /iPad|iPhone|iPod/.test(navigator.userAgent);
      setStatus('warn',
        'This browser does not support push notifications.',
        ios ? 'On iPhone and iPad, add this site to your Home Screen (Share → Add to Home Screen), open it from there and try again.'
          : 'Try a current version of Chrome, Edge, Firefox or Safari.');
      break;
    }
    case 'blocked':
      setSwitch(false, false);
      setStatus('warn', ...blockedHelp());
      break;
    case 'subscribed':
      setSwitch(true, true);
      setStatus('ok', 'Push notifications are enabled on this device.');
      break;
    case 'stale':
      setSwitch(true, true);
      setStatus('error', ...failedHelp(true));
      break;
    case 'failed':
      setSwitch(false, true);
      setStatus('error', ...failedHelp(false), el('p', `Details: ${error?.message || 'unknown error'}`));
      break;
    case 'not-subscribed':
    default:
      setSwitch(false, true);
      setStatus('', 'Push notifications are off on this device.');
      break;
  }
  if (crossOriginFrame && (state === 'blocked' || state === 'failed')) {
    const p = el('p', 'Browsers may not allow this inside an embedded frame: ');
    const a = el('a', 'open these settings in a new window');
    a.href = location.href;
    a.target = '_blank';
    a.rel = 'noopener';
    p.append(a, '.');
    statusBox.append(p);
  }
  if (!token && state !== 'unsupported' && state !== 'blocked' && state !== 'subscribed') {
    // Without a user token the page cannot register a subscription.
    if (sw.getAttribute('aria-checked') === 'false') sw.disabled = true;
    statusBox.append(el('p', 'This page was opened without a sign-in token. Open it from the app\'s settings to change this.'));
    notifyParent();
  }
}

function renderError(err, wasOn) {
  const code = err?.code;
  if (code === 'permission-denied') return render('blocked', err);
  if (code === 'unsupported') return render('unsupported', err);
  if (code === 'permission-dismissed') {
    render('not-subscribed', err);
    setStatus('warn', 'You closed the permission request without allowing notifications. Turn the switch on again to get asked again.');
    return;
  }
  if (code === 'subscribe-failed' || code === 'key-unavailable' || code === 'service-worker-failed' || code === 'unsubscribe-failed') {
    return render('failed', err);
  }
  if (code === 'server-rejected' && (err.status === 401 || err.status === 403)) {
    render(wasOn ? 'subscribed' : 'not-subscribed', err);
    setStatus('error', 'The sign-in token of this page was not accepted (it may have expired). Reload the app\'s settings page and try again.');
    return;
  }
  render('failed', err);
}

async function refresh() {
  try {
    render(await Herald.state());
  } catch (err) {
    render('failed', err);
  }
}

async function toggle() {
  if (busy || sw.disabled) return;
  busy = true;
  const turningOn = sw.getAttribute('aria-checked') !== 'true';
  sw.setAttribute('aria-busy', 'true');
  sw.setAttribute('aria-checked', turningOn ? 'true' : 'false');
  setStatus('', turningOn ? 'Enabling push notifications…' : 'Turning push notifications off…');
  try {
    if (turningOn) {
      await Herald.enable();
      render('subscribed');
    } else {
      await Herald.disable();
      render('not-subscribed');
    }
  } catch (err) {
    console.warn('Herald:', err);
    if (!turningOn && err?.code === 'server-rejected') {
      // The device is unsubscribed; only telling Herald failed. Herald drops it on the next send.
      render('not-subscribed');
    } else if (!turningOn && err?.code === 'network-error') {
      render('not-subscribed');
    } else {
      renderError(err, !turningOn);
      if (turningOn && current !== 'blocked' && current !== 'unsupported') {
        // Reflect what the browser really has now.
        const s = await Herald.state().catch(() => 'not-subscribed');
        if (s !== 'not-subscribed') sw.setAttribute('aria-checked', s === 'subscribed' || s === 'stale' ? 'true' : 'false');
      }
    }
  } finally {
    busy = false;
    sw.removeAttribute('aria-busy');
  }
}

if (!Herald) {
  setStatus('error', 'Could not load herald.js.');
} else if (!app) {
  setSwitch(false, false);
  setStatus('error', 'This page needs an "app" parameter in its address (…/settings?app=APP_ID&token=USER_TOKEN).');
} else {
  Herald.init({ app, server, userToken: token, start });
  sw.addEventListener('click', toggle);
  refresh();
  // The permission can change in another tab or in the browser's site settings.
  document.addEventListener('visibilitychange', () => { if (!document.hidden && !busy) refresh(); });
  if (embedded && 'ResizeObserver' in window) new ResizeObserver(() => notifyParent()).observe(document.body);
}
