/**
 * The cases of ../shared/golden/cubefs-real/interop, replayed: our client does what upstream's client did in
 * those loopback captures (a real cluster, datanodes 127.0.0.31-33), and the requests it puts on the wire
 * are compared with upstream's, decoded from the pcaps: which host, which opcode, ExtentType,
 * RemainingFollowers, Arg, partition, extent, offset and size, and on which connection.
 *
 * The datanodes are the embedded cluster's (they follow the same rules: StreamRead and RandomWrite only at
 * the raft leader, the connection closed after an error reply); each sits behind a recording proxy on the
 * capture's address, with the capture's partitions (Hosts, LeaderAddr) and the captured extents on disk.
 */
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import type { Test } from 'tap';
import { DataNode } from '../../src/cluster/datanode.js';
import { DataClient } from '../../src/data/index.js';
import { crc32, newPacket, Op, PacketReader, Result, type DataPartitionView, type Packet } from '../../src/proto/index.js';
import { nextReqId } from '../../src/transport/reqid.js';
import { readPcap, reassemble } from '../support/pcap.js';
import { interopCapture } from '../support/shared.js';
import { recordingProxy, type RecordingProxy } from '../support/wire-proxy.js';
import { FakeMeta, pattern, rawRequest, StaticSource, tmpdir } from './helpers.js';

const IPS = ['127.0.0.31', '127.0.0.32', '127.0.0.33'] as const;
type Ip = (typeof IPS)[number];

/** The partitions of the captures: Hosts (append order) and LeaderAddr, by capture address. */
const PARTITIONS: { id: number; hosts: Ip[]; leader: Ip }[] = [
  { id: 1, hosts: ['127.0.0.31', '127.0.0.32', '127.0.0.33'], leader: '127.0.0.32' },
  { id: 3, hosts: ['127.0.0.33', '127.0.0.32', '127.0.0.31'], leader: '127.0.0.32' },
  { id: 5, hosts: ['127.0.0.31', '127.0.0.33', '127.0.0.32'], leader: '127.0.0.33' },
  { id: 6, hosts: ['127.0.0.31', '127.0.0.32', '127.0.0.33'], leader: '127.0.0.33' },
  { id: 7, hosts: ['127.0.0.31', '127.0.0.32', '127.0.0.33'], leader: '127.0.0.33' },
  { id: 8, hosts: ['127.0.0.33', '127.0.0.31', '127.0.0.32'], leader: '127.0.0.31' },
  { id: 9, hosts: ['127.0.0.33', '127.0.0.32', '127.0.0.31'], leader: '127.0.0.31' },
];

/** The small files of captures 03/04 (one key each) and the overwritten one of 05/06. */
const READS = [
  { ino: 101, dp: 3, ext: 41, eoff: 32768, size: 1024 },
  { ino: 102, dp: 8, ext: 35, eoff: 45056, size: 1024 },
  { ino: 103, dp: 8, ext: 58, eoff: 57344, size: 1024 },
  { ino: 104, dp: 7, ext: 55, eoff: 24576, size: 1024 },
];
const OVERWRITE = { ino: 105, dp: 6, ext: 16, eoff: 61440, size: 4096 };

/** A request as the comparison sees it: addresses as the capture's IPs, no ReqID, no payload. */
interface Req {
  host: string;
  conn: string;
  op: number;
  et: number;
  rf: number;
  arg: string;
  dp: number;
  ext: number;
  eoff: number;
  size: number;
}

const ipOf = (addr: string): string => addr.slice(0, addr.lastIndexOf(':'));

function shape(host: string, conn: string, p: Packet, argIp: (a: string) => string): Req {
  const arg = p.arg.toString().split('/').filter(Boolean).map((a) => `${argIp(a)}/`).join('');
  return { host, conn, op: p.opcode, et: p.extentType, rf: p.remainingFollowers, arg, dp: p.partitionId, ext: p.extentId, eoff: p.extentOffset, size: p.size };
}

/** Upstream's requests in a capture, in time order. */
function upstream(file: string): Req[] {
  const pcap = readPcap(fs.readFileSync(interopCapture(file)));
  const out: { ts: number; r: Req }[] = [];
  for (const s of reassemble(pcap.segments)) {
    if (!s.dst.endsWith(':17310')) continue;
    const reader = new PacketReader();
    for (const run of s.runs) {
      const packets = reader.push(run.data);
      // Each request is the start of one segment in these captures: its time is that segment's.
      const times = run.segments.map((x) => x.ts);
      packets.forEach((p, i) => out.push({ ts: times[Math.min(i, times.length - 1)]!, r: shape(ipOf(s.dst), s.src, p, ipOf) }));
    }
  }
  return out.sort((a, b) => a.ts - b.ts).map((x) => x.r);
}

interface Rig {
  source: StaticSource;
  meta: FakeMeta;
  proxies: Map<Ip, RecordingProxy>;
  /** The real datanodes' addresses, by capture address. */
  real: Map<Ip, string>;
}

async function rig(t: Test): Promise<Rig> {
  const real = new Map<Ip, string>();
  const dirs = new Map<Ip, string>();
  for (const ip of IPS) {
    const dir = tmpdir(t);
    const n = new DataNode({ dir });
    t.teardown(() => n.stop());
    real.set(ip, await n.start());
    dirs.set(ip, dir);
  }
  // The captured extents, on every replica, before their partitions are created (which loads them).
  for (const f of [...READS, OVERWRITE]) {
    for (const ip of IPS) {
      const d = path.join(dirs.get(ip)!, String(f.dp));
      fs.mkdirSync(d, { recursive: true });
      fs.writeFileSync(path.join(d, String(f.ext)), pattern(f.eoff + f.size, f.ino));
    }
  }
  const proxies = new Map<Ip, RecordingProxy>();
  for (const ip of IPS) proxies.set(ip, await recordingProxy(t, ip, real.get(ip)!));
  const views: DataPartitionView[] = [];
  for (const p of PARTITIONS) {
    const hosts = p.hosts.map((ip) => real.get(ip)!);
    for (const ip of IPS) {
      const r = await rawRequest(real.get(ip)!, newPacket({
        opcode: Op.CreateDataPartition, reqId: nextReqId(),
        data: Buffer.from(JSON.stringify({ VolName: 'ltptest', PartitionID: p.id, Hosts: hosts, Leader: real.get(p.leader) })),
      }));
      if (r.resultCode !== Result.Ok) throw new Error(`CreateDataPartition ${p.id}: 0x${r.resultCode.toString(16)}`);
    }
    views.push({
      PartitionType: 0, PartitionID: p.id, Status: 2, ReplicaNum: 3, Epoch: 0, IsRecover: false,
      Hosts: p.hosts.map((ip) => proxies.get(ip)!.addr), LeaderAddr: proxies.get(p.leader)!.addr,
    });
  }
  const meta = new FakeMeta();
  for (const f of [...READS, OVERWRITE]) {
    meta.files.set(f.ino, { gen: 1, size: f.size, keys: [{ FileOffset: 0, PartitionId: f.dp, ExtentId: f.ext, ExtentOffset: f.eoff, Size: f.size, CRC: 0 }] });
  }
  return { source: new StaticSource(views), meta, proxies, real };
}

/**
 * Every request the client sent since `from` (per proxy counts), in arrival order, as capture IPs. A datanode
 * forwarding an append to a follower's proxy sends the client's ReqID again: those copies are not the client's.
 */
function ours(r: Rig, from: Map<Ip, number>): Req[] {
  const all = IPS.flatMap((ip) => r.proxies.get(ip)!.requests.slice(from.get(ip) ?? 0).map((x) => ({ ip, x })))
    .sort((a, b) => a.x.seq - b.x.seq);
  const seen = new Set<bigint>();
  const out: Req[] = [];
  for (const { ip, x } of all) {
    if (seen.has(x.packet.reqId)) continue;
    seen.add(x.packet.reqId);
    out.push(shape(ip, `#${x.conn}`, x.packet, ipOf));
  }
  return out;
}

function mark(r: Rig): Map<Ip, number> {
  return new Map(IPS.map((ip) => [ip, r.proxies.get(ip)!.requests.length]));
}

/** Connections as the comparison sees them: the first one a request used is "a", the next "b", ... */
function relabel(list: Req[]): Req[] {
  const names = new Map<string, string>();
  return list.map((q) => ({ ...q, conn: names.get(q.conn) ?? (names.set(q.conn, String.fromCharCode(97 + names.size)), names.get(q.conn)!) }));
}

t.test('capture 04: a cold read of 4 small files is one StreamRead each, straight to LeaderAddr, as upstream', async (t) => {
  const r = await rig(t);
  const dc = new DataClient({ source: r.source, meta: r.meta });
  t.teardown(() => dc.close());
  const before = mark(r);
  for (const f of READS) {
    const s = dc.open(f.ino);
    const got = await s.read(0, 4096);
    t.ok(got.equals(pattern(f.eoff + f.size, f.ino).subarray(f.eoff)), `file ${f.ino} (partition ${f.dp} extent ${f.ext}) reads back`);
    await s.release();
  }
  const want = relabel(upstream('04-upstream-cold-read-same-4-files-to-leader.pcap'));
  const got = relabel(ours(r, before));
  t.same(got, want, 'the same requests to the same hosts on the same connections as upstream\'s client');
  t.equal(got.length, 4, 'four requests for four files: no TryOtherAddr, no retry');
});

t.test('capture 06: an overwrite is RandomWrite to LeaderAddr, rf 0, no Arg, replicated by the leader', async (t) => {
  const r = await rig(t);
  const dc = new DataClient({ source: r.source, meta: r.meta });
  t.teardown(() => dc.close());
  const before = mark(r);
  const patch = pattern(OVERWRITE.size, 66);
  const s = dc.open(OVERWRITE.ino);
  await s.write(0, patch, { sync: false });
  await s.flush();
  await s.release();
  const want = relabel(upstream('06-upstream-randomwrite-to-leader-rf0-ok.pcap'));
  t.same(relabel(ours(r, before)), want, 'the same request as upstream\'s client');
  for (const ip of IPS) {
    const rep = await rawRequest(r.real.get(ip)!, newPacket({
      opcode: Op.StreamFollowerRead, extentType: 1, partitionId: OVERWRITE.dp, extentId: OVERWRITE.ext, extentOffset: OVERWRITE.eoff, reqId: nextReqId(), size: OVERWRITE.size,
    }));
    t.equal(crc32(rep.data), crc32(patch), `replica ${ip} has the new bytes (the leader replicated them)`);
  }
});

t.test('capture 08: writes into holes are CreateExtent + Write on one pooled connection to Hosts[0], no new connection per write', async (t) => {
  const r = await rig(t);
  const dc = new DataClient({ source: r.source, meta: r.meta });
  t.teardown(() => dc.close());
  r.meta.files.set(200, { gen: 1, size: 8 << 20, keys: [] });
  const before = mark(r);
  const s = dc.open(200);
  // As the captured O_DIRECT writes: one 4 KiB write, recorded at once, then the next.
  for (const off of [3 << 20, 7 << 20, 5 << 20]) {
    await s.write(off, Buffer.alloc(4096, off >> 20));
    await s.flush();
  }
  await s.release();
  const want = upstream('08-upstream-3-hole-writes-pooled-conn.pcap');
  const got = ours(r, before);
  t.equal(got.length, want.length, `${want.length} requests, as upstream's`);
  const views = new Map(r.source.views.map((v) => [v.PartitionID, v]));
  for (let i = 0; i + 1 < got.length; i += 2) {
    const [ce, w] = [got[i]!, got[i + 1]!];
    const v = views.get(ce.dp)!;
    const hosts = v.Hosts.map((h) => ipOf(h));
    const followers = hosts.slice(1).map((h) => `${h}/`).join('');
    t.match(ce, { op: Op.CreateExtent, et: 0x11, rf: 2, arg: followers, host: hosts[0], size: 8, ext: 0 }, `write ${i / 2}: CreateExtent to Hosts[0] of partition ${ce.dp} with the followers, as upstream`);
    t.match(w, { op: Op.Write, et: 0x11, rf: 2, arg: followers, host: hosts[0], dp: ce.dp, eoff: 0, size: 4096, conn: ce.conn }, `write ${i / 2}: the Write on the same connection`);
  }
  // The client's own connections (the proxies also see the datanodes forwarding to their followers).
  const hostsUsed = new Set(got.map((q) => q.host)).size;
  const { opened, discarded } = dc.connStats();
  t.ok(opened <= hostsUsed, `${opened} connection(s) for 3 writes to ${hostsUsed} host(s): pooled, not one per write (upstream's: 2 for 2 hosts)`);
  t.equal(new Set(got.map((q) => q.conn)).size, opened, 'every request on one of them');
  t.equal(discarded, 0, 'no connection had to be thrown away');
});

t.test('captures 01-03 (this client before): a stale LeaderAddr costs one TryOtherAddr, then the next host at once', async (t) => {
  const r = await rig(t);
  // The view names .33 the leader of partition 3; the datanodes know .32 leads (an election the view missed).
  const stale = r.source.views.map((v) => (v.PartitionID === 3 ? { ...v, LeaderAddr: r.proxies.get('127.0.0.33')!.addr } : v));
  const source = new StaticSource(stale);
  const dc = new DataClient({ source, meta: r.meta });
  t.teardown(() => dc.close());
  const f = READS[0]!;
  const before = mark(r);
  const s = dc.open(f.ino);
  t.ok((await s.read(0, 4096)).equals(pattern(f.eoff + f.size, f.ino).subarray(f.eoff)), 'the read succeeds');
  const first = relabel(ours(r, before));
  t.same(first.map((q) => [q.host, q.conn, q.op]), [['127.0.0.33', 'a', Op.StreamRead], ['127.0.0.32', 'b', Op.StreamRead]],
    'TryOtherAddr from .33, then .32 on another connection (capture 03 needed 5 requests and 3 backoffs here)');
  t.same(dc.routeStats(), { tryOtherAddr: 1, failovers: 1, backoffs: 0 }, 'no sleep: the next host was tried at once');
  t.equal(dc.connStats().discarded, 1, 'the refused connection was closed, never reused (capture 02: reused, it got a FIN)');
  t.ok(source.refreshes >= 1, 'the view was refreshed');
  const again = mark(r);
  t.ok((await s.read(0, 4096)).length > 0, 'a second read');
  t.same(relabel(ours(r, again)).map((q) => q.host), ['127.0.0.32'], 'goes straight to the leader it learned');
  await s.release();
});
