// Minimal static server that maps URLs to static/ the way Herald does:
// /sw.js, /herald.js, /settings, /admin, / and /static/*.
import http from 'node:http';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const STATIC_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../static');

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
};

const ROUTES = {
  '/': 'index.html',
  '/sw.js': 'sw.js',
  '/herald.js': 'herald.js',
  '/settings': 'settings.html',
  '/admin': 'admin.html',
};

export function resolve(urlPath) {
  if (ROUTES[urlPath]) return ROUTES[urlPath];
  if (urlPath.startsWith('/static/')) {
    const rel = path.posix.normalize(decodeURIComponent(urlPath.slice('/static/'.length)));
    if (rel.startsWith('..') || rel.startsWith('/') || rel.includes('\0')) return null;
    return rel;
  }
  return null;
}

/** Starts the server on 127.0.0.1 (random port); resolves to { url, close }. */
export async function startStaticServer({ port = 0 } = {}) {
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://localhost');
    const file = resolve(url.pathname);
    if (url.pathname === '/healthz') {
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      res.end('ok');
      return;
    }
    if (!file) {
      res.writeHead(404, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ error: { code: 'not_found', message: 'not found' } }));
      return;
    }
    try {
      const body = await fs.readFile(path.join(STATIC_DIR, file));
      const headers = { 'Content-Type': TYPES[path.extname(file)] || 'application/octet-stream', 'Cache-Control': 'no-store' };
      if (file === 'sw.js') headers['Service-Worker-Allowed'] = '/';
      res.writeHead(200, headers);
      res.end(body);
    } catch {
      res.writeHead(404, { 'Content-Type': 'text/plain' });
      res.end('not found');
    }
  });
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  const { port: p } = server.address();
  return {
    url: `http://127.0.0.1:${p}`,
    close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(() => r()); }),
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const s = await startStaticServer({ port: Number(process.env.PORT || 8080) });
  console.log(`serving ${STATIC_DIR} at ${s.url}`);
}
