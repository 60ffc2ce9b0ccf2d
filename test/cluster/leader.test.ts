/**
 * The embedded cluster keeps upstream's rules for raft leaders, so the client is tested against them:
 * leaders that are not always Hosts[0]; StreamRead and RandomWrite refused by other replicas with
 * TryOtherAddr and the connection closed after it; RandomWrite replicated by the leader; a leader that moves
 * when its node dies.
 */
import t from 'tap';
import { EmbeddedCluster } from '../../src/cluster/launcher.js';
import { crc32, ExtentType, newPacket, Op, Result, type DataPartitionView, type ExtentKey, type Packet } from '../../src/proto/index.js';
import { CubeFSClient } from '../../src/sdk/client.js';
import { nextReqId } from '../../src/transport/reqid.js';
import { PacketConn } from '../../src/transport/tcp.js';
import { connect, pattern, sha256, startCluster, tempDir } from '../support/cluster.js';
import { until } from '../support/wait.js';

const MiB = 1 << 20;

function readReq(k: ExtentKey, op: Op, size = k.Size): Packet {
  return newPacket({ opcode: op, extentType: ExtentType.Normal, partitionId: k.PartitionId, extentId: k.ExtentId, extentOffset: k.ExtentOffset, reqId: nextReqId(), size });
}

/** Every packet of a (streamed) read on `conn`, the last one deciding. */
async function read(conn: PacketConn, req: Packet): Promise<{ rc: number; data: Buffer; text: string }> {
  const parts: Buffer[] = [];
  let got = 0;
  const last = await conn.request(req, {
    timeoutMs: 10_000,
    onReply: (p) => {
      if (p.resultCode !== Result.Ok) return true;
      parts.push(Buffer.from(p.data));
      got += p.data.length;
      return got >= req.size;
    },
  });
  return { rc: last.resultCode, data: Buffer.concat(parts), text: last.resultCode === Result.Ok ? '' : last.data.toString() };
}

async function keysOf(fs: CubeFSClient, path: string): Promise<ExtentKey[]> {
  return (await fs.meta.listExtents(await fs.resolve(path))).extents;
}

function viewOf(fs: CubeFSClient, pid: number): DataPartitionView {
  return fs.volume.dataPartitions().find((v) => v.PartitionID === pid)!;
}

t.test('raft leaders are not always Hosts[0]; other replicas refuse StreamRead and RandomWrite and close the connection', async (t) => {
  const c = await startCluster(t);
  const fs = await connect(t, c);
  const views = fs.volume.dataPartitions();
  t.ok(views.some((v) => v.LeaderAddr !== v.Hosts[0]), `leaders: ${views.map((v) => `${v.PartitionID}:${v.Hosts.indexOf(v.LeaderAddr)}`).join(' ')} (index in Hosts)`);
  const data = pattern(2 * MiB, 3);
  await fs.writeFile('/f', data);
  const [k] = await keysOf(fs, '/f');
  const v = viewOf(fs, k!.PartitionId);
  const others = v.Hosts.filter((h) => h !== v.LeaderAddr);
  t.equal(others.length, 2);

  for (const h of others) {
    const conn = await PacketConn.connect(h);
    t.teardown(() => conn.close());
    const r = await read(conn, readReq(k!, Op.StreamRead));
    t.equal(r.rc, Result.TryOtherAddr, `StreamRead at ${h} (not the leader): TryOtherAddr`);
    t.match(r.text, /raft is not the leader/);
    t.ok(await until(() => conn.closed, 10_000), 'and the datanode closed the connection after that error reply');
  }
  for (const h of v.Hosts) {
    const conn = await PacketConn.connect(h);
    t.teardown(() => conn.close());
    const r = await read(conn, readReq(k!, Op.StreamFollowerRead, MiB));
    t.ok(r.rc === Result.Ok && r.data.equals(data.subarray(0, MiB)), `StreamFollowerRead at ${h}: served by any replica`);
  }
  const lead = await PacketConn.connect(v.LeaderAddr);
  t.teardown(() => lead.close());
  t.ok((await read(lead, readReq(k!, Op.StreamRead, MiB))).data.equals(data.subarray(0, MiB)), 'StreamRead at the leader');

  // RandomWrite as upstream sends it: rf 0, no Arg. Refused elsewhere, applied and replicated by the leader.
  const patch = pattern(4096, 9);
  const rw = (): Packet => newPacket({
    opcode: Op.RandomWrite, extentType: ExtentType.Normal, partitionId: k!.PartitionId, extentId: k!.ExtentId, extentOffset: k!.ExtentOffset + 8192,
    kernelOffset: 8192, reqId: nextReqId(), remainingFollowers: 0, data: patch, crc: crc32(patch),
  });
  const refused = await PacketConn.connect(others[0]!);
  t.teardown(() => refused.close());
  const no = await refused.request(rw(), { timeoutMs: 10_000 });
  t.equal(no.resultCode, Result.TryOtherAddr, 'RandomWrite at a replica that is not the leader: TryOtherAddr');
  t.match(no.data.toString(), /raft is not the leader/);
  const yes = await lead.request(rw(), { timeoutMs: 10_000 });
  t.equal(yes.resultCode, Result.Ok, 'RandomWrite at the leader: Ok');
  t.equal(yes.crc >>> 0, crc32(patch), 'the CRC echoed');
  for (const h of v.Hosts) {
    const conn = await PacketConn.connect(h);
    t.teardown(() => conn.close());
    const r = await read(conn, newPacket({ ...readReq(k!, Op.StreamFollowerRead, 4096), extentOffset: k!.ExtentOffset + 8192 }));
    t.ok(r.data.equals(patch), `replica ${h} has the overwrite: the leader replicated it`);
  }
  const s = c.datanode(c.datanodeAddrs.indexOf(others[0]!))!.stats;
  t.ok(s.notLeader >= 2, `the refusing datanode counted its refusals (${s.notLeader})`);
});

t.test('the leader moves when its node dies: reads go on at once, overwrites when the node is back', async (t) => {
  const c = await EmbeddedCluster.start({ dir: tempDir(t), masterPort: 0, heartbeatMs: 300, processes: true, supervise: false });
  t.teardown(() => c.stop());
  const fs = await CubeFSClient.connect({ masters: c.masterAddr, vol: c.vol, owner: c.owner, refreshMs: 500, timeoutMs: 3000 });
  t.teardown(() => fs.close());
  const data = pattern(3 * MiB, 5);
  await fs.writeFile('/g', data);
  const [k] = await keysOf(fs, '/g');
  const before = viewOf(fs, k!.PartitionId);
  const dead = c.datanodeAddrs.indexOf(before.LeaderAddr);
  t.ok(dead >= 0, `partition ${k!.PartitionId} is led by datanode ${dead + 1} (${before.LeaderAddr})`);
  c.kill('datanode', dead);
  t.ok(await until(async () => {
    await fs.volume.refresh().catch(() => undefined);
    const now = viewOf(fs, k!.PartitionId).LeaderAddr;
    return now !== before.LeaderAddr && now !== '';
  }, 30_000), 'the master elected another leader');
  const after = viewOf(fs, k!.PartitionId);
  t.ok(after.Hosts.includes(after.LeaderAddr), `${after.LeaderAddr} leads now, one of the partition's hosts`);
  const fresh = await CubeFSClient.connect({ masters: c.masterAddr, vol: c.vol, owner: c.owner, refreshMs: 500, timeoutMs: 3000 });
  t.teardown(() => fresh.close());
  t.equal(sha256(await fresh.readFile('/g')), sha256(data), 'a fresh client reads the file from the new leader');

  await c.revive('datanode', dead);
  const h = await fresh.open('/g', 'r+');
  const patch = pattern(64 * 1024, 6);
  await h.write(patch, MiB);
  await h.close();
  patch.copy(data, MiB);
  t.equal(sha256(await fresh.readFile('/g')), sha256(data), 'with the node back, an overwrite lands (every replica has it)');
  await fresh.volume.refresh();
  t.equal(viewOf(fresh, k!.PartitionId).LeaderAddr, after.LeaderAddr, 'the new leader keeps leading (no failback)');
});
