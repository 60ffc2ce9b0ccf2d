/**
 * Reading one extent range.
 *
 * StreamRead goes to the partition's leader (route.ts: upstream's rules; a replica that is not the leader
 * answers TryOtherAddr, and the next host is tried at once). With follower read it is StreamFollowerRead to
 * any replica. Over TCP the reply is several packets of <= 128 KiB, each with its own CRC and ExtentOffset;
 * they are checked and copied into the caller's buffer as they arrive. A connection whose stream was cut
 * short (an error packet, a bad packet) is closed, never reused.
 *
 * A CRC mismatch from the leader is not final: the range is read again from each other replica with
 * StreamFollowerRead (which any replica serves), and only a mismatch on every replica is CubeFSError
 * CrcMismatch.
 *
 * Over RDMA (core.rdma reaches the host): one request block carrying the descriptor of an empty pool
 * buffer; the datanode RDMA-Writes the range into it and answers on the same QP with Size and the CRC of
 * the whole range, checked here; then the one copy into the caller's buffer, and the pool buffer goes back.
 */
import { crc32, ExtentType, newPacket, Op, Result, type DataPartitionView, type Packet } from '../proto/index.js';
import { nextReqId } from '../transport/reqid.js';
import { CubeFSError, ErrorCode } from '../util/errors.js';
import { countTcp, log, replyError, type DataCore } from './partitions.js';
import { toPartition, verdictOf } from './route.js';

export interface ExtentRange {
  partitionId: number;
  extentId: number;
  extentOffset: number;
  size: number;
}

class CrcError extends CubeFSError {}

/** Read `r` into dst[dstOffset, dstOffset + r.size). */
export async function readExtent(core: DataCore, r: ExtentRange, dst: Buffer, dstOffset: number): Promise<void> {
  const deadline = Date.now() + core.retryBudgetMs;
  const follower = core.route.followerRead;
  const what = `read partition ${r.partitionId} extent ${r.extentId} [${r.extentOffset}, ${r.extentOffset + r.size})`;
  let bad: { host: string; err: CrcError } | null = null;
  try {
    await toPartition(core, {
      pid: r.partitionId, what, deadline,
      ...(follower ? { first: (dp: DataPartitionView) => core.route.followerHost(dp), served: () => undefined } : {}),
      attempt: (host) => readFrom(core, host, r, dst, dstOffset, follower ? Op.StreamFollowerRead : Op.StreamRead),
      judge: (e, host) => {
        if (!(e instanceof CrcError)) return verdictOf(e);
        bad = { host, err: e };
        return 'final';
      },
    });
  } catch (e) {
    if (!bad) throw e;
    await fromOtherReplicas(core, r, dst, dstOffset, bad);
  }
}

/** The leader's copy failed its CRC: any other replica's will do (StreamFollowerRead). */
async function fromOtherReplicas(core: DataCore, r: ExtentRange, dst: Buffer, dstOffset: number, bad: { host: string; err: CrcError }): Promise<void> {
  const dp = await core.parts.get(r.partitionId);
  const others = dp.Hosts.filter((h) => h !== bad.host);
  let mismatches = 1;
  let lastErr: Error = bad.err;
  for (const host of others) {
    try {
      await readFrom(core, host, r, dst, dstOffset, Op.StreamFollowerRead);
      log('read partition %d extent %d: CRC mismatch on %s, read from %s instead', r.partitionId, r.extentId, bad.host, host);
      return;
    } catch (e) {
      lastErr = e as Error;
      if (e instanceof CrcError) mismatches++;
    }
  }
  const every = mismatches === dp.Hosts.length;
  throw new CubeFSError(ErrorCode.CrcMismatch,
    `read partition ${r.partitionId} extent ${r.extentId}: CRC mismatch ${every ? 'on every replica' : `on ${bad.host}, and no other replica served it`} (${lastErr.message})`,
    { cause: lastErr });
}

async function readFrom(core: DataCore, host: string, r: ExtentRange, dst: Buffer, dstOffset: number, opcode: Op): Promise<void> {
  // Upstream sends reads as normal-extent packets whatever the extent (a tiny extent too).
  const req = newPacket({
    opcode, extentType: ExtentType.Normal, partitionId: r.partitionId,
    extentId: r.extentId, extentOffset: r.extentOffset, kernelOffset: 0, reqId: nextReqId(), size: r.size,
  });
  const what = `read partition ${r.partitionId} extent ${r.extentId} [${r.extentOffset}, ${r.extentOffset + r.size}) from ${host}`;
  const rconn = core.rdma && r.size <= core.rdma.pool.maxBlock ? await core.rdma.conn(host) : null;
  if (rconn) {
    const path = core.rdma!;
    const lease = await path.readBuffer(r.size, core.timeoutMs);
    try {
      let p: Packet;
      try {
        p = await rconn.request(req, { desc: { buf: lease.buf }, timeoutMs: core.timeoutMs });
      } catch (e) {
        if (e instanceof CubeFSError && (e.code === ErrorCode.Network || e.code === ErrorCode.Timeout)) path.failed(host, e);
        throw e;
      }
      if (p.resultCode !== Result.Ok) throw replyError(p, what);
      if (p.extentId !== r.extentId || p.extentOffset !== r.extentOffset || p.size !== r.size) {
        throw new CubeFSError(ErrorCode.BadPacket, `${what}: unexpected RDMA reply (extent ${p.extentId} offset ${p.extentOffset} size ${p.size})`, { retryable: true });
      }
      const c = crc32(lease.buf);
      if (c !== p.crc >>> 0) {
        throw new CrcError(ErrorCode.CrcMismatch, `${what}: CRC mismatch over RDMA: reply 0x${(p.crc >>> 0).toString(16)}, data 0x${c.toString(16)}`, { retryable: true });
      }
      lease.buf.copy(dst, dstOffset);
      path.counters.rdmaReads++;
      return;
    } finally {
      lease.release();
    }
  }
  countTcp(core, 'reads');
  let got = 0;
  let failure: Error | null = null;
  const onReply = (p: Packet): boolean => {
    if (p.resultCode !== Result.Ok) {
      failure = replyError(p, what);
      return true;
    }
    const want = r.extentOffset + got;
    if (p.extentId !== r.extentId || p.extentOffset !== want || p.data.length === 0 || got + p.data.length > r.size) {
      failure = new CubeFSError(ErrorCode.BadPacket, `${what}: unexpected reply packet (extent ${p.extentId} offset ${p.extentOffset} size ${p.data.length}, want offset ${want})`, { retryable: true });
      return true;
    }
    const c = crc32(p.data);
    if (c !== p.crc >>> 0) {
      failure = new CrcError(ErrorCode.CrcMismatch, `${what}: CRC mismatch at extent offset ${p.extentOffset}: packet 0x${(p.crc >>> 0).toString(16)}, data 0x${c.toString(16)}`, { retryable: true });
      return true;
    }
    p.data.copy(dst, dstOffset + got);
    got += p.data.length;
    return got >= r.size;
  };
  const conn = await core.conns.acquire(host);
  let healthy = false;
  try {
    await conn.request(req, { timeoutMs: core.timeoutMs, onReply });
    // Read to its end and Ok: the connection may serve the next request. Anything else closes it.
    healthy = failure === null;
  } finally {
    core.conns.release(conn, healthy);
  }
  if (failure) throw failure;
}
