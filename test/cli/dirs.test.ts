/**
 * Directories the user names (--log-dir, cluster --dir, demo --dir) that cannot be made or written: the
 * command fails at once with one line saying what happened, where Node's own recursive mkdir spun forever
 * (/proc) or said ENOENT (a read-only file system).
 */
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { makeDirs } from '../../src/util/dirs.js';
import { tempDir } from '../support/cluster.js';
import { BIN, scratch } from './helpers.js';

/** Runs the CLI, killing it after `ms` (a hang is reported as code null, not a stuck test). */
function cliWithin(args: string[], ms = 15_000): Promise<{ code: number | null; stderr: string; ms: number }> {
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  delete env.DEBUG;
  const t0 = Date.now();
  const child = spawn(BIN, args, { stdio: ['ignore', 'ignore', 'pipe'], env });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
  const timer = setTimeout(() => child.kill('SIGKILL'), ms);
  return new Promise((resolve) => child.once('close', (code) => {
    clearTimeout(timer);
    resolve({ code, stderr, ms: Date.now() - t0 });
  }));
}

const mountArgs = (mnt: string): string[] => [mnt, '--master', '127.0.0.1:1', '--vol', 'v', '--owner', 'o'];

t.test('a directory under /proc fails at once, in one line, for --log-dir, cluster --dir and demo --dir', async (t) => {
  const { mnt } = scratch(t);
  const cases: [string, string[], RegExp][] = [
    ['--log-dir /proc/x', [...mountArgs(mnt), '--log-dir', '/proc/x'], /^cubefs-mount: cannot create the log directory \/proc\/x: \/proc cannot hold new directories \(ENOENT\)$/],
    ['--log-dir /proc/x/y', [...mountArgs(mnt), '--log-dir', '/proc/x/y'], /cannot create the log directory \/proc\/x\/y: \/proc cannot hold new directories/],
    ['cluster --dir /proc/x', ['cluster', '--dir', '/proc/x', '--master-port', '0'], /^cubefs-mount: cannot create the cluster directory \/proc\/x: \/proc cannot hold new directories \(ENOENT\)$/],
    ['demo --dir /proc/x', ['demo', '--dir', '/proc/x', '--master-port', '0'], /^cubefs-mount: cannot create the demo directory \/proc\/x: \/proc cannot hold new directories/],
  ];
  for (const [what, args, msg] of cases) {
    const r = await cliWithin(args);
    t.equal(r.code, 1, `${what}: exit 1 (not a hang)`);
    t.ok(r.ms < 10_000, `${what}: at once (${r.ms} ms)`);
    t.match(r.stderr.trim(), msg, `${what}: says why (${r.stderr.trim()})`);
    t.equal(r.stderr.trim().split('\n').length, 1, `${what}: in one line`);
  }
});

t.test('a read-only log directory is said to be not writable (EROFS), not missing', async (t) => {
  const { dir, mnt } = scratch(t);
  const ro = path.join(dir, 'ro');
  fs.mkdirSync(ro);
  const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'ro,size=1m', 'tmpfs', ro]);
  t.equal(m.status, 0, `a read-only tmpfs at ${ro}`);
  t.teardown(() => { spawnSync('umount', ['-l', ro]); });
  const inside = await cliWithin([...mountArgs(mnt), '--log-dir', path.join(ro, 'logs')]);
  t.equal(inside.code, 1);
  t.equal(inside.stderr.trim(), `cubefs-mount: cannot create the log directory ${ro}/logs: ${ro} is not writable (EROFS: read-only file system)`);
  const itself = await cliWithin([...mountArgs(mnt), '--log-dir', ro]);
  t.equal(itself.code, 1);
  t.equal(itself.stderr.trim(), `cubefs-mount: log directory ${ro} is not writable (EROFS: read-only file system)`);
  const cluster = await cliWithin(['cluster', '--dir', path.join(ro, 'c'), '--master-port', '0']);
  t.equal(cluster.code, 1);
  t.match(cluster.stderr.trim(), `cannot create the cluster directory ${ro}/c: ${ro} is not writable (EROFS`);
});

t.test('makeDirs: parents, an existing directory, a file or a dangling link on the way, the mode', async (t) => {
  const dir = tempDir(t);
  const deep = path.join(dir, 'a/b/c');
  makeDirs(deep, 0o700);
  t.ok(fs.statSync(deep).isDirectory(), 'parents made');
  t.equal(fs.statSync(deep).mode & 0o777, 0o700, 'the mode is the last one\'s');
  makeDirs(deep);
  t.pass('an existing directory is fine');
  fs.symlinkSync(deep, path.join(dir, 'link'));
  makeDirs(path.join(dir, 'link'));
  t.pass('a link to a directory is fine');
  fs.writeFileSync(path.join(dir, 'file'), '');
  t.throws(() => makeDirs(path.join(dir, 'file/x')), { code: 'ENOTDIR', message: `${dir}/file is not a directory` });
  fs.symlinkSync(path.join(dir, 'nowhere'), path.join(dir, 'dangling'));
  t.throws(() => makeDirs(path.join(dir, 'dangling/x')), { code: 'ENOENT', message: `${dir}/dangling is a symbolic link to nothing` });
  t.throws(() => makeDirs('/proc/x/y'), { code: 'ENOENT', message: '/proc cannot hold new directories (ENOENT)' });
});
