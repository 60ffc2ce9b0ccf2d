/**
 * The table of the issue "Be a true CubeFS client on a real cluster", row by row, on a real mount of the
 * embedded cluster (whose datanodes keep upstream's rules: raft leaders not always Hosts[0], TryOtherAddr
 * from the others, the connection closed after an error reply). What the datanodes served, refused and
 * accepted is read from their heartbeat (Stats), so each row also shows how the client got there: no
 * refusals, no connection per write. Speed is not asserted here (bench/upstream-table.ts measures it).
 */
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { spawn } from 'node:child_process';
import { sumDataNodeStats } from '../../src/cluster/probe.js';
import { CubeFSClient } from '../../src/sdk/client.js';
import { childEnv, MiB, ok, posixEnv, run, sh } from '../support/mount.js';
import { until } from '../support/wait.js';

const env = await posixEnv(t, { tmpfsMiB: 512 });
const { mnt, tmp, dir, cluster } = env;
const PY = '/usr/bin/python3';
const sdk = await CubeFSClient.connect({ masters: cluster.masterAddr, vol: cluster.vol, owner: cluster.owner });
t.teardown(() => sdk.close());

/** The datanodes' own counters, added up (their heartbeat reply's Stats). */
const datanodes = (): ReturnType<typeof sumDataNodeStats> => sumDataNodeStats(cluster.datanodeAddrs);

type Counts = Awaited<ReturnType<typeof sumDataNodeStats>>;
function delta(a: Counts, b: Counts): Counts {
  return { notLeader: b.notLeader - a.notLeader, accepted: b.accepted - a.accepted, reads: b.reads - a.reads, writes: b.writes - a.writes };
}

/** A fresh mount (cold: nothing cached in the kernel or the client), stopped at the end of the test. */
async function coldMount(t: Test, name: string, extra: Record<string, string> = {}): Promise<string> {
  const at = path.join(dir, name);
  const m = await env.mount(at, extra);
  t.teardown(() => m.stop());
  return at;
}

const fioJson = (out: string): { jobs: { error: number; read: { io_bytes: number; iops: number }; write: { io_bytes: number; iops: number } }[] } =>
  JSON.parse(out.slice(out.indexOf('{')));

t.test('overwrite 4 KiB inside an existing file, then fsync: in place, at the leader (before: EAGAIN after 60 s)', async (t) => {
  const src = path.join(tmp, 'ow');
  sh(t, `head -c ${MiB} /dev/urandom > ${src} && head -c 4096 /dev/urandom > ${tmp}/patch`, 'data');
  ok(t, 'cp', [src, path.join(mnt, 'ow')], 'a 1 MiB file on the mount');
  const before = await datanodes();
  for (const seek of [0, 37, 255]) {
    ok(t, 'dd', [`if=${tmp}/patch`, `of=${mnt}/ow`, 'bs=4k', `seek=${seek}`, 'count=1', 'conv=notrunc,fsync', 'status=none'], `dd 4 KiB at block ${seek}, conv=notrunc,fsync`);
    ok(t, 'dd', [`if=${tmp}/patch`, `of=${src}`, 'bs=4k', `seek=${seek}`, 'count=1', 'conv=notrunc', 'status=none'], 'the same on tmpfs');
  }
  const d = delta(before, await datanodes());
  sh(t, 'echo 1 > /proc/sys/vm/drop_caches', 'page cache dropped');
  ok(t, 'cmp', [src, path.join(mnt, 'ow')], 'the overwrites landed in place');
  t.equal(d.notLeader, 0, 'no request refused with TryOtherAddr: RandomWrite went to the raft leader');
  t.equal(fs.statSync(path.join(mnt, 'ow')).size, MiB, 'the size is unchanged');
});

t.test('a cold read of small files: one StreamRead each, at the leader (before: 9 connections, 18 requests for 4)', async (t) => {
  fs.mkdirSync(path.join(tmp, 'small'));
  sh(t, `for i in $(seq 1 100); do head -c 4096 /dev/urandom > ${tmp}/small/f$i; done && cp -r ${tmp}/small ${mnt}/small`, '100 files of 4 KiB');
  const cold = await coldMount(t, 'cold1');
  const before = await datanodes();
  ok(t, 'diff', ['-r', path.join(tmp, 'small'), path.join(cold, 'small')], 'read through a cold mount: identical');
  const d = delta(before, await datanodes());
  t.equal(d.notLeader, 0, 'no TryOtherAddr');
  t.equal(d.reads, 100, 'one read request per file');
  t.ok(d.accepted <= 12, `${d.accepted} connection(s) for 100 files (pooled)`);
  const keys = (await sdk.meta.listExtents(await sdk.resolve('/small/f1'))).extents;
  t.ok(keys.length === 1 && keys[0]!.ExtentId <= 64, 'a 4 KiB file is one tiny extent key');
});

t.test('fio: 4 KiB random reads at QD 16 and 1 MiB sequential reads by 4 jobs, direct (before: 92 IOPS; 34-109 MiB/s)', async (t) => {
  const f = path.join(mnt, 'rd');
  sh(t, `head -c ${64 * MiB} /dev/urandom > ${tmp}/rd && cp ${tmp}/rd ${f}`, '64 MiB on the mount');
  const before = await datanodes();
  const rr = run('fio', ['--name=rr', `--filename=${f}`, '--size=64m', '--rw=randread', '--bs=4k', '--direct=1', '--ioengine=libaio',
    '--iodepth=16', '--number_ios=4000', '--output-format=json']);
  t.equal(rr.status, 0, 'fio randread QD16 exited 0', rr.status === 0 ? {} : { stderr: rr.stderr.slice(-2000) });
  const a = fioJson(rr.stdout).jobs[0]!;
  t.equal(a.error, 0, 'no error');
  t.equal(a.read.io_bytes, 4000 * 4096, '4,000 reads of 4 KiB');
  const sr = run('fio', ['--name=sr', `--filename=${f}`, '--size=64m', '--rw=read', '--bs=1m', '--direct=1', '--ioengine=psync',
    '--numjobs=4', '--group_reporting=1', '--output-format=json']);
  t.equal(sr.status, 0, 'fio sequential read, 4 jobs, exited 0', sr.status === 0 ? {} : { stderr: sr.stderr.slice(-2000) });
  t.equal(fioJson(sr.stdout).jobs[0]!.read.io_bytes, 4 * 64 * MiB, '4 x 64 MiB read');
  t.equal(delta(before, await datanodes()).notLeader, 0, 'no TryOtherAddr');
  t.comment(`randread QD16: ${Math.round(a.read.iops)} IOPS (a noisy machine; bench/upstream-table.ts measures it)`);
  ok(t, 'cmp', [`${tmp}/rd`, f], 'the file is unchanged');
});

t.test('fio: 4 KiB random direct writes at QD 1 into an 8 MiB file, verified (before: 29 IOPS)', async (t) => {
  const before = await datanodes();
  const r = run('fio', ['--name=ow8', `--filename=${mnt}/ow8`, '--size=8m', '--rw=randwrite', '--bs=4k', '--direct=1', '--ioengine=psync',
    '--verify=crc32c', '--verify_fatal=1', '--do_verify=1', '--verify_state_save=0', '--output-format=json']);
  t.equal(r.status, 0, 'fio exited 0', r.status === 0 ? {} : { stderr: r.stderr.slice(-2000) });
  const j = fioJson(r.stdout).jobs[0]!;
  t.equal(j.error, 0);
  t.equal(j.write.io_bytes, 8 * MiB, 'every block written (over the laid-out file: overwrites)');
  t.equal(j.read.io_bytes, 8 * MiB, 'and verified');
  t.equal(delta(before, await datanodes()).notLeader, 0, 'no TryOtherAddr');
});

t.test('4 KiB random direct writes into a new sparse 1 GiB file: no new connection per write', async (t) => {
  const f = path.join(mnt, 'sparse');
  ok(t, 'truncate', ['-s', '1G', f], 'truncate -s 1G');
  const before = await datanodes();
  const r = run('fio', ['--name=holes', `--filename=${f}`, '--size=1g', '--rw=randwrite', '--bs=4k', '--direct=1', '--ioengine=psync',
    '--number_ios=1000', '--verify=crc32c', '--verify_fatal=1', '--do_verify=1', '--verify_state_save=0', '--output-format=json']);
  t.equal(r.status, 0, 'fio exited 0', r.status === 0 ? {} : { stderr: r.stderr.slice(-2000) });
  const j = fioJson(r.stdout).jobs[0]!;
  t.equal(j.write.io_bytes, 1000 * 4096, '1,000 writes into holes');
  t.equal(j.read.io_bytes, 1000 * 4096, 'verified');
  const d = delta(before, await datanodes());
  t.ok(d.accepted <= 20, `${d.accepted} connections accepted by the datanodes for 1,000 writes (before: one per write, and two more at the leader)`);
  t.equal(d.notLeader, 0, 'no TryOtherAddr');
  t.equal(fs.statSync(f).size, 1 << 30, 'still 1 GiB');
});

t.test('diff -r of a tree of 1,000 files read through a cold mount (before: 14x upstream\'s time)', async (t) => {
  sh(t, `mkdir -p ${tmp}/tree && cd ${tmp}/tree && for d in $(seq 1 20); do mkdir d$d; for f in $(seq 1 50); do head -c $(( (d * 131 + f * 977) % 20000 )) /dev/urandom > d$d/f$f; done; done`, 'a tree of 1,000 files');
  ok(t, 'cp', ['-r', `${tmp}/tree`, `${mnt}/tree`], 'copied onto the mount');
  const cold = await coldMount(t, 'cold2');
  const before = await datanodes();
  ok(t, 'diff', ['-r', `${tmp}/tree`, `${cold}/tree`], 'diff -r: identical');
  t.equal(delta(before, await datanodes()).notLeader, 0, 'no TryOtherAddr');
});

t.test('truncate an empty file up to 1,234,567 bytes: a fresh mount sees the size and zeros', async (t) => {
  const f = path.join(mnt, 'grown');
  sh(t, `: > ${f} && truncate -s 1234567 ${f}`, 'created empty, truncated up');
  t.equal(fs.statSync(f).size, 1234567, 'this mount sees 1,234,567');
  const cold = await coldMount(t, 'cold3');
  t.equal(fs.statSync(path.join(cold, 'grown')).size, 1234567, 'a fresh mount sees 1,234,567 (a real metanode drops that size without the key at the end)');
  sh(t, `cmp <(head -c 1234567 /dev/zero) ${cold}/grown`, 'and reads 1,234,567 zeros');
  const info = await sdk.meta.inodeGet(await sdk.resolve('/grown'));
  t.equal(info.sz, 1234567, 'the metanode keeps the size');
});

t.test('O_DIRECT writes are recorded at the metanode after each write, before close', async (t) => {
  const f = path.join(mnt, 'direct');
  const py = `import mmap, os, sys
fd = os.open(${JSON.stringify(f)}, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
buf = mmap.mmap(-1, 8192)
buf.write(b'x' * 8192)
os.write(fd, buf)
print('written', flush=True)
sys.stdin.readline()
os.close(fd)
print('closed', flush=True)`;
  const child = spawn(PY, ['-c', py], { stdio: ['pipe', 'pipe', 'pipe'], env: childEnv() });
  const lines: string[] = [];
  readline.createInterface({ input: child.stdout! }).on('line', (l) => lines.push(l));
  t.ok(await until(() => lines.includes('written'), 30_000), 'python wrote 8 KiB with O_DIRECT and holds the file open');
  const ino = await sdk.resolve('/direct');
  const seen = await sdk.meta.listExtents(ino);
  t.equal(seen.size, 8192, 'another client sees the size before close');
  t.ok(seen.extents.length >= 1, 'and the extent key');
  child.stdin!.end('\n');
  t.ok(await until(() => lines.includes('closed'), 30_000), 'closed');
});

t.test('a 5 MiB file written in 1 MiB writes: 2 extent keys, 1 tiny, as upstream (before: 9, 8 tiny)', async (t) => {
  sh(t, `head -c ${5 * MiB} /dev/urandom > ${tmp}/five`, 'data');
  ok(t, 'dd', [`if=${tmp}/five`, `of=${mnt}/five`, 'bs=1M', 'status=none'], 'dd bs=1M');
  const keys = (await sdk.meta.listExtents(await sdk.resolve('/five'))).extents;
  t.equal(keys.length, 2, `${keys.length} extent keys`);
  t.ok(keys[0]!.ExtentId <= 64 && keys[0]!.Size === MiB, 'the first 1 MiB in a tiny extent (a write at offset 0 of at most 1 MiB)');
  t.ok(keys[1]!.ExtentId > 64 && keys[1]!.Size === 4 * MiB, 'the rest in one normal extent');
  ok(t, 'cmp', [`${tmp}/five`, `${mnt}/five`], 'identical');
});

t.test('a write that cannot be done fails with EIO (before: EAGAIN)', async (t) => {
  const quick = await coldMount(t, 'quick', { CUBEFS_TEST_RETRY_MS: '2000', CUBEFS_TEST_TIMEOUT_MS: '1500' });
  const pids = [0, 1, 2].map((i) => cluster.pid('datanode', i)!);
  for (const p of pids) process.kill(p, 'SIGSTOP');
  let r;
  try {
    r = run(PY, ['-c', `import mmap, os
fd = os.open(${JSON.stringify(path.join(quick, 'fails'))}, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
buf = mmap.mmap(-1, 4096)
try:
    os.write(fd, buf)
    print('written')
except OSError as e:
    print(os.strerror(e.errno), e.errno)`]);
  } finally {
    for (const p of pids) process.kill(p, 'SIGCONT');
  }
  t.equal(r.stdout.trim(), 'Input/output error 5', 'write(2) fails with EIO, as with upstream\'s client');
  // The cluster is back for the tests after this one.
  t.ok(await until(async () => run('dd', ['if=/dev/zero', `of=${mnt}/after`, 'bs=4k', 'count=1', 'oflag=direct', 'status=none']).status === 0, 60_000), 'the datanodes answer again');
});
