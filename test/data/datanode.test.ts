import fs from 'node:fs';
import net from 'node:net';
import t from 'tap';
import { DataNode } from '../../src/cluster/datanode.js';
import { crc32, ExtentType, newPacket, Op, Result, type Packet } from '../../src/proto/index.js';
import { nextReqId } from '../../src/transport/reqid.js';
import { createPartition, pattern, rawRequest, startCluster, tmpdir } from './helpers.js';

const followersOf = (hosts: string[]) => Buffer.from(hosts.slice(1).map((h) => h + '/').join(''));

async function createExtent(leader: string, pid: number, hosts: string[]): Promise<Packet> {
  const ino = Buffer.alloc(8);
  ino.writeBigUInt64BE(5n);
  return rawRequest(leader, newPacket({
    opcode: Op.CreateExtent, extentType: ExtentType.Normal, partitionId: pid, reqId: nextReqId(),
    arg: followersOf(hosts), remainingFollowers: hosts.length - 1, data: ino,
  }));
}

function write(pid: number, hosts: string[], eid: number, eoff: number, data: Buffer, over: Partial<Packet> = {}): Packet {
  return newPacket({
    opcode: Op.Write, extentType: eid === 0 ? ExtentType.Tiny : ExtentType.Normal, partitionId: pid, extentId: eid,
    extentOffset: eoff, reqId: nextReqId(), arg: followersOf(hosts), remainingFollowers: hosts.length - 1,
    data, crc: crc32(data), ...over,
  });
}

/** A read as a client sends it: StreamRead (the leader only), or StreamFollowerRead (any replica: `follower`). */
async function streamRead(addr: string, pid: number, eid: number, eoff: number, size: number, follower = true): Promise<{ rc: number; data: Buffer; packets: Packet[] }> {
  const packets: Packet[] = [];
  let got = 0;
  const last = await rawRequest(addr, newPacket({
    opcode: follower ? Op.StreamFollowerRead : Op.StreamRead, extentType: ExtentType.Normal, partitionId: pid, extentId: eid, extentOffset: eoff,
    reqId: nextReqId(), size,
  }), (p) => {
    packets.push({ ...p, data: Buffer.from(p.data) });
    if (p.resultCode !== Result.Ok) return true;
    got += p.data.length;
    return got >= size;
  });
  return { rc: last.resultCode, data: Buffer.concat(packets.filter((p) => p.resultCode === Result.Ok).map((p) => p.data)), packets };
}

t.test('CreateExtent replicates, writes reach all three replicas, reads stream <= 128 KiB packets', async (t) => {
  const c = await startCluster(t, { partitions: 1 });
  const hosts = c.views[0]!.Hosts;
  const ce = await createExtent(hosts[0]!, 1, hosts);
  t.equal(ce.resultCode, Result.Ok);
  t.ok(ce.extentId >= 1024, 'normal extent ids start at 1024');
  const data = pattern(300 * 1024, 1);
  for (let o = 0; o < data.length; o += 128 * 1024) {
    const r = await rawRequest(hosts[0]!, write(1, hosts, ce.extentId, o, data.subarray(o, o + 128 * 1024)));
    t.equal(r.resultCode, Result.Ok, `write at ${o}`);
  }
  for (const h of hosts) {
    const r = await streamRead(h, 1, ce.extentId, 0, data.length);
    t.equal(r.rc, Result.Ok);
    t.ok(r.data.equals(data), `replica ${h} holds the bytes`);
    t.same(r.packets.map((p) => p.data.length), [131072, 131072, 45056]);
    t.ok(r.packets.every((p) => p.extentType === ExtentType.Normal && p.kernelOffset === 0 && crc32(p.data) === p.crc), 'etype 0x01, koff 0, own CRC');
    t.same(r.packets.map((p) => p.extentOffset), [0, 131072, 262144]);
  }
  const lead = await streamRead(hosts[0]!, 1, ce.extentId, 0, data.length, false);
  t.ok(lead.rc === Result.Ok && lead.data.equals(data), 'StreamRead from the leader');
  const miss = await streamRead(hosts[0]!, 1, 99999, 0, 10);
  t.equal(miss.rc, Result.NotExist, 'missing extent -> NotExist');
});

t.test('bad CRC, unknown partition, size limit, malformed packet', async (t) => {
  const c = await startCluster(t, { partitions: 1 });
  const hosts = c.views[0]!.Hosts;
  const ce = await createExtent(hosts[0]!, 1, hosts);
  const data = pattern(4096, 2);
  const bad = await rawRequest(hosts[0]!, write(1, hosts, ce.extentId, 0, data, { crc: crc32(data) ^ 1 }));
  t.equal(bad.resultCode, Result.Err);
  t.match(bad.data.toString(), /crc mismatch/);
  t.equal(c.nodes[0]!.stats.usedBytes, 0, 'nothing written');
  const unk = await rawRequest(hosts[0]!, write(42, hosts, ce.extentId, 0, data));
  t.equal(unk.resultCode, Result.NotExist);
  t.match(unk.data.toString(), /partition 42 does not exist/);
  const big = await rawRequest(hosts[0]!, write(1, hosts, ce.extentId, 128 * 1024 * 1024 - 100, data));
  t.equal(big.resultCode, Result.Err);
  t.match(big.data.toString(), /extent size limit/);

  const sock = net.connect(Number(hosts[0]!.split(':')[1]), '127.0.0.1');
  await new Promise((r) => sock.once('connect', r));
  const closed = new Promise((r) => sock.once('close', r));
  sock.write(Buffer.alloc(80, 0x42));
  await closed;
  t.pass('malformed packet closed the connection');
  const ok = await rawRequest(hosts[0]!, write(1, hosts, ce.extentId, 0, data));
  t.equal(ok.resultCode, Result.Ok, 'node keeps serving');
});

t.test('tiny extents: leader picks extent and offset; switched off answers like upstream', async (t) => {
  const c = await startCluster(t, { partitions: 1 });
  const hosts = c.views[0]!.Hosts;
  const a = await rawRequest(hosts[0]!, write(1, hosts, 0, 0, pattern(10, 3)));
  const b = await rawRequest(hosts[0]!, write(1, hosts, 0, 0, pattern(5000, 4)));
  t.equal(a.resultCode, Result.Ok);
  t.ok(a.extentId >= 1 && a.extentId <= 64 && b.extentId >= 1 && b.extentId <= 64, 'tiny ids 1..64');
  t.equal(a.extentOffset % 4096, 0);
  t.equal(b.extentOffset % 4096, 0);
  for (const h of hosts) {
    const r = await streamRead(h, 1, b.extentId, b.extentOffset, 5000);
    t.ok(r.data.equals(pattern(5000, 4)), `tiny data on ${h}`);
  }
  const dir = tmpdir(t);
  const off = new DataNode({ dir, tinyExtents: false });
  t.teardown(() => off.stop());
  const addr = await off.start();
  await createPartition(addr, 1, [addr]);
  const r = await rawRequest(addr, write(1, [addr], 0, 0, pattern(12, 5), { remainingFollowers: 127 }));
  t.equal(r.resultCode, Result.DiskNoSpace);
  t.equal(r.data.toString(), 'GetAvailableTinyExtent error no available extent');
});

t.test('capacity: a write past capacityBytes is DiskNoSpace and writes nothing', async (t) => {
  const c = await startCluster(t, { partitions: 1, node: { capacityBytes: 64 * 1024 } });
  const hosts = c.views[0]!.Hosts;
  const ce = await createExtent(hosts[0]!, 1, hosts);
  t.equal((await rawRequest(hosts[0]!, write(1, hosts, ce.extentId, 0, pattern(60 * 1024, 6)))).resultCode, Result.Ok);
  const r = await rawRequest(hosts[0]!, write(1, hosts, ce.extentId, 60 * 1024, pattern(8192, 7)));
  t.equal(r.resultCode, Result.DiskNoSpace);
  t.match(r.data.toString(), /disk full/);
  for (const n of c.nodes) t.equal(n.stats.usedBytes, 60 * 1024, 'nothing half-written');
  const hb = await rawRequest(hosts[0]!, newPacket({ opcode: Op.DataNodeHeartbeat, reqId: nextReqId() }));
  const body = JSON.parse(hb.data.toString());
  t.equal(body.Total, 64 * 1024);
  t.equal(body.Used, 60 * 1024);
  t.same(body.Partitions, [{ PartitionID: 1, Used: 60 * 1024, ExtentCount: 1, IsLeader: true }]);
});

t.test('restart on the same dir keeps data and never reuses extent ids; MarkDelete removes', async (t) => {
  const c = await startCluster(t, { partitions: 1 });
  const hosts = c.views[0]!.Hosts;
  const e1 = await createExtent(hosts[0]!, 1, hosts);
  const e2 = await createExtent(hosts[0]!, 1, hosts);
  t.equal(e2.extentId, e1.extentId + 1);
  const data = pattern(70000, 8);
  t.equal((await rawRequest(hosts[0]!, write(1, hosts, e2.extentId, 0, data))).resultCode, Result.Ok);
  const del = await rawRequest(hosts[0]!, newPacket({ opcode: Op.MarkDelete, extentType: ExtentType.Normal, partitionId: 1, extentId: e2.extentId, reqId: nextReqId(), arg: followersOf(hosts), remainingFollowers: 2 }));
  t.equal(del.resultCode, Result.Ok);
  for (let i = 0; i < 3; i++) t.notOk(fs.existsSync(c.nodes[i]!.extentPath(1, e2.extentId)!), `deleted on node ${i}`);
  t.equal((await rawRequest(hosts[0]!, write(1, hosts, e1.extentId, 0, data))).resultCode, Result.Ok);
  for (let i = 0; i < 3; i++) await c.restart(i);
  const r = await streamRead(hosts[1]!, 1, e1.extentId, 0, data.length);
  t.ok(r.data.equals(data), 'data back after restart');
  const e3 = await createExtent(hosts[0]!, 1, hosts);
  t.ok(e3.extentId > e2.extentId, `id ${e3.extentId} not reused after restart`);
});

t.test('a follower down: the leader answers IntraGroupNet naming it', async (t) => {
  const c = await startCluster(t, { partitions: 1 });
  const hosts = c.views[0]!.Hosts;
  const ce = await createExtent(hosts[0]!, 1, hosts);
  await c.nodes[2]!.stop();
  const r = await rawRequest(hosts[0]!, write(1, hosts, ce.extentId, 0, pattern(100, 9)));
  t.equal(r.resultCode, Result.IntraGroupNet);
  t.match(r.data.toString(), c.addrs[2]!);
});
