// A throw-away CA and a certificate for localhost signed by it, made with the
// openssl command line.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';

function openssl(args, cwd) {
  try {
    execFileSync('openssl', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    throw new Error(`openssl ${args.join(' ')} failed: ${err.stderr || err.message}`);
  }
}

/** Writes ca.pem, server.pem and server.key into `dir`; resolves to their paths and the PEM texts. */
export async function makeCerts(dir) {
  await fs.mkdir(dir, { recursive: true });
  await fs.writeFile(path.join(dir, 'ca.cnf'), [
    '[req]', 'distinguished_name = dn', 'prompt = no', '[dn]', 'CN = Herald browser test CA',
    '[v3_ca]', 'basicConstraints = critical, CA:TRUE', 'keyUsage = critical, keyCertSign, cRLSign',
    'subjectKeyIdentifier = hash', '',
  ].join('\n'));
  await fs.writeFile(path.join(dir, 'server.ext'), [
    'basicConstraints = critical, CA:FALSE', 'keyUsage = critical, digitalSignature',
    'extendedKeyUsage = serverAuth', 'subjectAltName = DNS:localhost, IP:127.0.0.1',
    'authorityKeyIdentifier = keyid', 'subjectKeyIdentifier = hash', '',
  ].join('\n'));
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl(['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2',
    '-config', 'ca.cnf', '-extensions', 'v3_ca'], dir);
  openssl(['req', '-new', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=localhost'], dir);
  openssl(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-set_serial',
    `0x${Date.now().toString(16)}`, '-days', '2', '-sha256', '-extfile', 'server.ext', '-out', 'server.pem'], dir);
  const read = (f) => fs.readFile(path.join(dir, f), 'utf8');
  return {
    caFile: path.join(dir, 'ca.pem'),
    key: await read('server.key'),
    cert: await read('server.pem'),
  };
}
