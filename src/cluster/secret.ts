/**
 * The embedded cluster's admin secret: DIR/secret, 64 hex digits, mode 0600, made once at the first start
 * (or the first start of a cluster directory from before it existed) and kept across restarts. The master
 * wants it for what changes the cluster or hands out credentials (createVol, getVol's Owner); see
 * docs/security.md for what it does and does not protect.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { CubeFSError, ErrorCode } from '../util/errors.js';
import { warn } from '../util/log.js';

export const SECRET_FILE = 'secret';
/** Shorter than this is not a secret someone meant (an empty or truncated file). */
const MIN_SECRET_LENGTH = 32;

export function secretPath(dir: string): string {
  return path.join(dir, SECRET_FILE);
}

/** The secret in `file`, its mode tightened to 0600 if it was looser. */
export function readSecret(file: string): string {
  let text: string;
  try {
    const st = fs.statSync(file);
    if ((st.mode & 0o077) !== 0) {
      fs.chmodSync(file, 0o600);
      warn('cluster', `${file} was readable by other users (mode ${(st.mode & 0o777).toString(8)}); now 0600`);
    }
    text = fs.readFileSync(file, 'utf8').trim();
  } catch (e) {
    throw new CubeFSError(ErrorCode.Invalid, `cannot read the cluster secret ${file}: ${(e as Error).message}`, { cause: e });
  }
  if (text.length < MIN_SECRET_LENGTH || /\s/.test(text)) {
    throw new CubeFSError(ErrorCode.Invalid, `${file} does not hold a secret (want one line of at least ${MIN_SECRET_LENGTH} characters); remove it and a new one is made at the next start`);
  }
  return text;
}

/** The cluster's secret, made now if DIR has none. */
export function ensureSecret(dir: string): string {
  const file = secretPath(dir);
  if (!fs.existsSync(file)) {
    // Written whole under another name, then linked: a crash or a second launcher never leaves a torn secret.
    const tmp = `${file}.${process.pid}.tmp`;
    const fd = fs.openSync(tmp, 'wx', 0o600);
    try {
      fs.fchmodSync(fd, 0o600); // whatever the umask says
      fs.writeSync(fd, `${randomBytes(32).toString('hex')}\n`);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    try {
      fs.linkSync(tmp, file);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    } finally {
      fs.rmSync(tmp, { force: true });
    }
  }
  return readSecret(file);
}
