// Launches the system Chromium with a fresh, empty profile.
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export const ARTIFACTS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../test-artifacts/browser');

export const PHONE = { width: 390, height: 844 };
export const DESKTOP = { width: 1280, height: 900 };

/**
 * A persistent context on a new temporary user-data-dir (so service workers,
 * push and notifications behave as in a normal profile).
 */
export async function launch({ env = {}, viewport = DESKTOP, permissions = [], origin } = {}) {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'herald-browser-'));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    env: { ...process.env, ...env },
    viewport,
  });
  if (permissions.length) await context.grantPermissions(permissions, origin ? { origin } : undefined);
  const page = context.pages()[0] || await context.newPage();
  return {
    context,
    page,
    async close() {
      await context.close().catch(() => {});
      await fs.rm(dir, { recursive: true, force: true }).catch(() => {});
    },
  };
}

/** Collects console errors and uncaught exceptions of a page (and its frames). */
export function watchErrors(page, { ignore = [] } = {}) {
  const errors = [];
  const skip = (text) => ignore.some((re) => re.test(text));
  page.on('console', (m) => {
    if (m.type() === 'error' && !skip(m.text())) errors.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => { if (!skip(String(e))) errors.push(`pageerror: ${e.message}`); });
  return errors;
}

export async function screenshot(page, name) {
  await fs.mkdir(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** The service worker registration id (for CDP) of a scope. */
export async function swRegistrationId(context, page, scopeURL) {
  const cdp = await context.newCDPSession(page);
  const regs = new Map();
  cdp.on('ServiceWorker.workerRegistrationUpdated', (e) => {
    for (const r of e.registrations) regs.set(r.registrationId, r);
  });
  await cdp.send('ServiceWorker.enable');
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    const hit = [...regs.values()].find((r) => !r.isDeleted && r.scopeURL === scopeURL);
    if (hit) return { cdp, registrationId: hit.registrationId };
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no service worker registration for ${scopeURL}`);
}
