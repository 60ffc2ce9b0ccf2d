/**
 * Space comes back: the extents of a deleted file, of a range truncated away and of a file overwritten with
 * O_TRUNC are deleted on all three datanodes (the metanode's reclaimer sends MarkDelete after a delay,
 * here 200 ms); extents still named by a file stay, a pending deletion survives a cluster restart, and a
 * replica that was down during a deletion deletes its copy once it is back; the orphan scrubber asks every
 * replica, so an extent left on a follower alone is found too.
 */
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { EmbeddedCluster } from '../../src/cluster/launcher.js';
import { connect, pattern, startCluster, tempDir } from '../support/cluster.js';
import { until } from '../support/wait.js';
import { ExtentType, newPacket, Op, Result } from '../../src/proto/index.js';
import { PacketConn } from '../../src/transport/tcp.js';
import { nextReqId } from '../../src/transport/reqid.js';

process.env.CUBEFS_RECLAIM_DELAY_MS = '200';
const MiB = 1024 * 1024;

/** Normal extent files (ids above 64) on each datanode: name -> bytes. */
function normalExtents(c: EmbeddedCluster): Map<string, number>[] {
  return [1, 2, 3].map((i) => {
    const out = new Map<string, number>();
    const root = path.join(c.dir, `datanode${i}`);
    const walk = (d: string): void => {
      for (const e of fs.readdirSync(d, { withFileTypes: true })) {
        const p = path.join(d, e.name);
        if (e.isDirectory()) walk(p);
        else if (/^\d+$/.test(e.name) && Number(e.name) > 64) out.set(path.relative(root, p), fs.statSync(p).size);
      }
    };
    if (fs.existsSync(root)) walk(root);
    return out;
  });
}

const total = (c: EmbeddedCluster): number => normalExtents(c).reduce((s, m) => s + [...m.values()].reduce((a, b) => a + b, 0), 0);

t.test('unlink, truncate and O_TRUNC give the space back on every replica; live extents stay', async (t) => {
  const c = await startCluster(t, { heartbeatMs: 200 });
  const fsc = await connect(t, c);
  await fsc.writeFile('/keep', pattern(3 * MiB, 1));
  await fsc.writeFile('/gone', pattern(5 * MiB, 2));
  await fsc.writeFile('/cut', pattern(6 * MiB, 3));
  const before = total(c);
  t.ok(before >= 3 * 14 * MiB, `three replicas of 14 MiB on disk (${before} bytes)`);

  await fsc.unlink('/gone');
  t.ok(await until(() => total(c) <= before - 3 * 5 * MiB, 15_000), `the deleted file's extents are gone from all three datanodes (${total(c)} bytes left)`);

  await fsc.truncate('/cut', 0);
  t.ok(await until(() => total(c) <= 3 * 3 * MiB, 15_000), `the truncated file's extents are gone too (${total(c)} bytes left)`);

  const fresh = pattern(2 * MiB, 4);
  await fsc.writeFile('/keep', fresh); // open with O_TRUNC, new data on a new extent
  t.ok(await until(() => total(c) === 3 * 2 * MiB, 15_000), `after the overwrite only the new 2 MiB remain, three times (${total(c)} bytes)`);
  t.ok((await fsc.readFile('/keep')).equals(fresh), 'the live file reads back whole');
  const dn = normalExtents(c);
  t.same(dn[1], dn[0], 'replicas hold the same extents');
  t.same(dn[2], dn[0]);
});

t.test('a deletion pending at shutdown is carried out after the restart', async (t) => {
  const dir = tempDir(t);
  process.env.CUBEFS_RECLAIM_DELAY_MS = '60000'; // not before the stop
  let c = await startCluster(t, { dir, heartbeatMs: 200 });
  let fsc = await connect(t, c);
  await fsc.writeFile('/f', pattern(4 * MiB, 5));
  const before = total(c);
  await fsc.unlink('/f');
  await fsc.close();
  await c.stop();
  t.equal(total(c), before, 'nothing deleted yet');
  process.env.CUBEFS_RECLAIM_DELAY_MS = '200';
  c = await startCluster(t, { dir, heartbeatMs: 200 });
  fsc = await connect(t, c);
  t.ok(await until(() => total(c) === 0, 15_000), `deleted after the restart (${total(c)} bytes left)`);
});

t.test('a replica down while a file is deleted has its copy deleted once it is back', async (t) => {
  process.env.CUBEFS_RECLAIM_DELAY_MS = '200';
  const c = await EmbeddedCluster.start({ dir: tempDir(t), masterPort: 0, heartbeatMs: 200, processes: true, supervise: false });
  t.teardown(() => c.stop());
  const fsc = await connect(t, c);
  await fsc.writeFile('/f', pattern(2 * MiB, 7));
  const [k] = (await fsc.meta.listExtents(await fsc.resolve('/f'))).extents;
  const view = fsc.volume.dataPartitions().find((v) => v.PartitionID === k!.PartitionId)!;
  // A follower of the partition the reclaimer sends MarkDelete to (Hosts[0] forwards it to the others).
  const down = c.datanodeAddrs.indexOf(view.Hosts[2]!);
  const file = `${k!.PartitionId}/${k!.ExtentId}`;
  t.ok(normalExtents(c).every((m) => m.has(file)), `extent ${file} is on all three datanodes`);
  c.kill('datanode', down);
  await fsc.unlink('/f');
  t.ok(await until(() => normalExtents(c).filter((m) => m.has(file)).length === 1, 15_000), 'deleted on the two replicas that are up');
  await c.revive('datanode', down);
  t.ok(await until(() => normalExtents(c).every((m) => !m.has(file)), 30_000),
    `and on datanode ${down + 1} once it is back (left: ${normalExtents(c).filter((m) => m.has(file)).length} copies)`);
});

t.test('an extent on one replica alone that no file names is found by the scrubber and deleted there', async (t) => {
  const dir = tempDir(t);
  let c = await startCluster(t, { dir, heartbeatMs: 200 });
  let fsc = await connect(t, c);
  const keep = pattern(MiB, 8);
  await fsc.writeFile('/keep', keep);
  await fsc.close();
  await c.stop();
  // Again with a scrubber that looks every 300 ms and gives no grace: /keep is recorded, nothing is written now.
  process.env.CUBEFS_ORPHAN_SCAN_MS = '300';
  process.env.CUBEFS_ORPHAN_GRACE_MS = '0';
  try {
    c = await startCluster(t, { dir, heartbeatMs: 200 });
  } finally {
    delete process.env.CUBEFS_ORPHAN_SCAN_MS;
    delete process.env.CUBEFS_ORPHAN_GRACE_MS;
  }
  fsc = await connect(t, c);
  const view = fsc.volume.dataPartitions()[0]!;
  // A follower's copy whose leader never had one (as a follower's CreateExtent makes it).
  const conn = await PacketConn.connect(view.Hosts[2]!, 5000);
  const reply = await conn.request(newPacket({ opcode: Op.CreateExtent, partitionId: view.PartitionID, extentId: 900_000, extentType: ExtentType.Normal, reqId: nextReqId() }));
  conn.close();
  t.equal(reply.resultCode, Result.Ok, 'extent 900000 made on the partition\'s third host only');
  const file = `${view.PartitionID}/900000`;
  t.equal(normalExtents(c).filter((m) => m.has(file)).length, 1, 'one copy');
  t.ok(await until(() => normalExtents(c).every((m) => !m.has(file)), 20_000), 'the scrubber found it and it was deleted');
  t.ok((await fsc.readFile('/keep')).equals(keep), 'the recorded file is untouched');
});
