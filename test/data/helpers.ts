/**
 * Test fixtures for the data path: three real DataNodes on 127.0.0.1 (port 0, temp dirs), partitions
 * created with CreateDataPartition as the master does, a static partition source, and FakeMeta: an
 * obviously-fake in-memory ExtentMetaOps (test double for the metanode, which is not part of this test).
 */
import fs from 'node:fs';
import os from 'node:os';
import type { Test } from 'tap';
import { DataNode, type DataNodeOptions } from '../../src/cluster/datanode.js';
import type { DataPartitionSource, ExtentMetaOps } from '../../src/data/index.js';
import { newPacket, Op, Result, type DataPartitionView, type ExtentKey, type Packet } from '../../src/proto/index.js';
import { nextReqId } from '../../src/transport/reqid.js';
import { PacketConn } from '../../src/transport/tcp.js';

export class FakeMeta implements ExtentMetaOps {
  readonly files = new Map<number, { gen: number; size: number; keys: ExtentKey[] }>();
  appends = 0;

  private file(ino: number) {
    let f = this.files.get(ino);
    if (!f) this.files.set(ino, (f = { gen: 1, size: 0, keys: [] }));
    return f;
  }

  async listExtents(ino: number) {
    const f = this.file(ino);
    return { gen: f.gen, size: f.size, extents: f.keys.map((k) => ({ ...k })) };
  }

  async appendExtentKey(ino: number, ek: ExtentKey): Promise<void> {
    this.appends++;
    const f = this.file(ino);
    const s = ek.FileOffset, e = ek.FileOffset + ek.Size;
    const kept: ExtentKey[] = [];
    for (const k of f.keys) {
      const ke = k.FileOffset + k.Size;
      if (ke <= s || k.FileOffset >= e) { kept.push(k); continue; }
      if (k.FileOffset < s) kept.push({ ...k, Size: s - k.FileOffset });
      if (ke > e) kept.push({ ...k, FileOffset: e, ExtentOffset: k.ExtentOffset + (e - k.FileOffset), Size: ke - e });
    }
    kept.push({ ...ek });
    f.keys = kept.sort((a, b) => a.FileOffset - b.FileOffset);
    f.size = Math.max(f.size, e);
    f.gen++;
  }

  async truncate(ino: number, size: number): Promise<void> {
    const f = this.file(ino);
    f.keys = f.keys.filter((k) => k.FileOffset < size).map((k) => (k.FileOffset + k.Size > size ? { ...k, Size: size - k.FileOffset } : k));
    f.size = size;
  }
}

export class StaticSource implements DataPartitionSource {
  refreshes = 0;
  constructor(public views: DataPartitionView[]) {}
  dataPartitions(): DataPartitionView[] {
    return this.views;
  }
  async refresh(): Promise<void> {
    this.refreshes++;
  }
}

export function view(pid: number, hosts: string[]): DataPartitionView {
  return { PartitionType: 0, PartitionID: pid, Status: 2, ReplicaNum: hosts.length, Hosts: hosts, LeaderAddr: hosts[0]!, Epoch: 0, IsRecover: false };
}

export function tmpdir(t: Test): string {
  const d = fs.mkdtempSync(os.tmpdir() + '/cubefs-');
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

/** One request on a fresh connection, closed afterwards. */
export async function rawRequest(addr: string, p: Packet, onReply?: (p: Packet) => boolean): Promise<Packet> {
  const c = await PacketConn.connect(addr);
  try {
    return await c.request(p, { timeoutMs: 10_000, ...(onReply ? { onReply } : {}) });
  } finally {
    c.close();
  }
}

export async function createPartition(addr: string, pid: number, hosts: string[]): Promise<void> {
  const r = await rawRequest(addr, newPacket({
    opcode: Op.CreateDataPartition, reqId: nextReqId(),
    data: Buffer.from(JSON.stringify({ VolName: 'test', PartitionID: pid, Hosts: hosts })),
  }));
  if (r.resultCode !== Result.Ok) throw new Error(`CreateDataPartition ${pid} on ${addr}: 0x${r.resultCode.toString(16)}`);
}

/** What the master tells a datanode in every heartbeat: the raft leader of each partition (master.ts). */
export async function tellLeaders(addr: string, views: DataPartitionView[]): Promise<void> {
  const Leaders = Object.fromEntries(views.map((v) => [v.PartitionID, v.LeaderAddr]));
  const r = await rawRequest(addr, newPacket({ opcode: Op.DataNodeHeartbeat, reqId: nextReqId(), data: Buffer.from(JSON.stringify({ Leaders })) }));
  if (r.resultCode !== Result.Ok) throw new Error(`heartbeat to ${addr}: 0x${r.resultCode.toString(16)}`);
}

export interface Cluster {
  nodes: DataNode[];
  addrs: string[];
  dirs: string[];
  views: DataPartitionView[];
  source: StaticSource;
  /** Stop node i; restart() brings it back on the same dir and port, and tells it the leaders as a master would. */
  restart(i: number, opts?: Partial<DataNodeOptions>): Promise<void>;
}

export async function startCluster(t: Test, opts: { partitions?: number; node?: Partial<DataNodeOptions> } = {}): Promise<Cluster> {
  const dirs = [tmpdir(t), tmpdir(t), tmpdir(t)];
  const nodes = dirs.map((dir) => new DataNode({ dir, ...opts.node }));
  t.teardown(async () => { for (const n of cluster.nodes) await n.stop(); });
  const addrs = await Promise.all(nodes.map((n) => n.start()));
  const views: DataPartitionView[] = [];
  const n = opts.partitions ?? 2;
  for (let pid = 1; pid <= n; pid++) {
    const hosts = [...addrs.slice((pid - 1) % 3), ...addrs.slice(0, (pid - 1) % 3)];
    for (const a of addrs) await createPartition(a, pid, hosts);
    views.push(view(pid, hosts));
  }
  const cluster: Cluster = {
    nodes, addrs, dirs, views, source: new StaticSource(views),
    async restart(i, o = {}) {
      await cluster.nodes[i]!.stop();
      const node = new DataNode({ dir: dirs[i]!, listen: addrs[i]!, ...opts.node, ...o });
      cluster.nodes[i] = node;
      await node.start();
      await tellLeaders(addrs[i]!, views);
    },
  };
  return cluster;
}

/** Deterministic pseudo-random bytes. */
export function pattern(size: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(size);
  let x = (seed * 2654435761) >>> 0 || 1;
  let i = 0;
  for (; i + 4 <= size; i += 4) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    b.writeUInt32LE(x, i);
  }
  for (; i < size; i++) b[i] = (seed + i) & 0xff;
  return b;
}
