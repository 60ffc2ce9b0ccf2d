/**
 * `cubefs-mount` mounting as a user does it, against a real embedded cluster (node processes): background
 * mounts, -f with SIGTERM, -c fuse.json, `mount -t fuse.cubefs` and an fstab line through the installed
 * mount(8) helper, `cubefs-mount umount`, and the one-line failures. The mounts are served by CLI child
 * processes, so this process may use synchronous fs calls on them.
 */
import t from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { EmbeddedCluster } from '../../src/cluster/launcher.js';
import { mountedAt } from '../../src/fuse/session.js';
import { CubeFSClient } from '../../src/sdk/client.js';
import { tempDir } from '../support/cluster.js';
import { alive, BIN, cli, pidOf, ROOT, run, scratch, start, until } from './helpers.js';

const cluster = await EmbeddedCluster.start({ dir: tempDir(t), masterPort: 0, vol: 'clivol', owner: 'cliowner' });
t.teardown(() => cluster.stop());
const MASTER = cluster.masterAddr;
const VOL = cluster.vol;
const OWNER = cluster.owner;

async function readVolume(p: string): Promise<string> {
  const c = await CubeFSClient.connect({ masters: MASTER, vol: VOL, owner: OWNER });
  try {
    return (await c.readFile(p)).toString();
  } finally {
    await c.close();
  }
}

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

const oneLine = (s: string): boolean => s.trim().split('\n').length === 1;

t.test('background mount: returns once mounted, cp/cat through it, cubefs-mount umount ends the daemon', async (t) => {
  const { dir, mnt, logDir } = scratch(t);
  const r = await cli([mnt, '--master', MASTER, '--vol', VOL, '--owner', OWNER, '--log-dir', logDir]);
  t.equal(r.code, 0, `exits 0 (${r.stderr.trim()})`);
  t.match(r.stdout, `mounted CubeFS volume "${VOL}"`, 'says what it mounted');
  t.match(r.stdout, `at ${mnt}`, 'and where');
  t.match(r.stdout, `cubefs-mount umount ${mnt}`, 'and how to unmount');
  const pid = pidOf(r.stdout);
  t.ok(alive(pid), 'the mount process lives on after the command returned');
  t.equal(mountedAt(mnt), 'fuse.cubefs', 'mounted as fuse.cubefs');
  t.ok(fs.existsSync(path.join(logDir, `${VOL}.log`)), 'logs to LOGDIR/VOL.log');
  const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
  t.notOk(cmd.includes(OWNER), `the owner is not on the mount process's command line, which ps shows every user (${cmd})`);

  const src = path.join(dir, 'src.bin');
  const body = Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 7) & 0xff));
  fs.writeFileSync(src, body);
  t.equal((await run('cp', [src, path.join(mnt, 'copied.bin')])).code, 0, 'cp into the mount');
  const cat = await run('sh', ['-c', `cat ${path.join(mnt, 'copied.bin')} | sha256sum`]);
  const local = await run('sh', ['-c', `sha256sum < ${src}`]);
  t.equal(cat.stdout.split(' ')[0], local.stdout.split(' ')[0], 'cat reads back what cp wrote');
  fs.writeFileSync(path.join(mnt, 'hello.txt'), 'hello through the mount\n');
  t.equal(await readVolume('/hello.txt'), 'hello through the mount\n', 'the volume has it (read with the SDK)');

  const u = await cli(['umount', mnt]);
  t.equal(u.code, 0, `umount exits 0 (${u.stderr.trim()})`);
  t.match(u.stdout, `unmounted ${mnt}`);
  t.equal(mountedAt(mnt), null, 'no longer mounted');
  t.notOk(alive(pid), 'the mount process has exited when umount returns');
  const again = await cli(['unmount', mnt]);
  t.not(again.code, 0, 'unmounting again fails');
  t.match(again.stderr, 'is not mounted', 'and says why');
});

t.test('-f stays in the foreground, logs to stderr, and SIGTERM unmounts cleanly (exit 0)', async (t) => {
  const { mnt } = scratch(t);
  const p = start(t, [mnt, '--master', MASTER, '--vol', VOL, '--owner', OWNER, '-f']);
  t.ok(await until(() => p.out().includes('serving in the foreground') || p.child.exitCode !== null), 'reports it is serving');
  t.equal(p.child.exitCode, null, `still running (${p.err()})`);
  t.equal(mountedAt(mnt), 'fuse.cubefs', 'mounted');
  t.match(p.err(), /mounted volume clivol/, 'logs to stderr');
  fs.writeFileSync(path.join(mnt, 'fg.txt'), 'foreground\n');
  t.equal(fs.readFileSync(path.join(mnt, 'fg.txt'), 'utf8'), 'foreground\n', 'reads back');
  p.child.kill('SIGTERM');
  t.equal(await p.exited, 0, 'exits 0 on SIGTERM');
  t.equal(mountedAt(mnt), null, 'unmounted');
  t.match(p.err(), /unmounted .* \(SIGTERM\)/, 'says why it unmounted');
  t.equal(await readVolume('/fg.txt'), 'foreground\n', 'the data is in the volume');
});

t.test('-f ends by itself (exit 0) when unmounted from outside', async (t) => {
  const { mnt } = scratch(t);
  const p = start(t, [mnt, '--master', MASTER, '--vol', VOL, '--owner', OWNER, '-f']);
  t.ok(await until(() => p.out().includes('serving') || p.child.exitCode !== null), 'serving');
  t.equal((await run('umount', [mnt])).code, 0, 'umount MNT');
  t.equal(await p.exited, 0, 'the foreground process exits 0');
});

t.test('-c fuse.json with upstream keys; unknown keys warned; flags override the file', async (t) => {
  const { dir, mnt, logDir } = scratch(t);
  const conf = path.join(dir, 'fuse.json');
  fs.writeFileSync(conf, JSON.stringify({
    mountPoint: mnt, volName: VOL, owner: 'not-the-owner', masterAddr: MASTER, logDir, logLevel: 'debug',
    attrValid: '5', lookupValid: 5, rdonly: false, fsyncOnClose: true, enableXattr: true, profPort: '27510', colour: 'blue',
  }));
  const bad = await cli(['-c', conf]);
  t.not(bad.code, 0, 'the owner in the file is wrong: fails');
  t.match(bad.stderr, /not-the-owner" is not the owner/, 'says so');

  const r = await cli(['-c', conf, '--owner', OWNER]);
  t.equal(r.code, 0, `--owner overrides the file (${r.stderr.trim()})`);
  t.match(r.stderr, /profPort: not implemented by this client, ignored/, 'warns about an upstream key it does not implement');
  t.match(r.stderr, /colour: unknown key, ignored/, 'warns about an unknown key');
  t.equal(mountedAt(mnt), 'fuse.cubefs', 'mounted at the file\'s mountPoint');
  fs.writeFileSync(path.join(mnt, 'conf.txt'), 'from fuse.json\n');
  t.equal(fs.readFileSync(path.join(mnt, 'conf.txt'), 'utf8'), 'from fuse.json\n', 'reads back');
  t.match(fs.readFileSync(path.join(logDir, `${VOL}.log`), 'utf8'), /cubefs:/, 'logLevel debug turned on the debug log');
  t.equal((await cli(['umount', mnt])).code, 0, 'unmounted');

  fs.writeFileSync(conf, JSON.stringify({ mountPoint: mnt, volName: VOL, owner: OWNER, masterAddr: MASTER, subdir: '/a' }));
  const sub = await cli(['-c', conf]);
  t.equal(sub.code, 2, 'subdir is refused');
  t.match(sub.stderr, /sub-directory .* not supported/, 'clearly');
  t.ok(oneLine(sub.stderr), 'in one line');
});

t.test('-o ro and FUSE options reach the mount; mount(8)-only options are dropped', async (t) => {
  const { mnt, logDir } = scratch(t);
  const r = await cli([mnt, '-o', `master=${MASTER},vol=${VOL},owner=${OWNER},ro,noatime,nodev,defaults,_netdev,nofail,x-systemd.automount,attrValid=2`, '--log-dir', logDir]);
  t.equal(r.code, 0, `mounts (${r.stderr.trim()})`);
  const line = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === mnt) ?? '';
  t.match(line, /\bro\b/, 'read-only');
  t.match(line, /noatime/, 'noatime');
  let err: NodeJS.ErrnoException | null = null;
  try {
    fs.writeFileSync(path.join(mnt, 'nope.txt'), 'x');
  } catch (e) {
    err = e as NodeJS.ErrnoException;
  }
  t.equal(err?.code, 'EROFS', 'writing fails with EROFS');
  const u = await cli(['umount', mnt]);
  t.equal(u.code, 0, 'unmounted');
  const bad = await cli([mnt, '-o', `master=${MASTER},vol=${VOL},owner=${OWNER},bogus_option`]);
  t.equal(bad.code, 2, 'an unknown -o option is a usage error');
  t.match(bad.stderr, /-o bogus_option: unknown mount option/, 'naming it');
});

t.test('mount -t fuse.cubefs and an fstab line go through /sbin/mount.fuse.cubefs', async (t) => {
  const helper = '/sbin/mount.fuse.cubefs';
  const target = fs.existsSync(helper) ? fs.realpathSync(helper) : '(missing)';
  t.equal(target, fs.realpathSync(path.join(ROOT, 'scripts/mount.fuse.cubefs')), 'scripts/setup.sh installed the helper for this checkout');
  if (target === '(missing)') return;
  const { dir, mnt, logDir } = scratch(t);

  const m = await run('mount', ['-t', 'fuse.cubefs', VOL, mnt, '-o', `master=${MASTER},owner=${OWNER},logDir=${logDir}`]);
  t.equal(m.code, 0, `mount -t fuse.cubefs exits 0 (${m.stderr.trim()})`);
  t.equal(mountedAt(mnt), 'fuse.cubefs', 'mounted');
  fs.writeFileSync(path.join(mnt, 'via-mount.txt'), 'mount -t\n');
  t.equal(await readVolume('/via-mount.txt'), 'mount -t\n', 'writes reach the volume');
  const pid = pidOf(m.stdout);
  t.notOk(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(OWNER), 'the owner from fstab is not on the mount process\'s command line');
  t.equal((await run('umount', [mnt])).code, 0, 'plain umount(8) unmounts it');
  t.ok(await until(() => !alive(pid)), 'and the mount process exits');

  const fstab = path.join(dir, 'fstab');
  fs.writeFileSync(fstab, `# test fstab\n${VOL}  ${mnt}  fuse.cubefs  master=${MASTER},owner=${OWNER},_netdev,nofail,noatime,logDir=${logDir}  0 0\n`);
  const f = await run('mount', ['--fstab', fstab, mnt]);
  t.equal(f.code, 0, `mount --fstab FILE MNT exits 0 (${f.stderr.trim()})`);
  t.equal(mountedAt(mnt), 'fuse.cubefs', 'mounted from the fstab line');
  t.equal(fs.readFileSync(path.join(mnt, 'via-mount.txt'), 'utf8'), 'mount -t\n', 'sees the file written before');
  const fstabPid = pidOf(f.stdout);
  const all = await run('mount', ['--fstab', fstab, '-a']);
  t.equal(all.code, 0, `mount -a with the volume already mounted exits 0 (${all.stderr.trim()})`);
  t.ok(alive(fstabPid), 'and leaves the mount as it was');
  t.equal((await cli(['umount', mnt])).code, 0, 'cubefs-mount umount');

  // The owner kept out of fstab (which every user can read): the line names a fuse.json of mode 0600.
  const conf = path.join(dir, 'vol.json');
  fs.writeFileSync(conf, JSON.stringify({ owner: OWNER }), { mode: 0o600 });
  fs.writeFileSync(fstab, `${VOL}  ${mnt}  fuse.cubefs  master=${MASTER},config=${conf},logDir=${logDir}  0 0\n`);
  const c = await run('mount', ['--fstab', fstab, mnt]);
  t.equal(c.code, 0, `an fstab line with config= instead of owner= mounts (${c.stderr.trim()})`);
  t.equal(fs.readFileSync(path.join(mnt, 'via-mount.txt'), 'utf8'), 'mount -t\n', 'the same volume');
  t.equal((await cli(['umount', mnt])).code, 0, 'cubefs-mount umount');

  const bad = await run('mount', ['-t', 'fuse.cubefs', VOL, mnt, '-o', `master=${MASTER},owner=intruder,logDir=${logDir}`]);
  t.not(bad.code, 0, 'a wrong owner fails the mount(8) call');
  t.match(bad.stderr, /"intruder" is not the owner/, 'with the reason');
  t.equal(mountedAt(mnt), null, 'nothing mounted');
});

t.test('failures: non-zero exit and a clear one-line message', async (t) => {
  const { dir, mnt, logDir } = scratch(t);
  const base = ['--log-dir', logDir];
  const cases: [string, string[], RegExp][] = [
    ['wrong owner', [mnt, '--master', MASTER, '--vol', VOL, '--owner', 'mallory'], /volume "clivol": owner "mallory" is not the owner/],
    ['unknown volume', [mnt, '--master', MASTER, '--vol', 'novol', '--owner', OWNER], /volume "novol" does not exist/],
    ['unreachable master', [mnt, '--master', `127.0.0.1:${await freePort()}`, '--vol', VOL, '--owner', OWNER], /no master answered/],
    ['mountpoint missing', [path.join(dir, 'absent'), '--master', MASTER, '--vol', VOL, '--owner', OWNER], /mountpoint .*absent does not exist/],
    ['mountpoint not a directory', [path.join(dir, 'file'), '--master', MASTER, '--vol', VOL, '--owner', OWNER], /mountpoint .*file is not a directory/],
    ['owner missing', [mnt, '--master', MASTER, '--vol', VOL], /missing --owner/],
    ['bad master address', [mnt, '--master', 'nowhere', '--vol', VOL, '--owner', OWNER], /"nowhere" is not HOST:PORT/],
    ['negative attrValid', [mnt, '--master', MASTER, '--vol', VOL, '--owner', OWNER, '-o', 'attrValid=-5'], /-o attrValid=-5: -5 is negative; give 0 or more seconds/],
  ];
  fs.writeFileSync(path.join(dir, 'file'), 'x');
  for (const [what, args, msg] of cases) {
    const r = await cli([...args, ...base]);
    t.not(r.code, 0, `${what}: non-zero exit`);
    t.match(r.stderr, msg, `${what}: says why`);
    t.ok(oneLine(r.stderr), `${what}: in one line (${r.stderr.trim()})`);
    t.equal(mountedAt(mnt), null, `${what}: nothing mounted`);
  }
  const ok = await cli([mnt, '--master', MASTER, '--vol', VOL, '--owner', OWNER, ...base]);
  t.equal(ok.code, 0, 'a good mount');
  const busy = await cli([mnt, '--master', MASTER, '--vol', VOL, '--owner', OWNER, ...base]);
  t.not(busy.code, 0, 'mountpoint busy: non-zero exit');
  t.match(busy.stderr, /is busy: already a mount \(fuse\.cubefs\)/, 'mountpoint busy: says why');
  t.ok(oneLine(busy.stderr), 'mountpoint busy: in one line');
  t.equal((await cli(['umount', mnt])).code, 0, 'unmounted');
});

t.test('a /dev/fuse that is not the FUSE device: one line saying so, not "Input/output error"', async (t) => {
  const { mnt, logDir } = scratch(t);
  // A private mount namespace: this machine's /dev/fuse stays as it is.
  const r = await run('unshare', ['-m', '--propagation', 'private', 'sh', '-c', 'mount --bind /dev/null /dev/fuse && exec "$0" "$@"',
    BIN, mnt, '--master', MASTER, '--vol', VOL, '--owner', OWNER, '--log-dir', logDir]);
  t.equal(r.code, 1, 'exit 1');
  t.equal(r.stderr.trim(), 'cubefs-mount: /dev/fuse is not the FUSE device (it is character device 1,3; FUSE\'s is character device 10,229): '
    + 'see what is mounted over it (findmnt /dev/fuse) or recreate it (mknod -m 666 /dev/fuse c 10 229)');
  t.equal(mountedAt(mnt), null, 'nothing mounted');
});

t.test('--help is something a person can follow', async (t) => {
  const r = await cli(['--help']);
  t.equal(r.code, 0, 'exits 0');
  for (const s of ['--master', '--vol', '--owner', '-o', 'fuse.json', 'Examples:', 'mount -t fuse.cubefs', '/etc/fstab', 'umount', 'demo']) {
    t.match(r.stdout, s, `mentions ${s}`);
  }
});
