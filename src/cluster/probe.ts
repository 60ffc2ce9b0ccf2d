/**
 * Asking a running embedded datanode what it has done (requests served, refused as not the leader,
 * connections accepted): its DataNodeHeartbeat reply carries Stats. An empty heartbeat changes nothing on the
 * node (the master's names the leaders), so this is safe at any time. For operators, tests and benchmarks.
 */
import { newPacket, Op, Result } from '../proto/index.js';
import { nextReqId } from '../transport/reqid.js';
import { PacketConn } from '../transport/tcp.js';
import type { DataNodeStats } from './datanode.js';

/** The node's counters; `accepted` leaves out the connection this probe made. */
export async function dataNodeStats(addr: string, timeoutMs = 10_000): Promise<DataNodeStats> {
  const c = await PacketConn.connect(addr, timeoutMs);
  try {
    const r = await c.request(newPacket({ opcode: Op.DataNodeHeartbeat, reqId: nextReqId() }), { timeoutMs });
    if (r.resultCode !== Result.Ok) throw new Error(`datanode ${addr}: heartbeat answered 0x${r.resultCode.toString(16)}`);
    const s = (JSON.parse(r.data.toString('utf8')) as { Stats?: DataNodeStats }).Stats;
    if (!s) throw new Error(`datanode ${addr}: no Stats in its heartbeat reply (not an embedded datanode?)`);
    return { ...s, accepted: s.accepted - 1 };
  } finally {
    c.close();
  }
}

/** The counters of several nodes added up. */
export async function sumDataNodeStats(addrs: string[]): Promise<{ notLeader: number; accepted: number; reads: number; writes: number }> {
  const all = await Promise.all(addrs.map((a) => dataNodeStats(a)));
  return all.reduce((s, x) => ({ notLeader: s.notLeader + x.notLeader, accepted: s.accepted + x.accepted, reads: s.reads + x.reads, writes: s.writes + x.writes }),
    { notLeader: 0, accepted: 0, reads: 0, writes: 0 });
}
