/**
 * Reading one extent range: StreamRead to the partition leader (Hosts[0]) first, the other hosts on a
 * failure, TryOtherAddr or a bad CRC. The reply is several packets of <= 128 KiB, each with its own CRC
 * and ExtentOffset; they are checked and copied into the caller's buffer as they arrive.
 *
 * Retries: network errors and retryable results (Again, Err, TryOtherAddr, LimitedIo) go round the
 * hosts with a growing sleep until the retry budget is spent. A CRC mismatch on every host is final:
 * CubeFSError CrcMismatch.
 *
 * Over RDMA (core.rdma reaches the host): one StreamRead block carrying the descriptor of an empty pool
 * buffer; the datanode RDMA-Writes the range into it and answers on the same QP with Size and the CRC of
 * the whole range, checked here; then the one copy into the caller's buffer, and the pool buffer goes back.
 */
import { crc32, ExtentType, newPacket, Op, Result, type Packet } from '../proto/index.js';
import { nextReqId } from '../transport/reqid.js';
import { CubeFSError, ErrorCode, sleep } from '../util/errors.js';
import { backoffMs, countTcp, isRetryable, log, replyError, type DataCore } from './partitions.js';

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
  let lastErr: Error | undefined;
  for (let round = 0; ; round++) {
    const dp = await core.parts.get(r.partitionId);
    let crcFailures = 0, missing = 0;
    for (const host of dp.Hosts) {
      try {
        await readFrom(core, host, r, dst, dstOffset);
        return;
      } catch (e) {
        lastErr = e as Error;
        log('read partition %d extent %d from %s: %s', r.partitionId, r.extentId, host, lastErr.message);
        if (e instanceof CrcError) crcFailures++;
        else if (e instanceof CubeFSError && e.result === Result.NotExist) missing++;
        else if (!isRetryable(e)) throw e;
      }
    }
    if (crcFailures === dp.Hosts.length) {
      throw new CubeFSError(ErrorCode.CrcMismatch, `read partition ${r.partitionId} extent ${r.extentId}: CRC mismatch on every replica (${lastErr?.message})`, { cause: lastErr });
    }
    if (missing === dp.Hosts.length) throw lastErr!;
    if (Date.now() >= deadline) throw lastErr ?? new CubeFSError(ErrorCode.Timeout, `read partition ${r.partitionId}: retry budget spent`);
    await sleep(backoffMs(round));
    await core.parts.refresh().catch(() => undefined);
  }
}

async function readFrom(core: DataCore, host: string, r: ExtentRange, dst: Buffer, dstOffset: number): Promise<void> {
  const tiny = r.extentId >= 1 && r.extentId <= 64;
  const req = newPacket({
    opcode: Op.StreamRead, extentType: tiny ? ExtentType.Tiny : ExtentType.Normal, partitionId: r.partitionId,
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
  const conn = await core.pool.get(host);
  await conn.request(req, { timeoutMs: core.timeoutMs, onReply });
  // the rest of a stream cut short arrives for a forgotten ReqID and is dropped by the connection
  if (failure) throw failure;
}
