/**
 * The embedded cluster's first start: cluster.json keeps the nodes' addresses before the volume is made,
 * marked pending until createVol succeeds, so a first start that failed (or was killed) in between makes
 * the volume at the next start instead of leaving a cluster without it.
 */
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { EmbeddedCluster } from '../../src/cluster/launcher.js';
import { CubeFSClient } from '../../src/sdk/client.js';
import { tempDir } from '../support/cluster.js';

const start = (dir: string): Promise<EmbeddedCluster> =>
  EmbeddedCluster.start({ dir, processes: false, masterPort: 0, heartbeatMs: 500, capacityGB: 1, dataPartitions: 2 });
const layout = (dir: string): { volumePending?: boolean; vol: string } => JSON.parse(fs.readFileSync(path.join(dir, 'cluster.json'), 'utf8'));

async function volumeWorks(t: Test, c: EmbeddedCluster): Promise<void> {
  const client = await CubeFSClient.connect({ masters: c.masterAddr, vol: c.vol, owner: c.owner });
  t.teardown(() => client.close());
  await client.writeFile('/hello', Buffer.from('hello'));
  t.equal((await client.readFile('/hello')).toString(), 'hello', 'the volume takes a file and gives it back');
}

t.test('a first start whose createVol fails leaves the volume pending; the next start creates it', async (t) => {
  const dir = tempDir(t);
  // Where datanode 1 would keep data partition 1, a file: CreateDataPartition fails there.
  fs.mkdirSync(path.join(dir, 'datanode1'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'datanode1', '1'), 'in the way');
  const e = await start(dir).then(() => null, (x: Error) => x);
  t.ok(e, 'the first start fails');
  t.match(e?.message, /creating volume "cubefs" failed: .*the next start of this cluster directory tries again/, 'saying the volume was not made and what happens next');
  t.equal(layout(dir).volumePending, true, 'cluster.json: the volume is pending');

  fs.rmSync(path.join(dir, 'datanode1', '1'));
  const c = await start(dir);
  t.teardown(() => c.stop());
  t.equal(layout(dir).volumePending, undefined, 'after the second start it is not pending any more');
  await volumeWorks(t, c);
});

t.test('a pending volume the master already has (a start killed after createVol) is taken as made', async (t) => {
  const dir = tempDir(t);
  let c = await start(dir);
  await c.stop();
  fs.writeFileSync(path.join(dir, 'cluster.json'), JSON.stringify({ ...layout(dir), volumePending: true }));
  c = await start(dir);
  t.teardown(() => c.stop());
  t.equal(layout(dir).volumePending, undefined, 'no duplicate-volume error, and no longer pending');
  await volumeWorks(t, c);
});
