/** Shared setup for the meta tests: a real MetaNode on a temp dir with three partitions. */
import fs from 'node:fs';
import os from 'node:os';
import { MetaNode } from '../../src/cluster/metanode.js';
import { MetaClient, type MetaPartitionSource } from '../../src/meta/client.js';
import { newPacket, Op, Result, type MetaPartitionView } from '../../src/proto/index.js';
import { PacketConn } from '../../src/transport/tcp.js';
import { nextReqId } from '../../src/transport/reqid.js';

export const VOL = 'ltptest';
export const RANGES: [number, number, string][] = [
  [1, 0, '4194304'],
  [2, 4194305, '8388608'],
  [3, 8388609, '9223372036854775807'],
];

/** Sends CreateMetaPartition bodies by hand (End 2^63-1 as a literal JSON.stringify cannot write). */
export async function createPartitions(addr: string): Promise<void> {
  const c = await PacketConn.connect(addr);
  try {
    for (const [id, start, end] of RANGES) {
      const body = `{"VolName":"${VOL}","PartitionID":${id},"Start":${start},"End":${end},"Members":["${addr}"]}`;
      const r = await c.request(newPacket({ opcode: 0x40, partitionId: id, reqId: nextReqId(), data: Buffer.from(body) }));
      if (r.resultCode !== Result.Ok) throw new Error(`CreateMetaPartition ${id}: rc 0x${r.resultCode.toString(16)} ${r.data}`);
    }
  } finally {
    c.close();
  }
}

export class StaticSource implements MetaPartitionSource {
  refreshes = 0;
  constructor(public views: MetaPartitionView[]) {}
  metaPartitions(): MetaPartitionView[] {
    return this.views;
  }
  async refresh(): Promise<void> {
    this.refreshes++;
  }
}

export function viewsFor(leader: string, members: string[] = [leader]): MetaPartitionView[] {
  return RANGES.map(([id, start, end]) => ({
    PartitionID: id, Start: start, End: Number(end), Members: members, LeaderAddr: leader, Status: 2,
  }));
}

export interface Env {
  dir: string;
  node: MetaNode;
  addr: string;
  client: MetaClient;
  source: StaticSource;
}

interface Teardown {
  teardown(fn: () => unknown): void;
}

export async function setup(t: Teardown, opts: { transactions?: boolean } = {}): Promise<Env> {
  const dir = fs.mkdtempSync(os.tmpdir() + '/cubefs-');
  const node = new MetaNode({ dir });
  const addr = await node.start();
  await createPartitions(addr);
  const source = new StaticSource(viewsFor(addr));
  const client = new MetaClient({ vol: VOL, source, transactions: opts.transactions ?? false });
  t.teardown(async () => {
    client.close();
    await node.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { dir, node, addr, client, source };
}

export { Op };
