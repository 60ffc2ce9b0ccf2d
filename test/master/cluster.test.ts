/**
 * The embedded master with the real MetaNode and DataNodes: volume creation lands on the nodes,
 * heartbeats feed volStat, and a stopped datanode turns its partitions read-only until it is back.
 */
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import { Master } from '../../src/cluster/master.js';
import { MetaNode } from '../../src/cluster/metanode.js';
import { DataNode } from '../../src/cluster/datanode.js';
import { MasterClient } from '../../src/master/client.js';
import { Volume } from '../../src/master/volume.js';
import { waitFor } from '../support/wait.js';

t.test('master with the real metanode and datanodes', async (t) => {
  const dir = fs.mkdtempSync(os.tmpdir() + '/cubefs-');
  const meta = new MetaNode({ dir: `${dir}/meta` });
  const datas = [0, 1, 2].map((i) => new DataNode({ dir: `${dir}/data${i}` }));
  let master: Master | null = null;
  let client: MasterClient | null = null;
  let vol: Volume | null = null;
  let revived: DataNode | null = null;
  t.teardown(async () => {
    vol?.close();
    client?.close();
    await master?.stop();
    await revived?.stop();
    for (const d of datas) await d.stop();
    await meta.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const metaAddr = await meta.start();
  const dataAddrs: string[] = [];
  for (const d of datas) dataAddrs.push(await d.start());
  const secret = 'cluster-test-secret-0123456789abcdef';
  master = new Master({ dir: `${dir}/master`, metanodes: [metaAddr], datanodes: dataAddrs, heartbeatMs: 100, secret });
  client = new MasterClient(await master.start(), { adminSecret: secret });

  await client.createVolume('vol1', 'alice', { capacityGB: 1 });
  t.equal(datas.every((d) => d.stats.partitions === 4), true, 'each datanode hosts the 4 data partitions');

  vol = await Volume.open(client, 'vol1', 'alice', { refreshMs: 0 });
  t.equal(vol.txRename, true);
  t.same(vol.metaPartitions().map((m) => m.LeaderAddr), [metaAddr, metaAddr, metaAddr]);
  await waitFor('the root inode counted through the metanode heartbeat', async () => (await vol!.stat()).InodeCount >= 1);
  const st = await vol.stat();
  t.equal(st.TotalSize, 1024 ** 3);
  t.equal(st.InodeCount, 1, 'a fresh volume holds the root inode only');

  const victim = datas[1]!;
  const victimAddr = victim.addr;
  await victim.stop();
  await waitFor('read-only partitions', async () => {
    await vol!.refresh();
    return vol!.dataPartitions().some((d) => d.Status === 1);
  });
  for (const dp of vol.dataPartitions()) {
    t.equal(dp.Status, dp.Hosts.includes(victimAddr) ? 1 : 2, `dp ${dp.PartitionID} status follows its hosts`);
  }
  revived = new DataNode({ dir: `${dir}/data1`, listen: victimAddr });
  await revived.start();
  await waitFor('read-write again', async () => {
    await vol!.refresh();
    return vol!.dataPartitions().every((d) => d.Status === 2);
  });
  t.equal(revived.stats.partitions, 4, 'the restarted datanode reloaded its partitions');
});
