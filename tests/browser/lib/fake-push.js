// Init script: replaces PushManager.subscribe/getSubscription with a fake
// that keeps one subscription in localStorage. Headless Chromium cannot reach
// a real push service, so the subscription itself is simulated; everything
// else (permission, service worker registration, Herald API calls) is real.
//
// localStorage keys: __fakePush (the subscription record), __fakePushFail
// (when set, subscribe() rejects), __fakePushLog (calls made, JSON array).
(() => {
  if (typeof window === 'undefined' || !window.PushManager || !/^https?:$/.test(location.protocol)) return;
  const KEY = '__fakePush';
  const LOG = '__fakePushLog';
  const load = () => JSON.parse(localStorage.getItem(KEY) || 'null');
  const save = (v) => (v ? localStorage.setItem(KEY, JSON.stringify(v)) : localStorage.removeItem(KEY));
  const log = (...call) => {
    const l = JSON.parse(localStorage.getItem(LOG) || '[]');
    l.push(call);
    localStorage.setItem(LOG, JSON.stringify(l));
  };
  const toB64 = (bytes) => btoa(String.fromCharCode(...bytes)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  const fromB64 = (s) => {
    let b = s.replace(/-/g, '+').replace(/_/g, '/');
    while (b.length % 4) b += '=';
    return Uint8Array.from(atob(b), (c) => c.charCodeAt(0));
  };
  const asBytes = (k) => {
    if (typeof k === 'string') return fromB64(k);
    if (k instanceof ArrayBuffer) return new Uint8Array(k);
    return new Uint8Array(k.buffer, k.byteOffset, k.byteLength);
  };
  const random = (n) => crypto.getRandomValues(new Uint8Array(n));

  function makeSub(rec) {
    return {
      endpoint: rec.endpoint,
      expirationTime: null,
      options: { userVisibleOnly: true, applicationServerKey: fromB64(rec.key).buffer },
      getKey: (name) => (name === 'auth' ? fromB64(rec.auth).buffer : name === 'p256dh' ? fromB64(rec.p256dh).buffer : null),
      toJSON: () => ({ endpoint: rec.endpoint, expirationTime: null, keys: { p256dh: rec.p256dh, auth: rec.auth } }),
      unsubscribe: async () => { log('unsubscribe', rec.endpoint); save(null); return true; },
    };
  }

  PushManager.prototype.getSubscription = async function getSubscription() {
    const rec = load();
    return rec ? makeSub(rec) : null;
  };
  PushManager.prototype.subscribe = async function subscribe(options) {
    if (localStorage.getItem('__fakePushFail')) {
      log('subscribe-failed');
      throw new DOMException('Registration failed - push service not available', 'AbortError');
    }
    const key = toB64(asBytes(options.applicationServerKey));
    const existing = load();
    if (existing && existing.key !== key) {
      throw new DOMException('A subscription with a different applicationServerKey already exists.', 'InvalidStateError');
    }
    if (existing) return makeSub(existing);
    // A real uncompressed P-256 public key, as the push service would hand out.
    const pair = await crypto.subtle.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, true, ['deriveBits']);
    const raw = new Uint8Array(await crypto.subtle.exportKey('raw', pair.publicKey));
    const rec = {
      endpoint: `https://fcm.googleapis.com/fcm/send/fake-${toB64(random(12))}`,
      key,
      p256dh: toB64(raw),
      auth: toB64(random(16)),
    };
    save(rec);
    log('subscribe', key);
    return makeSub(rec);
  };
})();
