/**
 * The files in examples/ work as written (with this test's cluster, mountpoint and log dir substituted):
 * fuse.json, the fstab line, the systemd unit's ExecStart, and the PyTorch checkpoint script.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { EmbeddedCluster } from '../../src/cluster/launcher.js';
import { mountedAt } from '../../src/fuse/session.js';
import { tempDir } from '../support/cluster.js';
import { BIN, cli, ROOT, run, scratch, start, until } from './helpers.js';

const EX = path.join(ROOT, 'examples');
const cluster = await EmbeddedCluster.start({ dir: tempDir(t), masterPort: 0, vol: 'cubefs', owner: 'cubefs' });
t.teardown(() => cluster.stop());
const MASTER = cluster.masterAddr;

t.test('examples/fuse.json: every key is understood (no warnings) and it mounts', async (t) => {
  const { dir, mnt, logDir } = scratch(t);
  const conf = JSON.parse(fs.readFileSync(path.join(EX, 'fuse.json'), 'utf8')) as Record<string, unknown>;
  t.equal(conf.volName, 'cubefs', 'names the demo volume');
  const mine = path.join(dir, 'fuse.json');
  fs.writeFileSync(mine, JSON.stringify({ ...conf, mountPoint: mnt, masterAddr: MASTER, logDir }));
  const r = await cli(['-c', mine]);
  t.equal(r.code, 0, `mounts (${r.stderr.trim()})`);
  t.notMatch(r.stderr, /warning/, 'no warnings: every key is one we implement');
  t.equal(mountedAt(mnt), 'fuse.cubefs', 'mounted');
  t.equal((await cli(['umount', mnt])).code, 0, 'unmounted');
});

t.test('examples/fstab: its line mounts with mount --fstab', async (t) => {
  const { dir, mnt, logDir } = scratch(t);
  const line = fs.readFileSync(path.join(EX, 'fstab'), 'utf8').split('\n').find((l) => l.trim() && !l.startsWith('#'))!;
  t.match(line, /^cubefs\s+\/mnt\/cubefs\s+fuse\.cubefs\s+master=127\.0\.0\.1:17010,owner=cubefs/, 'one fstab line, as documented');
  const fstab = path.join(dir, 'fstab');
  fs.writeFileSync(fstab, line.replace('/mnt/cubefs', mnt).replace('127.0.0.1:17010', MASTER).replace('owner=cubefs', `owner=cubefs,logDir=${logDir}`) + '\n');
  const r = await run('mount', ['--fstab', fstab, mnt]);
  t.equal(r.code, 0, `mount --fstab exits 0 (${r.stderr.trim()})`);
  t.equal(mountedAt(mnt), 'fuse.cubefs', 'mounted');
  t.equal((await cli(['umount', mnt])).code, 0, 'unmounted');
});

t.test('examples/cubefs-mount.service: its ExecStart serves in the foreground and stops cleanly on SIGTERM', async (t) => {
  const { mnt } = scratch(t);
  const unit = fs.readFileSync(path.join(EX, 'cubefs-mount.service'), 'utf8');
  t.match(unit, /^Type=simple$/m, 'Type=simple');
  const exec = /^ExecStart=(.*)$/m.exec(unit)![1]!.split(/\s+/);
  t.same(exec.slice(0, 2), ['/usr/bin/node', '/opt/cubefs-mount/bin/cubefs-mount'], 'node and the checkout\'s bin');
  t.ok(exec.includes('-f'), 'in the foreground');
  const args = exec.slice(2).map((a) => a === '/mnt/cubefs' ? mnt : a === '127.0.0.1:17010' ? MASTER : a);
  const p = start(t, args);
  t.ok(await until(() => p.out().includes('serving') || p.child.exitCode !== null), `serving (${p.err().trim()})`);
  t.equal(mountedAt(mnt), 'fuse.cubefs', 'mounted');
  p.child.kill('SIGTERM');
  t.equal(await p.exited, 0, 'SIGTERM (systemctl stop): exit 0');
  t.equal(mountedAt(mnt), null, 'unmounted');
  t.ok(fs.existsSync(BIN), 'bin/cubefs-mount exists');
});

t.test('examples/pytorch_checkpoint.py: torch.save to the mount, torch.load back, equal', async (t) => {
  // A missing part fails the test and says what is missing (scripts/setup.sh installs it).
  t.equal(spawnSync('/usr/bin/python3', ['-c', 'import torch']).status, 0,
    "Debian's python3-torch serves /usr/bin/python3 (apt-get install python3-torch)");
  const { mnt, logDir } = scratch(t);
  const m = await cli([mnt, '--master', MASTER, '--vol', 'cubefs', '--owner', 'cubefs', '--log-dir', logDir]);
  t.equal(m.code, 0, `mounted (${m.stderr.trim()})`);
  const r = await run('/usr/bin/python3', [path.join(EX, 'pytorch_checkpoint.py'), mnt, '--size-mb', '16']);
  t.equal(r.code, 0, `the script succeeds (${r.stderr.trim().split('\n').slice(-3).join(' | ')})`);
  t.match(r.stdout, /ok: the loaded state dict equals the saved one/, 'the loaded state equals the saved one');
  t.same(fs.readdirSync(path.join(mnt, 'checkpoints')), [], 'it cleaned up its checkpoint');
  t.equal((await cli(['umount', mnt])).code, 0, 'unmounted');
});
