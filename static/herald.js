/*
 * Herald client — opt a browser in and out of Web Push notifications.
 *
 * Works both as a classic script and as an ES module (it has no exports and
 * only sets globalThis.Herald):
 *
 *   <script src="https://herald.example.com/herald.js"></script>
 *   <script> Herald.init({ app: 'my-app', userToken }); </script>
 *
 *   <script type="module">
 *     import Herald from 'https://herald.example.com/static/herald.mjs';
 *     // or: import '/herald.js'; const Herald = window.Herald;
 *   </script>
 *
 * API (every method except init returns a Promise):
 *   Herald.init({ app, server?, userToken?, serviceWorker?, scope?, start? })
 *   Herald.state()    -> 'unsupported' | 'blocked' | 'subscribed' | 'not-subscribed' | 'stale'
 *   Herald.enable()   -> 'subscribed'       (call from a click handler)
 *   Herald.disable()  -> 'not-subscribed'
 *   Herald.sync()     -> re-sends an existing subscription to Herald (idempotent)
 *   Herald.setUserToken(token)
 *
 * Failures are Herald.HeraldError instances with a `code`:
 *   'unsupported', 'not-initialized', 'missing-token', 'permission-denied',
 *   'permission-dismissed', 'service-worker-failed', 'key-unavailable',
 *   'subscribe-failed', 'unsubscribe-failed', 'server-rejected', 'network-error'.
 * 'server-rejected' errors also carry `status` and, when Herald sent one,
 * `serverCode`, `field` and `serverMessage`.
 *
 * The service worker (sw.js) reads what it needs for subscription renewals
 * (app, server, start page, last endpoint and auth secret, VAPID key) from
 * the IndexedDB database "herald" that this library writes.
 */
(function (global) {
  'use strict';

  var VERSION = '0.1.0';
  var DB_NAME = 'herald';
  var DB_VERSION = 1;
  var STORE = 'registrations';

  class HeraldError extends Error {
    constructor(code, message, extra) {
      super(message);
      this.name = 'HeraldError';
      this.code = code;
      if (extra) {
        for (var k in extra) {
          if (Object.prototype.hasOwnProperty.call(extra, k) && extra[k] !== undefined) this[k] = extra[k];
        }
      }
    }
  }

  // ---------------------------------------------------------------- helpers

  function base64UrlToBytes(s) {
    var b64 = String(s).trim().replace(/-/g, '+').replace(/_/g, '/');
    while (b64.length % 4) b64 += '=';
    var bin = atob(b64);
    var out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function bytesToBase64Url(buf) {
    if (!buf) return null;
    var bytes = buf instanceof Uint8Array ? buf : new Uint8Array(buf);
    var bin = '';
    for (var i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
    return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  function sameBytes(a, b) {
    if (!a || !b) return false;
    var x = a instanceof Uint8Array ? a : new Uint8Array(a);
    var y = b instanceof Uint8Array ? b : new Uint8Array(b);
    if (x.length !== y.length) return false;
    for (var i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
    return true;
  }

  function trimSlash(s) { return String(s).replace(/\/+$/, ''); }

  // ---------------------------------------------------------------- IndexedDB

  function openDb() {
    return new Promise(function (resolve, reject) {
      if (!global.indexedDB) { reject(new Error('IndexedDB is not available')); return; }
      var req = global.indexedDB.open(DB_NAME, DB_VERSION);
      req.onupgradeneeded = function () {
        var db = req.result;
        if (!db.objectStoreNames.contains(STORE)) db.createObjectStore(STORE, { keyPath: 'scope' });
      };
      req.onsuccess = function () { resolve(req.result); };
      req.onerror = function () { reject(req.error); };
      req.onblocked = function () { reject(new Error('IndexedDB open blocked')); };
    });
  }

  function idb(mode, fn) {
    return openDb().then(function (db) {
      return new Promise(function (resolve, reject) {
        var tx = db.transaction(STORE, mode);
        var result;
        var req = fn(tx.objectStore(STORE));
        if (req) req.onsuccess = function () { result = req.result; };
        tx.oncomplete = function () { db.close(); resolve(result); };
        tx.onerror = function () { db.close(); reject(tx.error); };
        tx.onabort = function () { db.close(); reject(tx.error); };
      });
    });
  }

  function loadRecord(scope) {
    return idb('readonly', function (s) { return s.get(scope); }).catch(function () { return undefined; });
  }

  function saveRecord(record) {
    return idb('readwrite', function (s) { return s.put(record); }).catch(function () { /* best effort */ });
  }

  // ---------------------------------------------------------------- state

  var cfg = null;
  var keyPromise = null;

  function requireInit() {
    if (!cfg) throw new HeraldError('not-initialized', 'Call Herald.init({ app, ... }) first.');
    return cfg;
  }

  function isSupported() {
    return !!(global.isSecureContext !== false &&
      typeof navigator !== 'undefined' &&
      'serviceWorker' in navigator &&
      'PushManager' in global &&
      'Notification' in global &&
      global.ServiceWorkerRegistration &&
      'showNotification' in global.ServiceWorkerRegistration.prototype);
  }

  function permission() {
    return isSupported() ? global.Notification.permission : 'denied';
  }

  function init(options) {
    var o = options || {};
    if (!o.app) throw new HeraldError('not-initialized', 'Herald.init needs an "app" (the app id).');
    var origin = global.location ? global.location.origin : '';
    var server = trimSlash(o.server || origin);
    var swDefault = !o.serviceWorker;
    var swUrl = new URL(o.serviceWorker || '/sw.js', global.location ? global.location.href : undefined);
    if (swDefault) {
      // Herald's own worker reads its configuration from its URL.
      swUrl.searchParams.set('app', o.app);
      if (o.start) swUrl.searchParams.set('start', o.start);
      if (server !== origin) swUrl.searchParams.set('server', server);
    }
    var scope = new URL(o.scope || '/', global.location ? global.location.href : undefined).href;
    cfg = {
      app: String(o.app),
      server: server,
      userToken: o.userToken || null,
      serviceWorker: swUrl.href,
      scope: scope,
      start: o.start || null,
    };
    keyPromise = null;
    return api;
  }

  function setUserToken(token) {
    requireInit().userToken = token || null;
  }

  function appUrl(path) {
    var c = requireInit();
    return c.server + '/api/v1/apps/' + encodeURIComponent(c.app) + path;
  }

  function request(method, url, body, token) {
    var headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (token) headers.Authorization = 'Bearer ' + token;
    return fetch(url, {
      method: method,
      headers: headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit',
      cache: 'no-store',
    }).catch(function (err) {
      throw new HeraldError('network-error', 'Could not reach Herald at ' + requireInit().server + ': ' + err.message, { cause: err });
    }).then(function (res) {
      return res.text().then(function (text) {
        var data = null;
        if (text) { try { data = JSON.parse(text); } catch (e) { data = null; } }
        if (!res.ok) {
          var e = (data && data.error) || {};
          throw new HeraldError('server-rejected',
            'Herald rejected the request (' + res.status + ')' + (e.message ? ': ' + e.message : '.'),
            { status: res.status, serverCode: e.code, serverMessage: e.message, field: e.field });
        }
        return data;
      });
    });
  }

  /** The app's current VAPID public key, as bytes (cached per init). */
  function vapidKey() {
    if (!keyPromise) {
      keyPromise = request('GET', appUrl('/vapid-public-key')).then(function (data) {
        if (!data || !data.vapid_public_key) throw new HeraldError('key-unavailable', 'Herald did not return a VAPID public key.');
        return base64UrlToBytes(data.vapid_public_key);
      }).catch(function (err) {
        keyPromise = null;
        if (err instanceof HeraldError && err.code === 'network-error') {
          throw new HeraldError('key-unavailable', err.message, { cause: err });
        }
        if (err instanceof HeraldError && err.code === 'server-rejected') {
          throw new HeraldError('key-unavailable', 'Could not get the push key of app "' + cfg.app + '": ' + err.message,
            { status: err.status, serverCode: err.serverCode, cause: err });
        }
        throw err;
      });
    }
    return keyPromise;
  }

  function getRegistration() {
    var c = requireInit();
    // Returns the registration whose scope covers our scope URL best.
    return navigator.serviceWorker.getRegistration(c.scope).then(function (reg) {
      return reg || null;
    }).catch(function () { return null; });
  }

  function waitActive(reg) {
    if (reg.active) return Promise.resolve(reg);
    var worker = reg.installing || reg.waiting;
    if (!worker) return Promise.resolve(reg);
    return new Promise(function (resolve, reject) {
      var timer = setTimeout(function () {
        reject(new HeraldError('service-worker-failed', 'The service worker did not activate in time.'));
      }, 20000);
      worker.addEventListener('statechange', function () {
        if (worker.state === 'activated') { clearTimeout(timer); resolve(reg); }
        if (worker.state === 'redundant') {
          clearTimeout(timer);
          reject(new HeraldError('service-worker-failed', 'The service worker failed to install.'));
        }
      });
    });
  }

  function register() {
    var c = requireInit();
    return navigator.serviceWorker.register(c.serviceWorker, { scope: c.scope }).catch(function (err) {
      throw new HeraldError('service-worker-failed', 'Could not register the service worker ' + c.serviceWorker + ': ' + err.message, { cause: err });
    }).then(waitActive);
  }

  function subscriptionKey(sub) {
    return sub && sub.options && sub.options.applicationServerKey ? new Uint8Array(sub.options.applicationServerKey) : null;
  }

  function contentEncoding() {
    var list = global.PushManager && global.PushManager.supportedContentEncodings;
    if (list && list.length && list.indexOf('aes128gcm') < 0 && list.indexOf('aesgcm') >= 0) return 'aesgcm';
    return 'aes128gcm';
  }

  function remember(reg, sub, keyBytes) {
    var c = requireInit();
    var json = sub ? sub.toJSON() : null;
    return saveRecord({
      scope: reg ? reg.scope : c.scope,
      app: c.app,
      server: c.server,
      start: c.start,
      endpoint: json ? json.endpoint : null,
      auth: json && json.keys ? json.keys.auth : null,
      key: keyBytes ? bytesToBase64Url(keyBytes) : null,
      content_encoding: contentEncoding(),
      updated_at: new Date().toISOString(),
    });
  }

  function requestPermission() {
    var N = global.Notification;
    if (N.permission === 'granted') return Promise.resolve('granted');
    if (N.permission === 'denied') return Promise.resolve('denied');
    return new Promise(function (resolve) {
      // Older Safari only supports the callback form.
      var p = N.requestPermission(resolve);
      if (p && typeof p.then === 'function') p.then(resolve, function () { resolve(N.permission); });
    });
  }

  function postSubscription(sub) {
    var c = requireInit();
    return request('POST', appUrl('/subscriptions'), {
      subscription: sub.toJSON(),
      content_encoding: contentEncoding(),
    }, c.userToken);
  }

  function deleteAtServer(endpoint) {
    var c = requireInit();
    return request('DELETE', appUrl('/subscriptions?endpoint=' + encodeURIComponent(endpoint)), undefined, c.userToken)
      .catch(function (err) {
        if (err.code === 'server-rejected' && (err.status === 404 || err.status === 410)) return null;
        throw err;
      });
  }

  // ---------------------------------------------------------------- public

  /**
   * The state of this device for the configured app:
   * 'unsupported', 'blocked', 'subscribed', 'not-subscribed' or 'stale'
   * ('stale': subscribed with a VAPID key that is no longer the app's key).
   */
  function state() {
    var c;
    try { c = requireInit(); } catch (e) { return Promise.reject(e); }
    if (!isSupported()) return Promise.resolve('unsupported');
    if (global.Notification.permission === 'denied') return Promise.resolve('blocked');
    return getRegistration().then(function (reg) {
      if (!reg) return 'not-subscribed';
      return reg.pushManager.getSubscription().catch(function () { return null; }).then(function (sub) {
        if (!sub) return 'not-subscribed';
        if (global.Notification.permission !== 'granted') return 'not-subscribed';
        var used = subscriptionKey(sub);
        return vapidKey().then(function (current) {
          if (used) return sameBytes(used, current) ? 'subscribed' : 'stale';
          // The browser does not report the key: compare with the one recorded at subscribe time.
          return loadRecord(reg.scope).then(function (rec) {
            if (rec && rec.key && rec.endpoint === sub.endpoint) {
              return sameBytes(base64UrlToBytes(rec.key), current) ? 'subscribed' : 'stale';
            }
            return 'subscribed';
          });
        }, function () {
          // Herald unreachable: report what the browser knows.
          return 'subscribed';
        });
      });
    });
  }

  /**
   * Ask for permission, register the service worker, subscribe with the app's
   * VAPID key and register the subscription at Herald. Call it from a user
   * gesture (a click): browsers only show the permission prompt then.
   */
  function enable() {
    var c;
    try { c = requireInit(); } catch (e) { return Promise.reject(e); }
    if (!isSupported()) {
      return Promise.reject(new HeraldError('unsupported', 'This browser does not support Web Push notifications.'));
    }
    if (!c.userToken) {
      return Promise.reject(new HeraldError('missing-token', 'No user token: Herald cannot tell whose device this is.'));
    }
    // The permission prompt comes first so that it still counts as part of the click.
    return requestPermission().then(function (perm) {
      if (perm === 'denied') {
        throw new HeraldError('permission-denied', 'Notifications are blocked for this site in the browser settings.');
      }
      if (perm !== 'granted') {
        throw new HeraldError('permission-dismissed', 'The notification permission prompt was dismissed.');
      }
      return Promise.all([register(), vapidKey()]);
    }).then(function (both) {
      var reg = both[0];
      var key = both[1];
      return reg.pushManager.getSubscription().catch(function () { return null; }).then(function (existing) {
        if (existing) {
          var used = subscriptionKey(existing);
          if (!used || sameBytes(used, key)) return existing;
          // Made with another key (credentials were regenerated): replace it.
          var oldEndpoint = existing.endpoint;
          return existing.unsubscribe().catch(function (err) {
            throw new HeraldError('unsubscribe-failed', 'Could not remove the outdated subscription: ' + err.message, { cause: err });
          }).then(function () {
            return deleteAtServer(oldEndpoint).catch(function () { /* Herald already dropped it */ });
          }).then(function () { return null; });
        }
        return null;
      }).then(function (existing) {
        if (existing) return existing;
        return reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key }).catch(function (err) {
          throw new HeraldError('subscribe-failed', 'The browser could not subscribe to push messages: ' + (err && err.message || err), { cause: err });
        });
      }).then(function (sub) {
        return remember(reg, sub, key).then(function () {
          return postSubscription(sub).catch(function (err) {
            // Keep browser and Herald in agreement: without Herald knowing it,
            // the subscription would never receive anything.
            return sub.unsubscribe().catch(function () {}).then(function () { throw err; });
          });
        });
      }).then(function () { return 'subscribed'; });
    });
  }

  /** Unsubscribe this device and tell Herald (by endpoint). */
  function disable() {
    var c;
    try { c = requireInit(); } catch (e) { return Promise.reject(e); }
    if (!isSupported()) return Promise.resolve('not-subscribed');
    return getRegistration().then(function (reg) {
      if (!reg) return 'not-subscribed';
      return reg.pushManager.getSubscription().catch(function () { return null; }).then(function (sub) {
        if (!sub) return 'not-subscribed';
        var endpoint = sub.endpoint;
        return sub.unsubscribe().catch(function (err) {
          throw new HeraldError('unsubscribe-failed', 'The browser could not unsubscribe: ' + err.message, { cause: err });
        }).then(function () {
          return remember(reg, null, null);
        }).then(function () {
          if (!c.userToken) return null; // Herald learns it from the push service (410 Gone) on the next send.
          return deleteAtServer(endpoint);
        }).then(function () { return 'not-subscribed'; });
      });
    });
  }

  /** Re-send the current subscription to Herald, e.g. on every visit. */
  function sync() {
    var c;
    try { c = requireInit(); } catch (e) { return Promise.reject(e); }
    return state().then(function (s) {
      if (s !== 'subscribed' || !c.userToken) return s;
      return getRegistration().then(function (reg) {
        return reg.pushManager.getSubscription().then(function (sub) {
          if (!sub) return 'not-subscribed';
          return vapidKey().then(function (key) { return remember(reg, sub, key); })
            .then(function () { return postSubscription(sub); })
            .then(function () { return 'subscribed'; });
        });
      });
    });
  }

  var api = {
    version: VERSION,
    HeraldError: HeraldError,
    init: init,
    setUserToken: setUserToken,
    isSupported: isSupported,
    permission: permission,
    state: state,
    enable: enable,
    disable: disable,
    sync: sync,
    get config() { return cfg ? Object.assign({}, cfg, { userToken: cfg.userToken ? '(set)' : null }) : null; },
  };

  global.Herald = api;
})(typeof globalThis !== 'undefined' ? globalThis : self);
