/*
 * Herald service worker: shows push notifications, opens their target on
 * click, and renews the subscription when the push service replaces it.
 *
 * Use it directly (registered by herald.js as /sw.js?app=<app>&start=<page>)
 * or import it into your own service worker:
 *
 *   self.HERALD_CONFIG = { app: 'my-app', start: '/inbox', server: 'https://herald.example.com' };
 *   importScripts('https://herald.example.com/sw.js');
 *
 * Configuration is read, in order of precedence, from self.HERALD_CONFIG,
 * the worker script's URL query (?app=..&start=..&server=..), and the
 * IndexedDB record that herald.js stored when this device subscribed.
 * Optional HERALD_CONFIG fields: defaultTitle, defaultBody, icon, badge.
 *
 * Only listeners are added (push, notificationclick, pushsubscriptionchange);
 * the worker's other events are left to whoever else runs in it. Its helpers
 * are exposed as self.HeraldSW for workers that want to call them directly.
 *
 * After showing a push's notification, the worker also posts
 *   { type: 'herald:push', payload }
 * to every open window of its origin (payload: the decrypted JSON, parsed;
 * the text when it is not JSON; null when the push had no data), e.g. for an
 * in-page toast:
 *
 *   navigator.serviceWorker.addEventListener('message', (e) => {
 *     if (e.data && e.data.type === 'herald:push') showToast(e.data.payload);
 *   });
 *   navigator.serviceWorker.startMessages();
 */
(function () {
  'use strict';

  var DB_NAME = 'herald';
  var DB_VERSION = 1;
  var STORE = 'registrations';
  var DEFAULT_TITLE = 'New notification';
  var DEFAULT_BODY = 'You have a new notification.';

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
    var bytes = new Uint8Array(buf);
    var bin = '';
    for (var i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
    return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  function openDb() {
    return new Promise(function (resolve, reject) {
      var req = self.indexedDB.open(DB_NAME, DB_VERSION);
      req.onupgradeneeded = function () {
        var db = req.result;
        if (!db.objectStoreNames.contains(STORE)) db.createObjectStore(STORE, { keyPath: 'scope' });
      };
      req.onsuccess = function () { resolve(req.result); };
      req.onerror = function () { reject(req.error); };
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

  function scope() { return self.registration ? self.registration.scope : self.location.origin + '/'; }

  function loadRecord() {
    return idb('readonly', function (s) { return s.get(scope()); }).catch(function () { return undefined; });
  }

  function saveRecord(rec) {
    return idb('readwrite', function (s) { return s.put(rec); }).catch(function () {});
  }

  /** { app, server, start, defaultTitle, defaultBody, icon, badge } from config, URL and IndexedDB. */
  function config() {
    var fromGlobal = self.HERALD_CONFIG || {};
    var q = new URL(self.location.href).searchParams;
    return loadRecord().then(function (rec) {
      rec = rec || {};
      var pick = function (name) {
        if (fromGlobal[name] != null && fromGlobal[name] !== '') return fromGlobal[name];
        if (q.get(name)) return q.get(name);
        if (rec[name] != null && rec[name] !== '') return rec[name];
        return null;
      };
      return {
        app: pick('app'),
        server: String(pick('server') || self.location.origin).replace(/\/+$/, ''),
        start: pick('start') || '/',
        defaultTitle: fromGlobal.defaultTitle || DEFAULT_TITLE,
        defaultBody: fromGlobal.defaultBody || DEFAULT_BODY,
        icon: fromGlobal.icon || null,
        badge: fromGlobal.badge || null,
        record: rec,
      };
    });
  }

  function safeUrl(value, base) {
    if (!value || typeof value !== 'string') return null;
    try {
      var u = new URL(value, base);
      return u.protocol === 'https:' || u.protocol === 'http:' ? u.href : null;
    } catch (e) {
      return null;
    }
  }

  // ---------------------------------------------------------------- push

  /** Turns a push payload (text or null) into [title, options]. */
  function notificationFor(text, cfg) {
    var msg = null;
    if (text) {
      try { msg = JSON.parse(text); } catch (e) { msg = null; }
    }
    var isObject = msg && typeof msg === 'object' && !Array.isArray(msg);
    if (isObject && typeof msg.title === 'string' && msg.title.trim()) {
      var data = Object.assign({}, msg.data && typeof msg.data === 'object' ? msg.data : {});
      if (msg.target_url) data.target_url = msg.target_url;
      if (msg.id) data.id = msg.id;
      if (msg.type) data.type = msg.type;
      var options = { data: data };
      if (msg.body != null) options.body = String(msg.body);
      var icon = msg.icon || cfg.icon;
      var badge = msg.badge || cfg.badge;
      if (icon) options.icon = icon;
      if (badge) options.badge = badge;
      if (msg.image) options.image = msg.image;
      if (msg.tag) { options.tag = String(msg.tag); options.renotify = true; }
      if (msg.data && msg.data.require_interaction === true) options.requireInteraction = true;
      return [msg.title, options];
    }
    // Not JSON, or JSON without a title: show it as text under a default title.
    var body;
    if (isObject && typeof msg.body === 'string' && msg.body.trim()) body = msg.body;
    else if (text && text.trim()) body = text;
    else body = cfg.defaultBody;
    var fallback = { body: body, data: {} };
    if (isObject && msg.target_url) fallback.data.target_url = msg.target_url;
    if (isObject && msg.id) fallback.data.id = msg.id;
    if (cfg.icon) fallback.icon = cfg.icon;
    if (cfg.badge) fallback.badge = cfg.badge;
    return [cfg.defaultTitle, fallback];
  }

  function readPushText(event) {
    try {
      return event && event.data ? event.data.text() : null;
    } catch (e) {
      return null;
    }
  }

  /** Posts { type: 'herald:push', payload } to the origin's open windows. */
  function announce(text) {
    var payload = text || null;
    if (text) {
      try { payload = JSON.parse(text); } catch (e) { payload = text; }
    }
    if (!self.clients || !self.clients.matchAll) return Promise.resolve();
    return self.clients.matchAll({ type: 'window', includeUncontrolled: true }).then(function (list) {
      for (var i = 0; i < list.length; i++) {
        try { list[i].postMessage({ type: 'herald:push', payload: payload }); } catch (e) { /* window gone */ }
      }
    }).catch(function () {});
  }

  function handlePush(event) {
    var text = readPushText(event);
    var show = function (cfg) {
      var n = notificationFor(text, cfg);
      return self.registration.showNotification(n[0], n[1]);
    };
    // Every push shows a notification: browsers penalise (Safari: revokes) silent pushes.
    return config().catch(function () {
      return { defaultTitle: DEFAULT_TITLE, defaultBody: DEFAULT_BODY, start: '/' };
    }).then(show).catch(function () {
      return self.registration.showNotification(DEFAULT_TITLE, { body: text || DEFAULT_BODY });
    }).then(function (r) {
      return announce(text).then(function () { return r; });
    }, function (err) {
      return announce(text).then(function () { throw err; });
    });
  }

  // ---------------------------------------------------------------- click

  function sameTarget(clientUrl, target) {
    try {
      var a = new URL(clientUrl);
      var b = new URL(target);
      a.hash = '';
      b.hash = '';
      return a.href === b.href;
    } catch (e) {
      return false;
    }
  }

  function openTarget(target) {
    return self.clients.matchAll({ type: 'window', includeUncontrolled: true }).then(function (list) {
      for (var i = 0; i < list.length; i++) {
        var c = list[i];
        if (sameTarget(c.url, target) && 'focus' in c) return c.focus();
      }
      return self.clients.openWindow ? self.clients.openWindow(target) : null;
    });
  }

  function handleNotificationClick(event) {
    var notification = event.notification;
    var data = (notification && notification.data) || {};
    if (notification) notification.close();
    return config().catch(function () { return { start: '/' }; }).then(function (cfg) {
      var base = scope();
      var target = safeUrl(data.target_url, base) || safeUrl(cfg.start, base) || new URL('/', base).href;
      return openTarget(target);
    });
  }

  // ---------------------------------------------------------------- renewal

  function fetchKey(cfg) {
    if (!cfg.app) return Promise.reject(new Error('Herald: no app configured, cannot fetch the VAPID key'));
    return fetch(cfg.server + '/api/v1/apps/' + encodeURIComponent(cfg.app) + '/vapid-public-key', {
      credentials: 'omit', cache: 'no-store',
    }).then(function (res) {
      if (!res.ok) throw new Error('Herald: vapid-public-key returned ' + res.status);
      return res.json();
    }).then(function (j) { return base64UrlToBytes(j.vapid_public_key); });
  }

  function handleSubscriptionChange(event) {
    var oldSub = event.oldSubscription || null;
    return config().then(function (cfg) {
      var rec = cfg.record || {};
      var oldJson = oldSub ? oldSub.toJSON() : null;
      var oldEndpoint = (oldJson && oldJson.endpoint) || rec.endpoint || null;
      var oldAuth = (oldJson && oldJson.keys && oldJson.keys.auth) || rec.auth || null;

      var keyPromise;
      if (oldSub && oldSub.options && oldSub.options.applicationServerKey) {
        keyPromise = Promise.resolve(new Uint8Array(oldSub.options.applicationServerKey));
      } else {
        keyPromise = fetchKey(cfg).catch(function (err) {
          if (rec.key) return base64UrlToBytes(rec.key);
          throw err;
        });
      }

      var subPromise = event.newSubscription
        ? Promise.resolve(event.newSubscription)
        : keyPromise.then(function (key) {
          return self.registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
        });

      return Promise.all([subPromise, keyPromise.catch(function () { return null; })]).then(function (r) {
        var sub = r[0];
        var key = r[1];
        var json = sub.toJSON();
        var next = Object.assign({}, rec, {
          scope: scope(),
          app: cfg.app,
          server: cfg.server,
          endpoint: json.endpoint,
          auth: json.keys && json.keys.auth,
          key: key ? bytesToBase64Url(key) : rec.key || null,
          updated_at: new Date().toISOString(),
        });
        if (!cfg.app || !oldEndpoint || !oldAuth || oldEndpoint === json.endpoint) {
          return saveRecord(next);
        }
        return fetch(cfg.server + '/api/v1/apps/' + encodeURIComponent(cfg.app) + '/subscriptions/renew', {
          method: 'POST',
          headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
          credentials: 'omit',
          body: JSON.stringify({ old_endpoint: oldEndpoint, old_auth: oldAuth, subscription: json }),
        }).then(function (res) {
          if (!res.ok) throw new Error('Herald: subscription renewal returned ' + res.status);
          return saveRecord(next);
        });
      });
    });
  }

  // ---------------------------------------------------------------- wiring

  self.addEventListener('push', function (event) {
    event.waitUntil(handlePush(event));
  });

  self.addEventListener('notificationclick', function (event) {
    event.waitUntil(handleNotificationClick(event));
  });

  self.addEventListener('pushsubscriptionchange', function (event) {
    event.waitUntil(handleSubscriptionChange(event));
  });

  // Herald's own worker (registered with ?app=) activates updates at once;
  // an importing worker keeps its own lifecycle.
  if (!self.HERALD_CONFIG && new URL(self.location.href).searchParams.has('app')) {
    self.addEventListener('install', function () { self.skipWaiting(); });
    self.addEventListener('activate', function (event) { event.waitUntil(self.clients.claim()); });
  }

  self.HeraldSW = {
    config: config,
    notificationFor: notificationFor,
    handlePush: handlePush,
    announce: announce,
    handleNotificationClick: handleNotificationClick,
    handleSubscriptionChange: handleSubscriptionChange,
    openTarget: openTarget,
  };
})();
