/**
 * Writers of the data path (upstream sdk/data/stream/extent_handler.go, in our own shape).
 *
 * ExtentWriter appends to one normal extent: it picks a read-write partition, takes a pooled connection to
 * its Hosts[0] for itself, sends CreateExtent on it, then pipelines Write packets (<= 128 KiB) on the same
 * connection, as upstream's ExtentHandler does; the connection goes back to the pool when the writer
 * retires, or is closed if anything failed on it. Replies come back in order, so the acknowledged bytes
 * are always a prefix: the writer's key grows with every ack. On the first failure the writer stops, and
 * every unacknowledged piece, in order, moves to a replacement writer on a new extent (another partition:
 * the failed one is excluded for a while); the owner is told so it can route later appends there. A piece
 * fails for good only when its retry budget (from its first send) runs out.
 *
 * tinyWrite sends one piece of up to 1 MiB as one packet to a tiny extent (ExtentID 0; Hosts[0] picks
 * extent and offset), as upstream's tiny ExtentHandler does.
 * randomWrite overwrites inside an existing extent with RandomWrite to the partition's raft leader,
 * RemainingFollowers 0 and no Arg: the leader replicates it (route.ts).
 *
 * Payloads are the caller's buffers (subarrays), never copied; the caller keeps them unchanged until
 * the piece settles.
 *
 * With an RDMA path (core.rdma) that reaches the leader, ExtentWriter and randomWrite send each packet as a
 * control block carrying the descriptor of the payload's pool buffer (the payload itself when it lies in
 * the pool, as a FUSE write does; else a counted copy) on the shared RDMA connection to the leader; replies
 * may then come back out of order over its QPs, so acks are applied in send order. CreateExtent and tiny
 * writes (the leader picks extent and offset: not idempotent, and small) stay on TCP.
 */
import { crc32, ExtentType, MAX_PACKET_DATA, newPacket, Op, Result, type DataPartitionView, type ExtentKey, type Packet } from '../proto/index.js';
import type { PacketConn } from '../transport/tcp.js';
import type { RdmaConnection } from '../transport/rdma.js';
import { nextReqId } from '../transport/reqid.js';
import { CubeFSError, ErrorCode, sleep } from '../util/errors.js';
import { backoffMs, countTcp, followerArg, isDiskFull, log, remainingFollowers, replyError, type DataCore } from './partitions.js';
import { toPartition } from './route.js';

export const EXTENT_SIZE_LIMIT = 128 * 1024 * 1024;
export const TINY_SIZE_LIMIT = 1024 * 1024;
/** Tiny extents have ids 1..64; normal ones start at 1024. */
export const TINY_EXTENT_MAX_ID = 64;

export interface WritePiece {
  fileOffset: number;
  data: Buffer;
  crc: number;
  sync: boolean;
  /** Epoch ms after which the piece fails instead of being retried. */
  deadline: number;
  resolve(): void;
  reject(e: Error): void;
}

export function newPiece(fileOffset: number, data: Buffer, sync: boolean, deadline: number): { piece: WritePiece; done: Promise<void> } {
  let resolve!: () => void, reject!: (e: Error) => void;
  const done = new Promise<void>((res, rej) => { resolve = res; reject = rej; });
  return { piece: { fileOffset, data, crc: crc32(data), sync, deadline, resolve, reject }, done };
}

/** The stream a writer works for. */
export interface WriterOwner {
  readonly ino: number;
  readonly core: DataCore;
  /** `piece` (the acked range) is now readable; `whole` is the writer's key to record at flush. */
  onAck(token: object, piece: ExtentKey, whole: ExtentKey): void;
  onReplace(old: ExtentWriter, next: ExtentWriter): void;
}

type State = 'opening' | 'open' | 'failed';

interface Inflight {
  piece: WritePiece;
  extentOffset: number;
  acked?: boolean;
}

const EMPTY = Buffer.alloc(0);

/**
 * One data packet with payload over RDMA: the payload in a pool buffer (leased), the request block with its
 * descriptor. Network failures are reported to the path (repeated ones move the datanode to TCP).
 */
async function rdmaSend(core: DataCore, conn: RdmaConnection, host: string, req: Packet, data: Buffer, deadline: number): Promise<Packet> {
  const path = core.rdma!;
  const lease = await path.payload(data, Math.max(1, Math.min(core.timeoutMs, deadline - Date.now())));
  try {
    const reply = await conn.request({ ...req, data: EMPTY, size: data.length }, { desc: { buf: lease.buf }, timeoutMs: core.timeoutMs });
    if (reply.resultCode === Result.Ok) path.counters.rdmaWrites++;
    return reply;
  } catch (e) {
    if (e instanceof CubeFSError && (e.code === ErrorCode.Network || e.code === ErrorCode.Timeout)) path.failed(host, e);
    throw e;
  } finally {
    lease.release();
  }
}

/**
 * Where an append may go on in an extent the file already has: right behind a recorded key that ends where
 * the append starts (upstream's tryInitExtentHandlerByLastEk: a file appended to again keeps filling its last
 * extent instead of opening one per session).
 */
export interface ResumeAt {
  dp: DataPartitionView;
  extentId: number;
  /** The extent offset just past the key. */
  extentOffset: number;
}

export class ExtentWriter {
  readonly startFileOffset: number;
  private state: State = 'opening';
  private dp: DataPartitionView | null = null;
  private extentId = 0;
  private conn: PacketConn | null = null;
  /** The leader's shared RDMA connection, when the RDMA path reaches it (then `conn` stays null). */
  private rconn: RdmaConnection | null = null;
  /** Pieces waiting for the extent to be created. */
  private queued: WritePiece[] = [];
  private inflight: Inflight[] = [];
  /** Bytes handed to this writer (sent or queued). */
  private assigned = 0;
  /** Extent offset of this writer's first byte: 0 for a new extent, past the key it resumes after. */
  private extentBase: number;
  private acked = 0;
  /** Close the connection once everything sent has settled; take no more pieces. */
  private retiring = false;

  constructor(private readonly owner: WriterOwner, startFileOffset: number, pieces: WritePiece[] = [], private lastErr?: Error,
    private resume?: ResumeAt) {
    this.startFileOffset = startFileOffset;
    this.extentBase = resume?.extentOffset ?? 0;
    for (const p of pieces) this.push(p);
    void this.open();
  }

  get nextFileOffset(): number {
    return this.startFileOffset + this.assigned;
  }

  get remaining(): number {
    return EXTENT_SIZE_LIMIT - this.extentBase - this.assigned;
  }

  /** Takes appends: not failed, not retiring, room left. */
  get usable(): boolean {
    return this.state !== 'failed' && !this.retiring && this.remaining > 0;
  }

  /** Append a piece at nextFileOffset (the caller guarantees contiguity and size <= remaining). */
  push(p: WritePiece): void {
    const extentOffset = this.extentBase + this.assigned;
    this.assigned += p.data.length;
    if (this.state === 'open') this.send({ piece: p, extentOffset });
    else this.queued.push(p);
  }

  /** No more pieces; the connection goes back to the pool when the last one settles. */
  retire(): void {
    this.retiring = true;
    this.maybeClose();
  }

  private async open(): Promise<void> {
    const core = this.owner.core;
    if (this.resume && await this.openResumed(this.resume)) return;
    this.extentBase = 0;
    for (let attempt = 0; this.state === 'opening'; attempt++) {
      const deadline = this.queued.length > 0 ? Math.min(...this.queued.map((p) => p.deadline)) : Date.now() + core.retryBudgetMs;
      let dp: DataPartitionView | undefined;
      let conn: PacketConn | null = null;
      try {
        dp = await core.parts.pick(deadline, this.lastErr);
        const host = dp.Hosts[0]!;
        const ino = Buffer.alloc(8);
        ino.writeBigUInt64BE(BigInt(this.owner.ino));
        const req = newPacket({
          opcode: Op.CreateExtent, extentType: ExtentType.Normal, partitionId: dp.PartitionID, reqId: nextReqId(),
          arg: followerArg(dp), remainingFollowers: remainingFollowers(dp), data: ino,
        });
        // CreateExtent and the Writes after it share one pooled connection, this writer's until it retires.
        conn = await core.conns.acquire(host);
        const reply = await conn.request(req, { timeoutMs: core.timeoutMs });
        if (reply.resultCode !== Result.Ok) throw replyError(reply, `CreateExtent on partition ${dp.PartitionID} (${host})`);
        const rconn = core.rdma ? await core.rdma.conn(host) : null;
        if (rconn) {
          core.conns.release(conn, true);
          conn = null;
        }
        if (this.retiring && this.queued.length === 0) {
          if (conn) core.conns.release(conn, true);
          this.state = 'failed';
          return;
        }
        log('ino %d: extent %d on partition %d at file offset %d', this.owner.ino, reply.extentId, dp.PartitionID, this.startFileOffset);
        this.opened(dp, reply.extentId, conn, rconn);
        return;
      } catch (e) {
        if (conn) core.conns.release(conn, false);
        this.lastErr = e as Error;
        const full = isDiskFull(e);
        if (dp) core.parts.exclude(dp.PartitionID, full);
        log('ino %d: new extent failed: %s', this.owner.ino, (e as Error).message);
        if (Date.now() >= deadline || !isRetryableWrite(e as Error) || (e instanceof CubeFSError && e.code === ErrorCode.NoPartition)) {
          this.state = 'failed';
          const q = this.queued;
          this.queued = [];
          for (const p of q) p.reject(e as Error);
          return;
        }
        // A full partition: another one at once (none left is ENOSPC from pick); anything else waits a little.
        if (!full) await sleep(backoffMs(attempt));
      }
    }
  }

  /** Go on in the resumed extent (no CreateExtent); false when its leader cannot be reached: a new extent then. */
  private async openResumed(r: ResumeAt): Promise<boolean> {
    const core = this.owner.core;
    const host = r.dp.Hosts[0]!;
    try {
      const rconn = core.rdma ? await core.rdma.conn(host) : null;
      const conn = rconn ? null : await core.conns.acquire(host);
      if (this.retiring && this.queued.length === 0) {
        if (conn) core.conns.release(conn, true);
        this.state = 'failed';
        return true;
      }
      log('ino %d: extent %d on partition %d resumed at extent offset %d, file offset %d', this.owner.ino, r.extentId, r.dp.PartitionID, r.extentOffset, this.startFileOffset);
      this.opened(r.dp, r.extentId, conn, rconn);
      return true;
    } catch (e) {
      log('ino %d: extent %d not resumed (%s): a new extent', this.owner.ino, r.extentId, (e as Error).message);
      return false;
    }
  }

  /** The extent is ready: send what was queued, at the extent offsets they were given in order. */
  private opened(dp: DataPartitionView, extentId: number, conn: PacketConn | null, rconn: RdmaConnection | null): void {
    this.dp = dp;
    this.extentId = extentId;
    this.conn = conn;
    this.rconn = rconn;
    this.state = 'open';
    let off = this.extentBase;
    const q = this.queued;
    this.queued = [];
    for (const p of q) {
      this.send({ piece: p, extentOffset: off });
      off += p.data.length;
    }
  }

  private send(f: Inflight): void {
    const dp = this.dp!;
    this.inflight.push(f);
    const p = f.piece;
    const core = this.owner.core;
    const req = newPacket({
      opcode: p.sync ? Op.SyncWrite : Op.Write, extentType: ExtentType.Normal, partitionId: dp.PartitionID,
      extentId: this.extentId, extentOffset: f.extentOffset, kernelOffset: p.fileOffset, reqId: nextReqId(),
      arg: followerArg(dp), remainingFollowers: remainingFollowers(dp), data: p.data, crc: p.crc,
    });
    let sent: Promise<Packet>;
    if (this.rconn) sent = rdmaSend(core, this.rconn, dp.Hosts[0]!, req, p.data, p.deadline);
    else if (p.data.length <= MAX_PACKET_DATA) {
      countTcp(core, 'writes');
      sent = this.conn!.request(req, { timeoutMs: core.timeoutMs });
    } else {
      // a piece cut for RDMA on a writer that ended up on TCP: <= 128 KiB packets, one reply for the piece
      const conn = this.conn!;
      const subs: Promise<Packet>[] = [];
      const crcs: number[] = [];
      for (let o = 0; o < p.data.length; o += MAX_PACKET_DATA) {
        const d = p.data.subarray(o, Math.min(p.data.length, o + MAX_PACKET_DATA));
        const crc = crc32(d);
        crcs.push(crc);
        countTcp(core, 'writes');
        subs.push(conn.request({ ...req, reqId: nextReqId(), extentOffset: f.extentOffset + o, kernelOffset: p.fileOffset + o, data: d, size: d.length, crc }, { timeoutMs: core.timeoutMs }));
      }
      sent = Promise.all(subs).then((rs) => {
        const bad = rs.find((r) => r.resultCode !== Result.Ok);
        if (bad) return bad;
        // One reply for the piece: Ok, echoing the piece's CRC when every packet echoed its own.
        return { ...rs[0]!, crc: rs.every((r, i) => r.crc >>> 0 === crcs[i]) ? p.crc : ~p.crc };
      });
    }
    sent.then(
      (reply) => {
        if (reply.resultCode !== Result.Ok) this.fail(replyError(reply, `write to partition ${dp.PartitionID} extent ${this.extentId} (${dp.Hosts[0]})`));
        else if (reply.partitionId !== dp.PartitionID || reply.crc >>> 0 !== p.crc >>> 0) {
          this.fail(new CubeFSError(ErrorCode.BadPacket, `write to partition ${dp.PartitionID} extent ${this.extentId}: reply for partition ${reply.partitionId} with CRC 0x${(reply.crc >>> 0).toString(16)}, sent 0x${(p.crc >>> 0).toString(16)}`, { retryable: true }));
        } else this.ack(f);
      },
      (e: Error) => this.fail(e),
    );
  }

  private ack(done: Inflight): void {
    if (this.state !== 'open') return;
    if (!this.inflight.includes(done)) {
      this.fail(new CubeFSError(ErrorCode.BadPacket, `write reply for a piece not in flight on extent ${this.extentId}`));
      return;
    }
    // Over TCP replies come in order; over RDMA (several QPs) they may not: apply acks as a prefix.
    done.acked = true;
    while (this.inflight.length > 0 && this.inflight[0]!.acked && this.state === 'open') this.ackFirst();
  }

  private ackFirst(): void {
    const f = this.inflight.shift()!;
    const n = f.piece.data.length;
    this.acked += n;
    const dp = this.dp!;
    const piece: ExtentKey = { FileOffset: f.piece.fileOffset, PartitionId: dp.PartitionID, ExtentId: this.extentId, ExtentOffset: f.extentOffset, Size: n, CRC: 0 };
    const whole: ExtentKey = { FileOffset: this.startFileOffset, PartitionId: dp.PartitionID, ExtentId: this.extentId, ExtentOffset: this.extentBase, Size: this.acked, CRC: 0 };
    this.owner.onAck(this, piece, whole);
    f.piece.resolve();
    this.maybeClose();
  }

  private fail(e: Error): void {
    if (this.state !== 'open') return;
    this.state = 'failed';
    if (this.conn) this.owner.core.conns.release(this.conn, false);
    this.conn = null;
    this.rconn = null;
    this.owner.core.parts.exclude(this.dp!.PartitionID, isDiskFull(e));
    const pieces = this.inflight.map((f) => f.piece);
    this.inflight = [];
    log('ino %d: extent %d failed (%s); %d pieces move to a new extent', this.owner.ino, this.extentId, e.message, pieces.length);
    if (pieces.length === 0) return;
    if (!isRetryableWrite(e) || Date.now() >= Math.min(...pieces.map((p) => p.deadline))) {
      for (const p of pieces) p.reject(e);
      return;
    }
    const next = new ExtentWriter(this.owner, pieces[0]!.fileOffset, pieces, e);
    if (this.retiring) next.retire();
    this.owner.onReplace(this, next);
  }

  private maybeClose(): void {
    if (this.retiring && this.inflight.length === 0 && this.queued.length === 0 && this.state === 'open') {
      if (this.conn) this.owner.core.conns.release(this.conn, true);
      this.conn = null;
      this.rconn = null;
      this.state = 'failed';
    }
  }
}

/** Write failures worth a new extent: everything but a bad request of ours. */
function isRetryableWrite(e: Error): boolean {
  if (e instanceof CubeFSError && e.result !== undefined) {
    return e.result !== Result.ArgMismatch && e.result !== Result.NotPerm && e.result !== Result.Forbid && e.result !== Result.WriteOpOfProtoVerForbidden;
  }
  return !(e instanceof CubeFSError && (e.code === ErrorCode.Closed || e.code === ErrorCode.Invalid));
}

export class NoTinyExtent extends Error {}

/**
 * One piece (up to 1 MiB, one packet) to a tiny extent, on a pooled connection to Hosts[0]. Resolves with
 * its key; throws NoTinyExtent when the datanode has no tiny extent to give (the caller falls back to a
 * normal extent).
 */
export async function tinyWrite(core: DataCore, p: WritePiece): Promise<ExtentKey> {
  let lastErr: Error | undefined;
  for (let attempt = 0; ; attempt++) {
    let dp: DataPartitionView | undefined;
    try {
      dp = await core.parts.pick(p.deadline, lastErr);
      const req = newPacket({
        opcode: p.sync ? Op.SyncWrite : Op.Write, extentType: ExtentType.Tiny, partitionId: dp.PartitionID, extentId: 0,
        extentOffset: 0, kernelOffset: p.fileOffset, reqId: nextReqId(), arg: followerArg(dp), remainingFollowers: remainingFollowers(dp),
        data: p.data, crc: p.crc,
      });
      countTcp(core, 'writes');
      const reply = await core.conns.request(dp.Hosts[0]!, req, { timeoutMs: core.timeoutMs });
      if (reply.resultCode === Result.DiskNoSpace && reply.data.toString('utf8').includes('no available extent')) {
        throw new NoTinyExtent(reply.data.toString('utf8'));
      }
      if (reply.resultCode !== Result.Ok) throw replyError(reply, `tiny write to partition ${dp.PartitionID} (${dp.Hosts[0]})`);
      return { FileOffset: p.fileOffset, PartitionId: dp.PartitionID, ExtentId: reply.extentId, ExtentOffset: reply.extentOffset, Size: p.data.length, CRC: 0 };
    } catch (e) {
      if (e instanceof NoTinyExtent) throw e;
      lastErr = e as Error;
      const full = isDiskFull(e);
      if (dp) core.parts.exclude(dp.PartitionID, full);
      if (!isRetryableWrite(lastErr) || Date.now() >= p.deadline || (e instanceof CubeFSError && e.code === ErrorCode.NoPartition)) throw e;
      if (!full) await sleep(backoffMs(attempt));
    }
  }
}

/** Overwrite [fileOffset, +data.length) inside `key`'s extent, <= 128 KiB a packet (1 MiB over RDMA). */
export async function randomWrite(core: DataCore, key: ExtentKey, fileOffset: number, data: Buffer, sync: boolean, deadline: number): Promise<void> {
  const jobs: Promise<void>[] = [];
  const max = core.rdma?.maxPiece ?? MAX_PACKET_DATA;
  for (let o = 0; o < data.length; o += max) {
    const chunk = data.subarray(o, Math.min(data.length, o + max));
    jobs.push(randomWritePiece(core, key, fileOffset + o, chunk, sync, deadline));
  }
  await Promise.all(jobs);
}

/** One piece of an overwrite, to the partition's leader (the next host at once if it is not the leader). */
function randomWritePiece(core: DataCore, key: ExtentKey, fileOffset: number, data: Buffer, sync: boolean, deadline: number): Promise<void> {
  const what = `overwrite partition ${key.PartitionId} extent ${key.ExtentId} at file offset ${fileOffset}`;
  return toPartition(core, {
    pid: key.PartitionId, what, deadline,
    attempt: async (host) => {
      const rconn = core.rdma ? await core.rdma.conn(host) : null;
      if (rconn) {
        checkWriteReply(await rdmaSend(core, rconn, host, randomWritePacket(key, fileOffset, data, sync), data, deadline), `${what} (${host})`, data);
        return;
      }
      // A piece cut for RDMA on a datanode that is on TCP: <= 128 KiB packets.
      const sends: Promise<void>[] = [];
      for (let o = 0; o < data.length; o += MAX_PACKET_DATA) {
        const d = data.subarray(o, Math.min(data.length, o + MAX_PACKET_DATA));
        countTcp(core, 'writes');
        sends.push(core.conns.request(host, randomWritePacket(key, fileOffset + o, d, sync), { timeoutMs: core.timeoutMs })
          .then((reply) => checkWriteReply(reply, `${what} (${host})`, d)));
      }
      const rs = await Promise.allSettled(sends);
      const bad = rs.find((x): x is PromiseRejectedResult => x.status === 'rejected');
      if (bad) throw bad.reason;
    },
  });
}

/** RandomWrite as upstream's NewOverwritePacket: a normal-extent packet, RemainingFollowers 0, no Arg. */
function randomWritePacket(key: ExtentKey, fileOffset: number, data: Buffer, sync: boolean): Packet {
  return newPacket({
    opcode: sync ? Op.SyncRandomWrite : Op.RandomWrite, extentType: ExtentType.Normal, partitionId: key.PartitionId,
    extentId: key.ExtentId, extentOffset: key.ExtentOffset + (fileOffset - key.FileOffset), kernelOffset: fileOffset,
    reqId: nextReqId(), remainingFollowers: 0, data, crc: crc32(data),
  });
}

/** An Ok reply for this write (CRC echoed), or the error. */
function checkWriteReply(reply: Packet, what: string, data: Buffer): void {
  if (reply.resultCode !== Result.Ok) throw replyError(reply, what);
  if (reply.crc >>> 0 !== crc32(data)) {
    throw new CubeFSError(ErrorCode.BadPacket, `${what}: the reply echoes CRC 0x${(reply.crc >>> 0).toString(16)}, not the data's`, { retryable: true });
  }
}
