// Reference sender for the delivery benchmark: the `web-push` package on
// Node, as an application would use it to send to many subscriptions itself.
//
//   node send.mjs --subs subs.json --ca ca.pem [--count N] [--concurrency 64]
//
// subs.json is an array of PushSubscription.toJSON() objects. The script
// loads everything, prints "ready" and waits for a line "go" on stdin so the
// caller can take its CPU baseline after start-up; then it sends one
// notification to each of the first N subscriptions with `concurrency`
// requests in flight over a keep-alive HTTPS agent, prints one JSON line with
// its figures, and exits when stdin closes (so the caller can read this
// process's CPU accounting before it goes away).

import dns from 'node:dns';
import fs from 'node:fs';
import https from 'node:https';
import readline from 'node:readline';
import webpush from 'web-push';

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i === -1) {
    if (fallback === undefined) throw new Error(`--${name} is required`);
    return fallback;
  }
  return process.argv[i + 1];
}

// The sink listens on 127.0.0.1 only; "localhost" must not resolve to ::1 first.
dns.setDefaultResultOrder('ipv4first');

const subs = JSON.parse(fs.readFileSync(arg('subs'), 'utf8'));
const count = Math.min(Number(arg('count', String(subs.length))), subs.length);
const concurrency = Number(arg('concurrency', '64'));
const agent = new https.Agent({
  keepAlive: true,
  maxSockets: concurrency,
  ca: fs.readFileSync(arg('ca')),
});
const vapid = webpush.generateVAPIDKeys();
const options = {
  vapidDetails: { subject: 'mailto:bench@example.com', publicKey: vapid.publicKey, privateKey: vapid.privateKey },
  TTL: 86400,
  urgency: 'normal',
  contentEncoding: 'aes128gcm',
  agent,
  timeout: 15000,
};

// The same payload shape Herald sends to the browser.
function payload(i) {
  return JSON.stringify({
    id: `0193c2d4e5f6700${i}`,
    title: 'Bench broadcast',
    body: 'Herald delivery benchmark',
    target_url: 'https://example.com/bench',
  });
}

async function run() {
  let next = 0;
  let ok = 0;
  let failed = 0;
  let firstError = null;
  const started = process.hrtime.bigint();
  const cpuBefore = process.cpuUsage();
  async function worker() {
    for (;;) {
      const i = next++;
      if (i >= count) return;
      try {
        await webpush.sendNotification(subs[i], payload(i), options);
        ok += 1;
      } catch (e) {
        failed += 1;
        if (!firstError) firstError = String(e && (e.body || e.message) || e);
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  const elapsedNs = process.hrtime.bigint() - started;
  const cpu = process.cpuUsage(cpuBefore);
  return {
    sent: count,
    ok,
    failed,
    first_error: firstError,
    elapsed_ms: Number(elapsedNs) / 1e6,
    cpu_user_us: cpu.user,
    cpu_system_us: cpu.system,
  };
}

const lines = readline.createInterface({ input: process.stdin });
let started = false;
lines.on('line', async (line) => {
  if (line.trim() !== 'go' || started) return;
  started = true;
  const result = await run();
  process.stdout.write(JSON.stringify(result) + '\n');
});
lines.on('close', () => {
  agent.destroy();
  process.exit(0);
});
process.stdout.write('ready\n');
