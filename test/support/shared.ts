/**
 * Where ../shared is: beside the checkout (as CI places it), or CUBEFS_SHARED. A clear failure otherwise.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

export function sharedDir(): string {
  const dir = process.env.CUBEFS_SHARED ?? path.resolve(repoRoot, '..', 'shared');
  if (!fs.existsSync(path.join(dir, 'golden', 'cubefs-real'))) {
    throw new Error(`golden captures not found in ${dir}/golden/cubefs-real: put the shared/ folder beside the checkout or set CUBEFS_SHARED`);
  }
  return dir;
}

/** A file URL under shared/golden/cubefs-real/ (with a trailing slash for a folder). */
export function goldenUrl(file = ''): URL {
  return new URL(`file://${path.join(sharedDir(), 'golden', 'cubefs-real')}/${file}`);
}

/** The path of a capture under shared/golden/cubefs-real/interop/. */
export function interopCapture(file: string): string {
  return path.join(sharedDir(), 'golden', 'cubefs-real', 'interop', file);
}
