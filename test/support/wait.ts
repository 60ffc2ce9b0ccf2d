/**
 * Waiting in tests: poll a condition up to a bound (a liveness deadline, never an assertion on time), and
 * a scratch mountpoint that teardown always unmounts.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { mountedAt } from '../../src/fuse/session.js';

/** True as soon as `cond` holds, polled every 50 ms for up to `ms`; false if it never did. */
export async function until(cond: () => boolean | Promise<boolean>, ms = 20_000): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end;) {
    if (await cond()) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return cond();
}

/** Like until, but a condition that never holds throws "timed out waiting for <what>". */
export async function waitFor(what: string, cond: () => boolean | Promise<boolean>, ms = 15_000): Promise<void> {
  if (!(await until(cond, ms))) throw new Error(`timed out waiting for ${what}`);
}

/** A temp dir with an empty `mnt` in it; in teardown whatever is still mounted there goes, then the dir. */
export function scratchMount(t: { teardown(fn: () => void): void }): { dir: string; mnt: string } {
  const dir = fs.mkdtempSync(os.tmpdir() + '/cubefs-');
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(mnt);
  t.teardown(() => {
    if (mountedAt(mnt) !== null) spawnSync('umount', ['-l', mnt]);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { dir, mnt };
}
