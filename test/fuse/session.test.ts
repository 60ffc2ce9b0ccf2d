import t from 'tap';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { devNumbers, FuseSession, mountedAt } from '../../src/fuse/session.js';
import { NullFs } from '../../src/fuse/nullfs.js';
import { FuseError, errno, type FuseOps } from '../../src/fuse/types.js';
import { scratchMount, until } from '../support/wait.js';

type TT = Parameters<Parameters<typeof t.test>[0]>[0];

const run = promisify(execFile);
const MiB = 1 << 20;
const FIXTURE = new URL('./fixtures/mount-null.js', import.meta.url).pathname;

async function mount(t: TT, mnt: string, ops: FuseOps, options: string[] = []): Promise<FuseSession> {
  const s = await FuseSession.mount(mnt, ops, { fsname: 'nullfs-test', options, handleSignals: false });
  t.teardown(() => s.unmount());
  return s;
}

/** Starts the fixture client and resolves once it printed "ready". */
async function client(t: TT, mnt: string, args: string[] = []): Promise<{ child: ChildProcess; out: () => string }> {
  // Without tap's NODE_OPTIONS (its process-info hook, re-added to every spawn, listens for SIGTERM itself,
  // and the session leaves the signal to the process's other listeners).
  const child = spawn('env', ['-u', 'NODE_OPTIONS', process.execPath, FIXTURE, mnt, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr!.on('data', (d: Buffer) => { out += d.toString(); });
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); });
  const ok = await until(() => out.includes('ready') || child.exitCode !== null);
  if (!ok || !out.includes('ready')) throw new Error(`fixture did not mount: ${out}`);
  return { child, out: () => out };
}

t.test('null fs: dd writes and reads 64 MiB in 1 MiB requests, stat works, unmount via the API', async (t) => {
  const { mnt } = scratchMount(t);
  const nullfs = new NullFs();
  const s = await mount(t, mnt, nullfs.ops);
  t.equal(s.conn?.maxWrite, MiB, 'INIT negotiated max_write = 1 MiB');
  t.equal(mountedAt(mnt), 'fuse.cubefs', 'mounted as fuse.cubefs');

  await run('dd', ['if=/dev/zero', `of=${mnt}/zero`, 'bs=1M', 'count=64']);
  t.equal(nullfs.counters.bytesWritten, 64 * MiB, 'every written byte reached JS');
  t.ok(nullfs.counters.maxWrite > 128 * 1024, `write requests larger than 128 KiB (largest ${nullfs.counters.maxWrite})`);
  t.equal(nullfs.counters.maxWrite, MiB, 'the largest write request is 1 MiB');
  t.equal(s.stats().maxWriteSeen, MiB, 'the native side saw the same 1 MiB payloads');

  await run('dd', [`if=${mnt}/zero`, 'of=/dev/null', 'bs=1M', 'count=64']);
  t.ok(nullfs.counters.bytesRead >= 64 * MiB, `64 MiB read (${nullfs.counters.bytesRead})`);
  const { stdout } = await run('dd', [`if=${mnt}/zero`, 'bs=1M', 'count=1', 'skip=3', 'iflag=direct'], { encoding: 'buffer', maxBuffer: 2 * MiB });
  t.equal(stdout.length, MiB, 'a direct 1 MiB read returns 1 MiB');
  t.ok(stdout.every((b) => b === 0), 'of zeros');
  t.equal(nullfs.counters.maxRead, MiB, 'the direct read came as one 1 MiB request (max_read)');

  const st = await fsp.stat(`${mnt}/zero`);
  t.equal(st.size, 64 * MiB, 'stat: dd truncated /zero and wrote 64 MiB');
  t.ok(st.isFile());
  t.ok((await fsp.stat(mnt)).isDirectory(), 'the root is a directory');
  await fsp.writeFile(`${mnt}/other`, 'hello');
  t.same((await fsp.readdir(mnt)).sort(), ['other', 'zero'], 'readdir lists /zero and a created file');
  t.same(await fsp.readFile(`${mnt}/other`), Buffer.alloc(5), 'a created file reads zeros');

  // The kernel sends RELEASE after close() returns: let the last ones come in and be answered.
  t.ok(await until(() => s.stats().outstanding === 0), 'no request left unanswered');
  const after = s.stats();
  t.equal(after.heldBuffers, 0, 'every receive buffer went back to the allocator');
  t.equal(after.misuse + after.unanswered + after.handlerErrors, 0, 'no handler misbehaved');

  let unmounted = 0;
  s.on('unmounted', () => { unmounted++; });
  await s.unmount();
  await s.unmount();
  t.equal(unmounted, 1, "'unmounted' once; unmount() is idempotent");
  t.equal(mountedAt(mnt), null, 'gone from the mount table');
});

t.test("umount MNT from outside emits 'unmounted'", async (t) => {
  const { mnt } = scratchMount(t);
  const s = await mount(t, mnt, new NullFs().ops);
  const gone = new Promise<void>((r) => s.once('unmounted', r));
  await run('umount', [mnt]);
  await gone;
  t.ok(s.closed, 'the session closed itself');
  t.equal(mountedAt(mnt), null, 'not mounted');
});

/** Processes holding /dev/fuse open, with their command lines. */
const HOLDERS = `for p in /proc/[0-9]*; do ls -l $p/fd 2>/dev/null | grep -q /dev/fuse && echo "$p $(tr '\\0' ' ' < $p/cmdline)"; done`;

t.test('a SIGKILLed client leaves no stale mount (auto_unmount)', async (t) => {
  const { mnt } = scratchMount(t);
  const { child } = await client(t, mnt);
  t.equal(mountedAt(mnt), 'fuse.cubefs', 'the child mounted');
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
  // fusermount3's watcher does the unmount; on a loaded machine it can take a while to be scheduled.
  const gone = await until(() => mountedAt(mnt) === null, 60_000);
  // When it does not, say what is left: is the watcher alive, and who still holds /dev/fuse?
  const diag = gone ? {} : {
    watchers: (await promisify(execFile)('sh', ['-c', 'ps -eo pid,ppid,stat,etime,wchan:20,cmd | grep -E "[f]usermount|[m]ount-null"']).catch((e: { stdout?: string }) => e)).stdout,
    holders: (await promisify(execFile)('sh', ['-c', HOLDERS]).catch((e: { stdout?: string }) => e)).stdout,
  };
  t.ok(gone, 'fusermount3 removed the mount after the kill', diag);
});

t.test('SIGTERM unmounts cleanly, then the signal ends the client', async (t) => {
  const { mnt } = scratchMount(t);
  const { child, out } = await client(t, mnt, ['--no-auto-unmount']);
  const exited = new Promise<[number | null, string | null]>((r) => child.once('exit', (c, sig) => r([c, sig])));
  child.kill('SIGTERM');
  const [, sig] = await exited;
  t.equal(sig, 'SIGTERM', 'the signal took its course after the unmount');
  t.match(out(), /unmounted/, "the client saw 'unmounted'");
  t.equal(mountedAt(mnt), null, 'no mount left');
});

t.test('clear errors: missing mountpoint, a file, an existing mount', async (t) => {
  const { dir, mnt } = scratchMount(t);
  const ops = new NullFs().ops;
  await t.rejects(FuseSession.mount(path.join(dir, 'nope'), ops), { name: 'FuseError', code: 'ENOENT', errno: errno.ENOENT, message: /does not exist/ });
  fs.writeFileSync(path.join(dir, 'file'), 'x');
  await t.rejects(FuseSession.mount(path.join(dir, 'file'), ops), { code: 'ENOTDIR', errno: errno.ENOTDIR, message: /not a directory/ });
  await mount(t, mnt, ops);
  const e = await FuseSession.mount(mnt, ops).catch((x: unknown) => x);
  t.ok(e instanceof FuseError, 'a FuseError');
  t.match(e, { code: 'EBUSY', errno: errno.EBUSY, message: /already a mount \(fuse\.cubefs\)/ });
  await t.rejects(FuseSession.mount(mnt + '-x', ops, { options: ['a,b'] }), { code: 'ENOENT' }, 'the mountpoint is checked first');
  const sub = path.join(dir, 'sub');
  fs.mkdirSync(sub);
  await t.rejects(FuseSession.mount(sub, ops, { options: ['no_such_option'], handleSignals: false }), { name: 'FuseError', errno: errno.EINVAL, message: /unknown option|no_such_option/ },
    'a native failure is a JS error with errno');
  t.equal(mountedAt(sub), null);
});

t.test('a /dev/fuse that is not the FUSE device is said so before mounting (in a private mount namespace)', async (t) => {
  t.same(devNumbers(fs.statSync('/dev/fuse').rdev), { major: 10, minor: 229 }, 'the real one is 10,229');
  t.same(devNumbers(fs.statSync('/dev/null').rdev), { major: 1, minor: 3 });
  // glibc's makedev for numbers that use the high bits
  const makedev = (ma: bigint, mi: bigint): number => Number(((ma & 0xfffn) << 8n) | ((ma & ~0xfffn) << 32n) | (mi & 0xffn) | ((mi & ~0xffn) << 12n));
  t.same(devNumbers(makedev(4095n, 255n)), { major: 4095, minor: 255 });
  t.same(devNumbers(makedev(259n, 1048577n)), { major: 259, minor: 1048577 });

  const { mnt } = scratchMount(t);
  const session = new URL('../../src/fuse/session.js', import.meta.url).pathname;
  const nullfs = new URL('../../src/fuse/nullfs.js', import.meta.url).pathname;
  const script = `const { FuseSession } = await import(${JSON.stringify(session)});
    const { NullFs } = await import(${JSON.stringify(nullfs)});
    try { await FuseSession.mount(${JSON.stringify(mnt)}, new NullFs().ops, { handleSignals: false }); console.log('mounted'); }
    catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }`;
  const { stdout } = await run('unshare', ['-m', '--propagation', 'private', 'sh', '-c',
    'mount --bind /dev/null /dev/fuse && exec "$0" --input-type=module -e "$1"', process.execPath, script],
  { env: { ...process.env, NODE_OPTIONS: '' } });
  t.same(JSON.parse(stdout), {
    code: 'ENODEV',
    message: '/dev/fuse is not the FUSE device (it is character device 1,3; FUSE\'s is character device 10,229): '
      + 'see what is mounted over it (findmnt /dev/fuse) or recreate it (mknod -m 666 /dev/fuse c 10 229)',
  });
  t.same(devNumbers(fs.statSync('/dev/fuse').rdev), { major: 10, minor: 229 }, 'this namespace\'s /dev/fuse is untouched');
  t.equal(mountedAt(mnt), null);
});

t.test('handler failures are answered, never hang: throw, reject and no reply give EIO; a second reply is dropped', async (t) => {
  const { mnt } = scratchMount(t);
  const nullfs = new NullFs();
  const lookup = nullfs.ops.lookup!;
  const ops: FuseOps = {
    ...nullfs.ops,
    lookup: async (req, a) => {
      switch (a.name) {
        case 'throw': throw new Error('boom');
        case 'reject': await Promise.resolve(); throw new Error('later boom');
        case 'silent': return;
        case 'eacces': throw Object.assign(new Error('denied'), { errno: errno.EACCES });
        case 'twice': req.err(errno.ENOENT); req.err(errno.EACCES); return;
        default: return lookup(req, a);
      }
    },
  };
  const s = await mount(t, mnt, ops);
  const errors: Error[] = [];
  s.on('error', (e: Error) => errors.push(e));
  for (const name of ['throw', 'reject', 'silent']) {
    await t.rejects(fsp.stat(`${mnt}/${name}`), { code: 'EIO' }, `${name}: EIO`);
  }
  await t.rejects(fsp.stat(`${mnt}/eacces`), { code: 'EACCES' }, 'a thrown error with an errno answers that errno');
  await t.rejects(fsp.stat(`${mnt}/twice`), { code: 'ENOENT' }, 'the first of two replies is the one sent');
  await t.rejects(fsp.mkdir(`${mnt}/d`), { code: 'ENOSYS' }, 'an op missing from the table answers ENOSYS');
  const st = s.stats();
  t.equal(st.handlerErrors, 3);
  t.equal(st.unanswered, 1);
  t.equal(st.misuse, 1, 'the second reply was counted, not sent');
  t.equal(st.outstanding, 0);
  t.ok(errors.some((e) => /second reply/.test(e.message)), "'error' reports the double reply");
  t.ok((await fsp.stat(`${mnt}/zero`)).isFile(), 'the session still works');
});

t.test('a write payload is a view of the receive buffer, detached once answered', async (t) => {
  const { mnt } = scratchMount(t);
  const nullfs = new NullFs();
  const seen: { text: string; lenBefore: number; lenAfter: number }[] = [];
  let kept: Buffer | null = null;
  const ops: FuseOps = {
    ...nullfs.ops,
    write: (req, a) => {
      const before = a.data.length;
      const text = a.data.toString();
      kept = a.data;
      req.write(before);
      seen.push({ text, lenBefore: before, lenAfter: a.data.length });
    },
  };
  const s = await mount(t, mnt, ops);
  await run('sh', ['-c', `printf hello-fuse > ${mnt}/f`]);
  t.same(seen, [{ text: 'hello-fuse', lenBefore: 10, lenAfter: 0 }], 'JS saw the payload, then an empty (detached) buffer');
  t.equal(kept!.length, 0, 'a kept reference cannot reach the recycled memory');
  t.equal(s.stats().heldBuffers, 0, 'the receive buffer went back');
});

t.test('unmount with a request still in a handler answers it EIO: the caller does not hang', async (t) => {
  const { mnt } = scratchMount(t);
  const nullfs = new NullFs();
  let parked = 0;
  const ops: FuseOps = { ...nullfs.ops, read: () => { parked++; return new Promise<void>(() => {}); } };
  const s = await mount(t, mnt, ops);
  const reader = execFile('dd', [`if=${mnt}/zero`, 'of=/dev/null', 'bs=1M', 'count=1', 'iflag=direct']);
  const done = new Promise<number | null>((r) => reader.once('exit', (c) => r(c)));
  t.ok(await until(() => parked > 0 && s.stats().outstanding > 0), 'the read is parked in JS');
  await s.unmount();
  const code = await done;
  t.not(code, 0, 'dd failed instead of hanging');
  t.equal(mountedAt(mnt), null, 'unmounted');
});
