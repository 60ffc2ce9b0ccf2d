/**
 * A small tmpfs of the test's own, to fill up for real (a full disk), unmounted in teardown; and filling
 * it: a file that takes all the room left.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Test } from 'tap';

/** A tmpfs of `mib` MiB mounted on a fresh directory; gone after the test. */
export function smallTmpfs(t: Test, mib: number): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cubefs-full-'));
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${mib}m,mode=0755`, 'cubefs-test-full', dir], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`mount -t tmpfs (a small disk to fill) failed: ${r.stderr || r.error?.message} (the test needs root)`);
  t.teardown(() => {
    spawnSync('umount', ['-l', dir]);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

/** Takes every byte left on the file system of `dir` with one file (`dir`/filler); returns its path. */
export function fill(dir: string): string {
  const f = path.join(dir, 'filler');
  const fd = fs.openSync(f, 'a');
  const block = Buffer.alloc(64 * 1024, 0x5a);
  try {
    for (let n = block.length; n >= 1;) {
      try {
        fs.writeSync(fd, block, 0, n);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
        n = Math.floor(n / 2);
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return f;
}
