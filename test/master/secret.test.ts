/**
 * The embedded cluster's admin secret: DIR/secret made once (0600), kept across restarts, made at the next
 * start for a cluster directory from before it existed, handed to the master (the launcher creates its
 * volume with it; without it createVol is refused and getVol hides the owner).
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { EmbeddedCluster } from '../../src/cluster/launcher.js';
import { MasterClient } from '../../src/master/client.js';
import { CubeFSClient } from '../../src/sdk/client.js';
import { setReportSink } from '../../src/util/log.js';
import { tempDir } from '../support/cluster.js';

const mode = (f: string): number => fs.statSync(f).mode & 0o777;
const start = (dir: string, processes = false): Promise<EmbeddedCluster> =>
  EmbeddedCluster.start({ dir, processes, masterPort: 0, heartbeatMs: 500, capacityGB: 1 });

t.test('DIR/secret: made at the first start (0600), the same after a restart, and made for an older DIR', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'secret');
  let c = await start(dir);
  t.teardown(() => c.stop());
  t.equal(c.secretFile, file);
  t.ok(fs.existsSync(file), 'the secret file exists');
  t.equal(mode(file), 0o600, 'mode 0600');
  const first = fs.readFileSync(file, 'utf8').trim();
  t.match(first, /^[0-9a-f]{64}$/, '256 random bits in hex');
  t.equal(c.adminSecret, first);
  t.equal(mode(path.join(dir, 'cluster.json')), 0o600, 'cluster.json (it names the owner) is 0600');
  for (const sub of ['master', 'metanode', 'datanode1']) t.equal(mode(path.join(dir, sub)), 0o700, `${sub}/ is 0700`);

  const anon = new MasterClient(c.masterAddr);
  t.teardown(() => anon.close());
  t.equal((await anon.getVolumeAdmin(c.vol)).Owner, '', 'the launcher\'s volume: owner hidden without the secret');
  await t.rejects(anon.createVolume('other', 'bob'), /needs the cluster's admin secret/, 'createVol refused without it');
  const admin = new MasterClient(c.masterAddr, { adminSecret: first });
  t.teardown(() => admin.close());
  t.equal((await admin.getVolumeAdmin(c.vol)).Owner, 'cubefs', 'shown with it');

  await c.stop();
  c = await start(dir);
  t.equal(fs.readFileSync(file, 'utf8').trim(), first, 'a restart keeps the secret');
  t.equal(mode(file), 0o600);
  const again = new MasterClient(c.masterAddr, { adminSecret: first });
  t.teardown(() => again.close());
  await again.createVolume('after', 'bob', { capacityGB: 1, dataPartitions: 1 });
  t.pass('the kept secret still creates volumes');

  // A cluster directory from before the secret: no file, wide modes.
  await c.stop();
  fs.rmSync(file);
  fs.chmodSync(path.join(dir, 'cluster.json'), 0o644);
  fs.chmodSync(path.join(dir, 'datanode2'), 0o755);
  c = await start(dir);
  const made = fs.readFileSync(file, 'utf8').trim();
  t.match(made, /^[0-9a-f]{64}$/, 'an older DIR gets a secret at its next start');
  t.not(made, first);
  t.equal(mode(file), 0o600);
  t.equal(mode(path.join(dir, 'cluster.json')), 0o600, 'and a private cluster.json');
  t.equal(mode(path.join(dir, 'datanode2')), 0o700, 'and private node directories');
  const client = await CubeFSClient.connect({ masters: c.masterAddr, vol: c.vol, owner: c.owner });
  t.teardown(() => client.close());
  t.same(await client.readdir('/'), [], 'its volume is still there');
});

t.test('a secret file others can read is tightened (said once); an empty one is refused plainly', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'secret');
  fs.writeFileSync(file, `${'ab'.repeat(32)}\n`, { mode: 0o644 });
  fs.chmodSync(file, 0o644);
  const said: string[] = [];
  const prev = setReportSink((line) => said.push(line));
  t.teardown(() => { setReportSink(prev); });
  const c = await start(dir);
  t.teardown(() => c.stop());
  t.equal(mode(file), 0o600, 'now 0600');
  t.equal(c.adminSecret, 'ab'.repeat(32), 'the secret the file held is kept');
  t.match(said.join('\n'), /was readable by other users \(mode 644\); now 0600/);
  await c.stop();

  fs.writeFileSync(file, '');
  await t.rejects(start(dir), /does not hold a secret .* remove it and a new one is made at the next start/);
});

t.test('node processes: the master reads the secret from the file the launcher names', async (t) => {
  const dir = tempDir(t);
  const c = await start(dir, true);
  t.teardown(() => c.stop());
  const pid = c.pid('master')!;
  const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  t.equal(argv[argv.indexOf('--secret-file') + 1], path.join(dir, 'secret'), 'named by path');
  t.notOk(argv.includes(c.adminSecret), 'the secret itself is not on the command line');
  const admin = new MasterClient(c.masterAddr, { adminSecret: c.adminSecret });
  t.teardown(() => admin.close());
  t.equal((await admin.getVolumeAdmin(c.vol)).Owner, 'cubefs', 'the master process knows the secret');
  const anon = new MasterClient(c.masterAddr);
  t.teardown(() => anon.close());
  await t.rejects(anon.createVolume('other', 'bob'), /needs the cluster's admin secret/);
});
