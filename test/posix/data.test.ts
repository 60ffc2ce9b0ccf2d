/**
 * Data through the mount, compared byte for byte: cp + cmp of 0 B .. 200 MiB, parallel writers, fio with
 * crc32c verification. The cluster runs in child processes, the mount in a fixture process.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { posixEnv, ok, run, sh, childEnv, MiB } from '../support/mount.js';

const env = await posixEnv(t, { tmpfsMiB: 1024 });
const { mnt, tmp } = env;

t.test('cp + cmp: 0 B, 1 B, 4095 B, 1 MiB, 33 MiB, 200 MiB of /dev/urandom', async (t) => {
  const sizes = [0, 1, 4095, MiB, 33 * MiB, 200 * MiB];
  fs.mkdirSync(path.join(mnt, 'cp'));
  for (const size of sizes) {
    const src = path.join(tmp, `rand-${size}`);
    sh(t, `head -c ${size} /dev/urandom > ${src}`, `made ${size} B of random data`);
    const dst = path.join(mnt, 'cp', `f-${size}`);
    ok(t, 'cp', [src, dst], `cp ${size} B onto the mount`);
    t.equal(fs.statSync(dst).size, size, `stat size ${size}`);
    ok(t, 'cmp', [src, dst], `cmp ${size} B: identical`);
    // Drop the kernel's page cache for the file so the next read comes from the datanodes.
    sh(t, `echo 1 > /proc/sys/vm/drop_caches`, 'page cache dropped');
    ok(t, 'cmp', [src, dst], `cmp ${size} B after dropping caches: identical`);
    // And back: cp from the mount to tmpfs, cmp there.
    const back = path.join(tmp, `back-${size}`);
    ok(t, 'cp', [dst, back], `cp ${size} B back to tmpfs`);
    ok(t, 'cmp', [src, back], `the copy back is identical`);
    fs.rmSync(src);
    fs.rmSync(back);
  }
  t.same(fs.readdirSync(path.join(mnt, 'cp')).sort(), sizes.map((s) => `f-${s}`).sort(), 'every file listed');
});

t.test('4 writers at once (dd, 24 MiB each, different block sizes), each file verified', async (t) => {
  fs.mkdirSync(path.join(mnt, 'par'));
  const bs = ['1M', '128k', '64k', '4k'];
  const srcs = bs.map((_, i) => path.join(tmp, `par-src-${i}`));
  srcs.forEach((s, i) => sh(t, `head -c ${24 * MiB} /dev/urandom > ${s}`, `source ${i}`));
  const codes = await Promise.all(bs.map((b, i) => new Promise<number | null>((resolve) => {
    const c = spawn('dd', [`if=${srcs[i]}`, `of=${path.join(mnt, 'par', `f${i}`)}`, `bs=${b}`, 'status=none'], { env: childEnv(), stdio: 'ignore' });
    c.on('exit', (code) => resolve(code));
  })));
  t.same(codes, [0, 0, 0, 0], 'every dd exited 0');
  sh(t, `echo 1 > /proc/sys/vm/drop_caches`, 'page cache dropped');
  srcs.forEach((s, i) => ok(t, 'cmp', [s, path.join(mnt, 'par', `f${i}`)], `file ${i} (bs=${bs[i]}) identical`));
  srcs.forEach((s) => fs.rmSync(s));
});

t.test('fio --verify=crc32c: sequential 1 MiB and random 4 KiB writes, numjobs=4, verify_fatal', async (t) => {
  const dir = path.join(mnt, 'fio');
  fs.mkdirSync(dir);
  const common = [`--directory=${dir}`, '--ioengine=psync', '--numjobs=4', '--verify=crc32c', '--verify_fatal=1',
    '--do_verify=1', '--verify_state_save=0', '--group_reporting=1', '--output-format=json'];
  const jobs: [string, number, string[]][] = [
    // 1 MiB sequential writes to new files.
    ['seq', 32, ['--rw=write', '--bs=1m']],
    // 4 KiB random overwrites of files fio laid out first (RandomWrite in place).
    ['rand', 16, ['--rw=randwrite', '--bs=4k', '--overwrite=1']],
    // 4 KiB random writes into the holes of sparse files (each lands in a new extent).
    ['holes', 2, ['--rw=randwrite', '--bs=4k']],
  ];
  for (const [name, mib, extra] of jobs) {
    const r = run('fio', [`--name=${name}`, `--size=${mib}m`, ...common, ...extra]);
    t.equal(r.status, 0, `fio ${name} exited 0`, r.status === 0 ? {} : { stderr: r.stderr.slice(-3000) });
    const json = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: { error: number; write: { io_bytes: number }; read: { io_bytes: number } }[] };
    const job = json.jobs[0]!;
    t.equal(job.error, 0, `fio ${name}: no job error`);
    t.equal(job.write.io_bytes, 4 * mib * MiB, `fio ${name}: 4 x ${mib} MiB written`);
    t.equal(job.read.io_bytes, 4 * mib * MiB, `fio ${name}: 4 x ${mib} MiB read back and verified`);
    t.notMatch(r.stderr, /verify|bad magic|crc32c/i, `fio ${name}: no verify errors on stderr`);
  }
});
