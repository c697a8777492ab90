// Runs a command against a fresh Herald (the debug build, or HERALD_BIN):
//
//   node tests/browser/with-herald.mjs node tests/browser/run.mjs
//
// Herald gets a temporary directory (database, keys, log) and a random admin
// token; the command gets HERALD_URL and HERALD_ADMIN_TOKEN. Herald's log is
// kept in test-artifacts/browser/herald-live.log. Exits with the command's status.
import fs from 'node:fs/promises';
import path from 'node:path';

import { ROOT, startHerald, startProcess } from './lib/herald.mjs';

const [cmd, ...args] = process.argv.slice(2);
if (!cmd) {
  console.error('usage: node tests/browser/with-herald.mjs COMMAND [ARGS...]');
  process.exit(2);
}

const artifacts = path.join(ROOT, 'test-artifacts/browser');
await fs.mkdir(artifacts, { recursive: true });
const logFile = path.join(artifacts, 'herald-live.log');
await fs.rm(logFile, { force: true });

const herald = await startHerald({ logFile });
let status = 1;
try {
  console.log(`Herald is running at ${herald.url} (log: ${path.relative(ROOT, logFile)})`);
  const run = startProcess(cmd, args, {
    env: { ...process.env, HERALD_URL: herald.url, HERALD_ADMIN_TOKEN: herald.adminToken },
  });
  const exited = await run.done;
  if (exited.error) console.error(`${cmd}: ${exited.error.message}`);
  status = exited.code ?? 1;
  if (herald.proc.exited) {
    console.error(`Herald exited during the run: ${JSON.stringify(herald.proc.exited)}`);
    status = status || 1;
  }
} finally {
  await herald.stop();
  await fs.rm(herald.dir, { recursive: true, force: true });
}
process.exit(status);
