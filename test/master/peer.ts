/**
 * Test peers standing in for a metanode or a datanode where the master's tests need only its admin
 * side: they answer Ok to CreateMetaPartition / CreateDataPartition and to heartbeats, record what they
 * were sent, and can be told to stop answering heartbeats. Not the real nodes (src/cluster/metanode.ts,
 * datanode.ts); those are tested on their own.
 */
import { newReply, Op, Result, type Packet } from '../../src/proto/index.js';
import { PacketServer } from '../../src/transport/server.js';

export interface Received {
  op: number;
  pid: number;
  body: string;
}

export class TestAdminPeer {
  readonly received: Received[] = [];
  /** When true, heartbeats get no reply at all (the master times out). */
  silent = false;
  /** Partition stats a metanode-like peer reports in its heartbeat. */
  partitions: Record<string, number>[] = [];
  private readonly server: PacketServer;
  addr = '';

  constructor(readonly kind: 'meta' | 'data') {
    this.server = new PacketServer(`test-${kind}-peer`, async (req: Packet) => this.handle(req));
  }

  async start(): Promise<string> {
    this.addr = await this.server.listen('127.0.0.1', 0);
    return this.addr;
  }

  async stop(): Promise<void> {
    await this.server.close();
  }

  private handle(req: Packet): Packet | null {
    const body = req.data.toString('utf8');
    this.received.push({ op: req.opcode, pid: req.partitionId, body });
    switch (req.opcode) {
      case Op.CreateMetaPartition:
      case Op.CreateDataPartition:
        return newReply(req, Result.Ok);
      case Op.MetaNodeHeartbeat:
        if (this.silent) return null;
        return newReply(req, Result.Ok, Buffer.from(JSON.stringify({ Partitions: this.partitions })));
      case Op.DataNodeHeartbeat:
        if (this.silent) return null;
        return newReply(req, Result.Ok, Buffer.from(JSON.stringify({ Total: 100 * 2 ** 30, Used: 2 ** 30, Available: 99 * 2 ** 30, Partitions: [] })));
      default:
        return newReply(req, Result.Err, Buffer.from(`test peer: op 0x${req.opcode.toString(16)} not served`));
    }
  }
}
