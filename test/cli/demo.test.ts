/**
 * `cubefs-mount demo`: the cluster daemon and the mount in the background, idempotent runs, a restart after
 * the cluster died (stale pid file), and `demo --stop`, all in temp dirs on a free master port.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { mountedAt } from '../../src/fuse/session.js';
import os from 'node:os';
import { alive, cli, unmountIfMounted, until } from './helpers.js';

t.test('demo starts the cluster and mounts; again is a no-op; a dead cluster restarts; --stop stops', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cubefs-demo-'));
  const mnt = path.join(dir, 'mnt');
  const data = path.join(dir, 'demo');
  const args = ['demo', '--dir', data, '--mountpoint', mnt, '--master-port', '0'];
  const pidFile = path.join(data, 'cluster.pid');
  const clusterPid = (): number => Number(fs.readFileSync(pidFile, 'utf8').trim());
  // One teardown, in order: stop the demo, make sure nothing is left mounted or running, then remove the dir.
  t.teardown(async () => {
    await cli(['demo', '--stop', '--dir', data]);
    unmountIfMounted(mnt);
    if (fs.existsSync(pidFile) && alive(clusterPid())) process.kill(clusterPid(), 'SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const first = await cli(args);
  t.equal(first.code, 0, `first run exits 0 (${first.stderr.trim()})`);
  t.match(first.stdout, 'started the embedded cluster', 'starts the cluster');
  t.match(first.stdout, `mounted volume "cubefs" at ${mnt}`, 'mounts it');
  t.match(first.stdout, /unmount: +cubefs-mount umount/, 'says how to unmount');
  t.match(first.stdout, /stop all: +cubefs-mount demo --stop/, 'and how to stop');
  t.equal(mountedAt(mnt), 'fuse.cubefs', 'mounted');
  const pid1 = clusterPid();
  t.ok(alive(pid1), 'the cluster daemon runs, its pid kept in DIR/cluster.pid');
  t.ok(fs.existsSync(path.join(data, 'cluster.log')), 'its log is in DIR');
  t.equal(fs.statSync(path.join(data, 'secret')).mode & 0o777, 0o600, 'and its admin secret, 0600');
  t.match(first.stdout, `admin secret: ${path.join(data, 'secret')}`, 'which it names');
  const secret = fs.readFileSync(path.join(data, 'secret'), 'utf8');
  fs.writeFileSync(path.join(mnt, 'demo.txt'), 'demo data\n');

  const second = await cli(args);
  t.equal(second.code, 0, 'second run exits 0');
  t.match(second.stdout, 'already running', 'says the cluster is already running');
  t.match(second.stdout, `${mnt} is already mounted`, 'and mounted');
  t.equal(clusterPid(), pid1, 'the same cluster');

  t.equal((await cli(['umount', mnt])).code, 0, 'unmounted by hand');
  const third = await cli(args);
  t.equal(third.code, 0, 'cluster up, not mounted: exits 0');
  t.match(third.stdout, 'already running', 'keeps the cluster');
  t.match(third.stdout, `mounted volume "cubefs" at ${mnt}`, 'mounts again');
  t.equal(fs.readFileSync(path.join(mnt, 'demo.txt'), 'utf8'), 'demo data\n', 'the file is there');

  process.kill(pid1, 'SIGKILL');
  t.ok(await until(() => !alive(pid1)), 'the cluster daemon is killed (its pid file is now stale)');
  const fourth = await cli(args);
  t.equal(fourth.code, 0, `stale pid file: exits 0 (${fourth.stderr.trim()})`);
  t.match(fourth.stdout, 'started the embedded cluster', 'restarts the cluster');
  t.not(clusterPid(), pid1, 'a new daemon');
  t.equal(fs.readFileSync(path.join(data, 'secret'), 'utf8'), secret, 'with the same secret');
  t.equal(fs.readFileSync(path.join(mnt, 'demo.txt'), 'utf8'), 'demo data\n', 'the data survived, readable through the mount');

  const pid2 = clusterPid();
  const stop = await cli(['demo', '--stop', '--dir', data]);
  t.equal(stop.code, 0, `--stop exits 0 (${stop.stderr.trim()})`);
  t.match(stop.stdout, `unmounted ${mnt}`, 'unmounts (the mountpoint remembered in DIR)');
  t.match(stop.stdout, 'stopped the embedded cluster', 'stops the cluster');
  t.equal(mountedAt(mnt), null, 'nothing mounted');
  t.notOk(alive(pid2), 'the cluster daemon is gone');
  const again = await cli(['demo', '--stop', '--dir', data]);
  t.equal(again.code, 0, '--stop again exits 0');
  t.match(again.stdout, 'not running', 'saying nothing was running');
});
