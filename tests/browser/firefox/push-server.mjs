// A local push service for Firefox, in the shape of Mozilla's autopush:
//
// - browser side: the WebSocket protocol Firefox's push client speaks
//   (hello, register, unregister, notification, ack, ping) on ws://127.0.0.1;
// - application server side: RFC 8030 `POST /wpush/v2/<channelID>` over
//   HTTPS, with the VAPID (RFC 8292) checks autopush makes: the JWT is signed
//   by the key in `k`, which must be the key the subscription was made with,
//   for this origin and not expired.
//
// A push is forwarded to the browser as autopush forwards it: the body in
// base64url, the encoding in `headers`. `tamperNext()` flips a byte of the
// next body before forwarding, to check that the browser refuses it.
import crypto from 'node:crypto';
import https from 'node:https';
import { WebSocketServer } from 'ws';

const b64url = (buf) => Buffer.from(buf).toString('base64url');
const unpad = (s) => String(s || '').replace(/=+$/, '');

/**
 * Verifies `Authorization: vapid t=<jwt>, k=<key>`; returns null when valid,
 * else why not.
 */
export function checkVapid(header, { audience, registeredKey }) {
  const m = /^vapid\s+(.+)$/i.exec(header || '');
  if (!m) return `no "vapid" Authorization header (got ${JSON.stringify(header || null)})`;
  const params = Object.fromEntries(m[1].split(',').map((p) => {
    const i = p.indexOf('=');
    return [p.slice(0, i).trim(), p.slice(i + 1).trim()];
  }));
  if (!params.t || !params.k) return 'Authorization lacks t= or k=';
  if (registeredKey && unpad(params.k) !== unpad(registeredKey)) return 'VAPID public key mismatch';
  const raw = Buffer.from(params.k, 'base64url');
  if (raw.length !== 65 || raw[0] !== 4) return 'k is not an uncompressed P-256 point';
  const key = crypto.createPublicKey({
    key: { kty: 'EC', crv: 'P-256', x: b64url(raw.subarray(1, 33)), y: b64url(raw.subarray(33)) },
    format: 'jwk',
  });
  const parts = params.t.split('.');
  if (parts.length !== 3) return 'the JWT does not have three parts';
  let head;
  let claims;
  try {
    head = JSON.parse(Buffer.from(parts[0], 'base64url'));
    claims = JSON.parse(Buffer.from(parts[1], 'base64url'));
  } catch {
    return 'the JWT is not JSON';
  }
  if (head.alg !== 'ES256') return `JWT alg is ${head.alg}, not ES256`;
  const signed = crypto.verify('sha256', Buffer.from(`${parts[0]}.${parts[1]}`), { key, dsaEncoding: 'ieee-p1363' },
    Buffer.from(parts[2], 'base64url'));
  if (!signed) return 'the JWT signature does not verify with k';
  if (claims.aud !== audience) return `JWT aud is ${JSON.stringify(claims.aud)}, not ${audience}`;
  const now = Date.now() / 1000;
  if (typeof claims.exp !== 'number' || claims.exp < now || claims.exp > now + 24 * 3600 + 60) {
    return `JWT exp ${claims.exp} is not within the next 24 hours`;
  }
  if (typeof claims.sub !== 'string' || !/^(mailto:|https:)/.test(claims.sub)) return `JWT sub is ${JSON.stringify(claims.sub)}`;
  return null;
}

/**
 * Starts both sides on 127.0.0.1. `tls` is { key, cert } (PEM) for the HTTPS
 * side, whose endpoints are named https://localhost:<port>/.
 */
export async function startPushServer({ tls, log = () => {} }) {
  const channels = new Map(); // channelID -> { uaid, key }
  const sockets = new Map(); // uaid -> ws
  const pending = new Map(); // uaid -> [message] queued while offline
  const events = []; // everything that happened, in order
  const waiters = [];
  let tamper = 0;

  const record = (e) => {
    events.push({ at: Date.now(), ...e });
    log(JSON.stringify(e));
    for (const w of [...waiters]) w();
  };

  // ---------------------------------------------------------------- WebSocket side
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((resolve, reject) => { wss.once('listening', resolve); wss.once('error', reject); });

  wss.on('connection', (ws) => {
    let uaid = null;
    const send = (msg) => { if (ws.readyState === ws.OPEN) ws.send(JSON.stringify(msg)); };
    ws.on('message', (raw) => {
      let msg;
      try { msg = JSON.parse(String(raw)); } catch { ws.close(4000, 'not JSON'); return; }
      if (!msg.messageType) { send({}); return; } // ping
      switch (msg.messageType) {
        case 'hello': {
          uaid = typeof msg.uaid === 'string' && /^[0-9a-f]{32}$/.test(msg.uaid) ? msg.uaid : crypto.randomUUID().replace(/-/g, '');
          const previous = sockets.get(uaid);
          if (previous && previous !== ws) previous.close(4001, 'replaced');
          sockets.set(uaid, ws);
          record({ type: 'hello', uaid, sentUaid: msg.uaid || null });
          send({ messageType: 'hello', status: 200, uaid, use_webpush: true, broadcasts: {} });
          for (const m of pending.get(uaid) || []) send(m);
          pending.delete(uaid);
          break;
        }
        case 'register': {
          if (!uaid) { ws.close(4002, 'register before hello'); return; }
          const channelID = String(msg.channelID);
          channels.set(channelID, { uaid, key: msg.key || null });
          const pushEndpoint = `${api.pushUrl}/wpush/v2/${channelID}`;
          record({ type: 'register', uaid, channelID, key: msg.key || null, pushEndpoint });
          send({ messageType: 'register', status: 200, channelID, pushEndpoint });
          break;
        }
        case 'unregister': {
          const channelID = String(msg.channelID);
          channels.delete(channelID);
          record({ type: 'unregister', uaid, channelID, code: msg.code ?? null });
          send({ messageType: 'unregister', status: 200, channelID });
          break;
        }
        case 'ack':
          for (const u of msg.updates || []) record({ type: 'ack', uaid, channelID: u.channelID, version: u.version, code: u.code ?? null });
          break;
        case 'nack':
          record({ type: 'nack', uaid, version: msg.version, code: msg.code ?? null });
          break;
        default:
          record({ type: 'other', uaid, messageType: msg.messageType });
      }
    });
    ws.on('close', () => {
      if (uaid && sockets.get(uaid) === ws) sockets.delete(uaid);
      record({ type: 'disconnect', uaid });
    });
  });

  // ---------------------------------------------------------------- HTTPS side
  const server = https.createServer(tls, (req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const reply = (status, json, headers = {}) => {
        res.writeHead(status, { 'Content-Type': 'application/json', ...headers });
        res.end(json ? JSON.stringify(json) : '');
      };
      const error = (status, errno, message) => {
        record({ type: 'rejected', path: req.url, status, message });
        reply(status, { code: status, errno, error: httpReason(status), message });
      };
      const m = /^\/wpush\/v2\/([^/?]+)$/.exec(req.url);
      if (req.method !== 'POST' || !m) return error(404, 102, 'not found');
      const channelID = decodeURIComponent(m[1]);
      const ch = channels.get(channelID);
      if (!ch) return error(410, 106, 'Request did not validate: no such subscription');
      const why = checkVapid(req.headers.authorization, { audience: api.pushUrl, registeredKey: ch.key });
      if (why) return error(401, 109, why);
      const ttl = Number(req.headers.ttl);
      if (!Number.isInteger(ttl) || ttl < 0) return error(400, 112, 'missing or invalid TTL header');
      const encoding = req.headers['content-encoding'] || null;
      if (body.length && encoding !== 'aes128gcm' && encoding !== 'aesgcm') return error(400, 110, `unknown Content-Encoding ${encoding}`);
      if (body.length > 4096) return error(413, 104, 'payload too large');

      const version = crypto.randomUUID();
      let forwarded = body;
      let tampered = false;
      if (tamper > 0 && body.length) {
        tamper -= 1;
        tampered = true;
        forwarded = Buffer.from(body);
        forwarded[forwarded.length - 1] ^= 0x01; // last byte of the AEAD tag
      }
      const message = { messageType: 'notification', channelID, version };
      if (body.length) {
        message.data = b64url(forwarded);
        message.headers = { encoding };
        if (encoding === 'aesgcm') {
          message.headers.crypto_key = req.headers['crypto-key'];
          message.headers.encryption = req.headers.encryption;
        }
      }
      const ws = sockets.get(ch.uaid);
      if (ws && ws.readyState === ws.OPEN) ws.send(JSON.stringify(message));
      else pending.set(ch.uaid, [...(pending.get(ch.uaid) || []), message]);
      record({
        type: 'push', channelID, version, tampered, online: !!ws, bytes: body.length, encoding, ttl,
        urgency: req.headers.urgency || null, topic: req.headers.topic || null,
      });
      reply(201, null, { Location: `${api.pushUrl}/m/${version}`, TTL: String(ttl) });
    });
  });
  await new Promise((resolve, reject) => { server.once('error', reject); server.listen(0, '127.0.0.1', resolve); });

  const api = {
    wsUrl: `ws://127.0.0.1:${wss.address().port}/`,
    pushUrl: `https://localhost:${server.address().port}`,
    events,
    /** Flip a byte in the body of the next `n` pushes. */
    tamperNext(n = 1) { tamper += n; },
    /** Resolves to check()'s first truthy result, re-evaluated on every event. */
    waitFor(check, what, timeoutMs = 20_000) {
      return new Promise((resolve, reject) => {
        const tryIt = () => {
          const v = check(events);
          if (!v) return;
          waiters.splice(waiters.indexOf(tryIt), 1);
          clearTimeout(timer);
          resolve(v);
        };
        const timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(tryIt), 1);
          reject(new Error(`push service: timed out waiting for ${what}; events: ${JSON.stringify(events.slice(-10))}`));
        }, timeoutMs);
        waiters.push(tryIt);
        tryIt();
      });
    },
    async close() {
      for (const ws of wss.clients) ws.terminate();
      await new Promise((r) => wss.close(() => r()));
      server.closeAllConnections?.();
      await new Promise((r) => server.close(() => r()));
    },
  };
  return api;
}

function httpReason(status) {
  return { 400: 'Bad Request', 401: 'Unauthorized', 404: 'Not Found', 410: 'Gone', 413: 'Payload Too Large' }[status] || 'Error';
}
