// An in-memory stand-in for Herald's HTTP API, installed on a browser context
// with context.route(). It follows the documented API closely enough for the
// pages' logic to be tested without the service, and records every request.
import crypto from 'node:crypto';

export const ADMIN_TOKEN = 'test-admin-token';

export function vapidKey() {
  const ecdh = crypto.createECDH('prime256v1');
  ecdh.generateKeys();
  return ecdh.getPublicKey().toString('base64url');
}

const iso = (ms = 0) => new Date(Date.now() + ms).toISOString();
const newId = (prefix) => `${prefix}_${crypto.randomBytes(6).toString('hex')}`;

export class FakeHerald {
  constructor({ seed = true } = {}) {
    this.adminToken = ADMIN_TOKEN;
    this.apps = [];
    this.apiKeys = new Map(); // app id -> api key
    this.userTokens = new Map(); // token -> { app, user }
    this.subscriptions = [];
    this.deliveries = [];
    this.notifications = new Map();
    this.requests = [];
    /** Status a delivery reaches on the first GET of its notification. */
    this.deliverAs = 'delivered';
    if (seed) this.seed();
  }

  seed() {
    const shop = this.addApp('shop', 'mailto:ops@shop.example', { max_concurrency: 8 });
    const news = this.addApp('news', 'https://news.example/contact', { max_concurrency: 0, last_config_error: 'contact must be a mailto: or https: URL' });
    this.subscriptions.push(
      { id: 'sub_alice1', app: shop.id, user: 'alice', endpoint: 'https://fcm.googleapis.com/fcm/send/a1', keys: {}, content_encoding: 'aes128gcm', topics: ['orders'], created_at: iso(-86400e3), updated_at: iso(-3600e3) },
      { id: 'sub_bob1', app: shop.id, user: 'bob', endpoint: 'https://updates.push.services.mozilla.com/wpush/v2/b1', keys: {}, content_encoding: 'aes128gcm', topics: [], created_at: iso(-7200e3), updated_at: iso(-7200e3) },
    );
    this.deliveries.push(
      { id: 'dlv_0001', app: shop.id, notification_id: 'ntf_1', subscription_id: 'sub_alice1', user: 'alice', title: 'Your order shipped', endpoint_host: 'fcm.googleapis.com', attempts: 2, last_error: '503 Service Unavailable', status: 'pending', created_at: iso(-60e3), next_attempt_at: iso(30e3) },
      { id: 'dlv_0002', app: shop.id, notification_id: 'ntf_2', subscription_id: 'sub_bob1', user: 'bob', title: 'Sale <b>today</b>', endpoint_host: 'updates.push.services.mozilla.com', attempts: 1, last_error: null, status: 'delivered', created_at: iso(-120e3), next_attempt_at: null },
      { id: 'dlv_0003', app: news.id, notification_id: 'ntf_3', subscription_id: 'sub_x', user: 'carol', title: 'Breaking', endpoint_host: 'web.push.apple.com', attempts: 5, last_error: '410 Gone', status: 'gone', created_at: iso(-600e3), next_attempt_at: null },
    );
  }

  addApp(name, contact, extra = {}) {
    const app = {
      id: newId('app'), name, contact, max_concurrency: 16, vapid_public_key: vapidKey(), created_at: iso(-172800e3), ...extra,
    };
    this.apps.push(app);
    this.apiKeys.set(app.id, `hk_${crypto.randomBytes(16).toString('hex')}`);
    return app;
  }

  app(idOrName) { return this.apps.find((a) => a.id === idOrName || a.name === idOrName); }

  mintUserToken(appId, user) {
    const token = `ut_${crypto.randomBytes(12).toString('hex')}`;
    this.userTokens.set(token, { app: appId, user });
    return token;
  }

  /** Requests to the API matching method and a path prefix or RegExp. */
  calls(method, path) {
    return this.requests.filter((r) => r.method === method && (path instanceof RegExp ? path.test(r.path + r.search) : (r.path + r.search).startsWith(path)));
  }

  async install(context) {
    await context.route((url) => url.pathname.startsWith('/api/v1/'), (route) => this.handle(route));
  }

  async handle(route) {
    const req = route.request();
    const url = new URL(req.url());
    let body = null;
    const raw = req.postData();
    if (raw) { try { body = JSON.parse(raw); } catch { body = raw; } }
    const auth = (req.headers().authorization || '').replace(/^Bearer\s+/i, '') || null;
    const entry = { method: req.method(), path: url.pathname, search: url.search, query: Object.fromEntries(url.searchParams), body, auth };
    this.requests.push(entry);
    const [status, json] = this.respond(entry);
    entry.status = status;
    if (status === 204) return route.fulfill({ status, body: '' });
    return route.fulfill({ status, contentType: 'application/json', body: JSON.stringify(json) });
  }

  error(status, code, message, field) {
    return [status, { error: { code, message, ...(field ? { field } : {}) } }];
  }

  respond({ method, path, query, body, auth }) {
    const p = path.replace(/^\/api\/v1/, '').split('/').filter(Boolean).map(decodeURIComponent);
    const isAdmin = auth === this.adminToken;
    const unauthorized = () => this.error(401, 'unauthorized', 'missing or invalid bearer token');

    // ---- public
    if (method === 'GET' && p[0] === 'apps' && p[2] === 'vapid-public-key' && p.length === 3) {
      const app = this.app(p[1]);
      return app ? [200, { vapid_public_key: app.vapid_public_key }] : this.error(404, 'not_found', 'no such app');
    }
    if (method === 'POST' && p[0] === 'apps' && p[2] === 'subscriptions' && p[3] === 'renew') {
      const sub = this.subscriptions.find((s) => s.endpoint === body?.old_endpoint && s.app === this.app(p[1])?.id);
      if (!sub || sub.keys?.auth !== body.old_auth) return this.error(404, 'not_found', 'no such subscription');
      sub.endpoint = body.subscription.endpoint;
      sub.keys = body.subscription.keys;
      sub.updated_at = iso();
      return [200, { id: sub.id }];
    }

    // ---- admin
    if (p[0] === 'apps' && p.length === 1) {
      if (!isAdmin) return unauthorized();
      if (method === 'GET') return [200, { apps: this.apps }];
      if (method === 'POST') {
        if (!body?.name) return this.error(422, 'invalid', 'name is required', 'name');
        if (this.apps.some((a) => a.name === body.name)) return this.error(409, 'conflict', 'an app with this name exists', 'name');
        const app = this.addApp(body.name, body.contact);
        app.created_at = iso();
        return [201, { id: app.id, name: app.name, contact: app.contact, api_key: this.apiKeys.get(app.id), vapid_public_key: app.vapid_public_key }];
      }
    }
    if (p[0] === 'queue') {
      if (!isAdmin) return unauthorized();
      if (method === 'GET' && p.length === 1) {
        let list = this.deliveries;
        if (query.app) list = list.filter((d) => d.app === query.app);
        if (query.status) list = list.filter((d) => d.status === query.status);
        return [200, { deliveries: list.slice(0, Number(query.limit || 100)) }];
      }
      if (method === 'POST' && p[1] === 'push') return [200, { due: this.deliveries.filter((d) => d.status === 'pending').length }];
      if (method === 'POST' && p[1] === 'force') return [200, { forced: this.deliveries.filter((d) => d.status === 'pending').length }];
      if (method === 'DELETE' && p.length === 2) {
        const before = this.deliveries.length;
        this.deliveries = this.deliveries.filter((d) => d.id !== p[1]);
        return [200, { removed: before - this.deliveries.length }];
      }
      if (method === 'DELETE' && p.length === 1) {
        if (!query.app) return this.error(422, 'invalid', 'app is required', 'app');
        const before = this.deliveries.length;
        this.deliveries = this.deliveries.filter((d) => d.app !== query.app);
        return [200, { removed: before - this.deliveries.length }];
      }
    }
    if (method === 'GET' && p[0] === 'stats') {
      if (!isAdmin) return unauthorized();
      return [200, {
        queue: { pending: this.deliveries.filter((d) => d.status === 'pending').length, in_flight: 0 },
        vendors: [
          { vendor: 'fcm', delivered: 1200, failed: 3, gone: 14, expired: 0, avg_queue_wait_ms: 42.5, avg_delivery_ms: 180.2 },
          { vendor: 'mozilla', delivered: 310, failed: 0, gone: 2, expired: 1, avg_queue_wait_ms: 15, avg_delivery_ms: 1450 },
          { vendor: 'apple', delivered: 95, failed: 1, gone: 0, expired: 0, avg_queue_wait_ms: null, avg_delivery_ms: 95 },
        ],
      }];
    }

    if (p[0] !== 'apps' || p.length < 2) return this.error(404, 'not_found', 'no such route');
    const app = this.app(p[1]);
    if (!app) return this.error(404, 'not_found', 'no such app');

    if (p.length === 2) {
      if (!isAdmin) return unauthorized();
      if (method === 'GET') return [200, app];
      if (method === 'PATCH') {
        if ('max_concurrency' in body && (!Number.isInteger(body.max_concurrency) || body.max_concurrency < 0)) {
          return this.error(422, 'invalid', 'max_concurrency must be a non-negative integer', 'max_concurrency');
        }
        Object.assign(app, body);
        return [200, app];
      }
    }
    if (method === 'POST' && p[2] === 'credentials' && p[3] === 'regenerate') {
      if (!isAdmin) return unauthorized();
      app.vapid_public_key = vapidKey();
      const subs = this.subscriptions.filter((s) => s.app === app.id).length;
      const dels = this.deliveries.filter((d) => d.app === app.id).length;
      this.subscriptions = this.subscriptions.filter((s) => s.app !== app.id);
      this.deliveries = this.deliveries.filter((d) => d.app !== app.id);
      return [200, { vapid_public_key: app.vapid_public_key, subscriptions_removed: subs, deliveries_removed: dels }];
    }

    // ---- backend (api key or admin) and user tokens
    const isBackend = isAdmin || auth === this.apiKeys.get(app.id);
    const userTok = this.userTokens.get(auth);
    const tokenUser = userTok && userTok.app === app.id ? userTok.user : null;

    if (p[2] === 'user-tokens' && method === 'POST') {
      if (!isBackend) return unauthorized();
      if (!body?.user) return this.error(422, 'invalid', 'user is required', 'user');
      return [200, { token: this.mintUserToken(app.id, body.user), expires_at: iso((body.ttl_seconds || 3600) * 1000) }];
    }

    if (p[2] === 'subscriptions') {
      if (method === 'POST' && p.length === 3) {
        if (!isBackend && !tokenUser) return unauthorized();
        const user = tokenUser ?? body?.user;
        if (tokenUser && body?.user && body.user !== tokenUser) return this.error(403, 'forbidden', 'user does not match the token');
        const s = body?.subscription;
        if (!s?.endpoint || !s?.keys?.p256dh || !s?.keys?.auth) return this.error(422, 'invalid', 'subscription needs endpoint and keys', 'subscription');
        const existing = this.subscriptions.find((x) => x.endpoint === s.endpoint);
        if (existing) { existing.updated_at = iso(); return [200, { id: existing.id }]; }
        const sub = {
          id: newId('sub'), app: app.id, user, endpoint: s.endpoint, keys: s.keys, content_encoding: body.content_encoding || 'aes128gcm', topics: body.topics || [], created_at: iso(), updated_at: iso(),
        };
        this.subscriptions.push(sub);
        return [201, { id: sub.id }];
      }
      if (method === 'GET' && p.length === 3) {
        if (!isBackend) return unauthorized();
        const list = this.subscriptions.filter((s) => s.app === app.id && (!query.user || s.user === query.user));
        return [200, {
          subscriptions: list.map(({ id, user, endpoint, content_encoding, topics, created_at, updated_at }) => ({
            id, user, endpoint_host: new URL(endpoint).host, content_encoding, topics, created_at, updated_at,
          })),
        }];
      }
      if (method === 'DELETE') {
        if (!isBackend && !tokenUser) return unauthorized();
        const match = p.length === 4 ? (s) => s.id === p[3] : (s) => s.endpoint === query.endpoint;
        const sub = this.subscriptions.find((s) => s.app === app.id && match(s));
        if (!sub) return this.error(404, 'not_found', 'no such subscription');
        if (tokenUser && sub.user !== tokenUser) return this.error(403, 'forbidden', 'not your subscription');
        this.subscriptions = this.subscriptions.filter((s) => s !== sub);
        return [204, null];
      }
    }

    if (p[2] === 'notifications') {
      if (!isBackend) return unauthorized();
      if (method === 'POST' && p.length === 3) {
        const to = body?.to || {};
        let subs = this.subscriptions.filter((s) => s.app === app.id);
        if (to.user) subs = subs.filter((s) => s.user === to.user);
        else if (to.users) subs = subs.filter((s) => to.users.includes(s.user));
        else if (to.subscription) subs = subs.filter((s) => s.id === to.subscription);
        else if (!to.all) subs = [];
        const id = newId('ntf');
        const dels = subs.map((s) => ({ id: newId('dlv'), app: app.id, notification_id: id, subscription_id: s.id, user: s.user, title: body.title, endpoint_host: new URL(s.endpoint).host, attempts: 0, last_error: null, status: 'pending', created_at: iso(), next_attempt_at: iso() }));
        this.deliveries.push(...dels);
        this.notifications.set(id, { id, app: app.id, title: body.title, body: body.body, created_at: iso(), deliveryIds: dels.map((d) => d.id) });
        return [202, { id, deliveries: dels.length }];
      }
      if (method === 'GET' && p.length === 4) {
        const n = this.notifications.get(p[3]);
        if (!n) return this.error(404, 'not_found', 'no such notification');
        const dels = this.deliveries.filter((d) => n.deliveryIds.includes(d.id));
        for (const d of dels) if (d.status === 'pending') { d.status = this.deliverAs; d.attempts += 1; }
        const count = (...st) => dels.filter((d) => st.includes(d.status)).length;
        const pending = count('pending', 'in_flight');
        return [200, {
          id: n.id,
          title: n.title,
          status: pending ? 'pending' : 'completed',
          total: dels.length,
          delivered: count('delivered'),
          pending,
          failed: count('failed'),
          gone: count('gone'),
          expired: count('expired'),
          created_at: n.created_at,
          deliveries: dels.map(({ id, subscription_id, user, status, attempts, last_error }) => ({ id, subscription_id, user, status, attempts, last_error })),
        }];
      }
    }
    return this.error(404, 'not_found', 'no such route');
  }
}
