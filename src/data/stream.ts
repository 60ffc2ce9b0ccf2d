/**
 * FileStream: the data of one open inode (upstream sdk/data/stream/stream_writer.go + reader, in our
 * shape). One per inode, shared by every open handle (refcounted by DataClient).
 *
 * State: `keys` is the file's extent map as this client sees it: the keys loaded from the metanode plus
 * every acknowledged write (so reads see acked data before it is flushed); `dirty` holds the keys to
 * record at flush, one per writer (growing as acks arrive) or per tiny piece, in order of first ack.
 * In-flight writes are kept as ranges: a write or read that overlaps one waits for it to settle first,
 * so the mapping of a range to keys never races an unacknowledged write.
 *
 * Dispatch of a write (mapping, choosing writers, sending) is synchronous after its awaits, so two
 * writes never interleave their packets on an extent writer. Covered ranges are overwritten in place
 * (RandomWrite to the partition's leader); holes are appended to the current extent writer when contiguous
 * with it, else to a new one. Extent layout as upstream's (stream_writer.go GetStoreMod): only a hole at
 * file offset 0 of at most 1 MiB goes to a tiny extent, as one packet; everything else to normal extents.
 *
 * Failures reach the application as upstream's client reports them: EIO, or ENOSPC when the cluster is
 * full (asWriteFailure).
 *
 * Write-behind (upstream's ExtentHandler gathers writes into packets the same way): a write that asks for
 * it (`stage`), is not sync and is at most STAGE_MAX_WRITE (one TCP packet's payload) is copied into the stream's staging buffer and
 * answered at once; contiguous writes fill it; the gathered run is dispatched as one write when it is full,
 * when a write or read touches it out of order, after STAGE_IDLE_MS, and at flush. So a 4 KiB `dd` sends
 * 1 MiB requests (over RDMA one request, one RDMA Read per replica) instead of one round trip per 4 KiB.
 * The buffer comes from the RDMA pool when there is one, so it is sent by descriptor without another copy.
 * Nothing is weaker than before: data becomes visible to other clients only at flush (when its extent key
 * is recorded), staged or not, and a failure of a staged run is reported by the next write and by flush
 * (fsync, close), as upstream reports it. Larger writes are never copied.
 */
import { constants as osc } from 'node:os';
import type { ExtentKey } from '../proto/index.js';
import { MAX_PACKET_DATA, PartitionStatus } from '../proto/index.js';
import { CubeFSError, ErrorCode, errnoOf } from '../util/errors.js';
import { insertKey, keyEnd, keyEndingAt, mapRange, truncateKeys } from './extent-map.js';
import { log, type DataCore } from './partitions.js';
import { warn } from '../util/log.js';
import { readExtent } from './reader.js';
import { EXTENT_SIZE_LIMIT, ExtentWriter, newPiece, NoTinyExtent, randomWrite, tinyWrite, TINY_EXTENT_MAX_ID, TINY_SIZE_LIMIT, type ResumeAt, type WriterOwner } from './writer.js';

export interface ExtentMetaOps {
  listExtents(ino: number): Promise<{ gen: number; size: number; extents: ExtentKey[] }>;
  appendExtentKey(ino: number, ek: ExtentKey, discard?: ExtentKey[]): Promise<void>;
  truncate(ino: number, size: number): Promise<void>;
}

const E = osc.errno;

/** A failed write as the application sees it: ENOSPC when the cluster is out of space, else EIO, as upstream's client. */
export function asWriteFailure(e: unknown): CubeFSError {
  const errno = errnoOf(e) === E.ENOSPC ? E.ENOSPC : E.EIO;
  if (e instanceof CubeFSError) {
    if (e.errno === errno) return e;
    return new CubeFSError(e.code, e.message, { errno, ...(e.result !== undefined ? { result: e.result } : {}), retryable: e.retryable, cause: e });
  }
  return new CubeFSError(ErrorCode.Result, (e as Error)?.message ?? String(e), { errno, cause: e });
}

/** Bytes one StreamRead asks for (the reply comes as <= 128 KiB packets). */
const READ_REQUEST_SIZE = 1024 * 1024;
const READ_CONCURRENCY = 8;
/** Write-behind: the staging buffer, and the largest write copied into it. */
const STAGE_BYTES = 1024 * 1024;
export const STAGE_MAX_WRITE = 128 * 1024;
/** A partly filled staging buffer goes out once no write has come for this long. */
const STAGE_IDLE_MS = 50;
/** Gathered runs in flight per stream before a new one waits (bounds the memory write-behind holds). */
const STAGES_INFLIGHT = 4;
/** Spare staging buffers a client keeps (without RDMA; the pool is the spare list with it). */
const SPARE_STAGES = 8;

/** A run of contiguous small writes not yet dispatched. */
interface Stage {
  fileOffset: number;
  buf: Buffer;
  len: number;
  /** `buf` is a pool buffer (freed when the run settles). */
  pooled: boolean;
  timer: NodeJS.Timeout;
}

interface Range {
  start: number;
  end: number;
  done: Promise<unknown>;
}

/** Internal: how a stream reaches its client. */
export interface StreamHost {
  readonly core: DataCore;
  readonly meta: ExtentMetaOps;
  forget(s: FileStream): void;
}

export class FileStream implements WriterOwner {
  readonly ino: number;
  /** Open references (DataClient.open adds one, release drops one). */
  refs = 0;
  private loaded = false;
  private loading: Promise<void> | null = null;
  private keys: ExtentKey[] = [];
  private fileSize = 0;
  private handler: ExtentWriter | null = null;
  private readonly writers = new Set<ExtentWriter>();
  private readonly dirty = new Map<object, ExtentKey>();
  private readonly inflight = new Set<Range>();
  private writeError: Error | null = null;
  private stage: Stage | null = null;
  /** Dispatched runs not yet settled. */
  private readonly stagedRuns = new Set<Promise<void>>();
  /** Key recording and truncates, one at a time in order (flush, the periodic recorder, truncate). */
  private metaChain: Promise<void> = Promise.resolve();
  /** Records the dirty keys flushInterval after the first ack that made one (null: none pending). */
  private recordTimer: NodeJS.Timeout | null = null;

  constructor(private readonly host: StreamHost, ino: number) {
    this.ino = ino;
  }

  get core(): DataCore {
    return this.host.core;
  }

  /** File size including acknowledged writes not yet flushed. */
  get size(): number {
    return this.fileSize;
  }

  /** Fetch keys and size from the metanode (once; again after truncated()). */
  load(): Promise<void> {
    if (this.loaded) return Promise.resolve();
    if (!this.loading) {
      this.loading = (async () => {
        const r = await this.host.meta.listExtents(this.ino);
        const keys: ExtentKey[] = [];
        for (const k of [...(r.extents ?? [])].sort((a, b) => a.FileOffset - b.FileOffset)) insertKey(keys, k);
        let size = r.size;
        for (const k of this.dirty.values()) {
          insertKey(keys, k);
          size = Math.max(size, keyEnd(k));
        }
        this.keys = keys;
        this.fileSize = size;
        this.loaded = true;
      })().finally(() => { this.loading = null; });
    }
    return this.loading;
  }

  /**
   * Write `data` at `offset`. Resolves once every replica has it; with `stage` (write-behind, see above) a
   * small write may instead resolve once it is copied into the staging buffer.
   */
  async write(offset: number, data: Buffer, opts: { sync?: boolean; stage?: boolean } = {}): Promise<void> {
    if (data.length === 0) return;
    if (offset < 0 || !Number.isSafeInteger(offset)) throw new RangeError(`bad write offset ${offset}`);
    const end = offset + data.length;
    const stageable = opts.stage === true && opts.sync !== true && data.length <= STAGE_MAX_WRITE;
    if (stageable) {
      if (this.writeError) throw this.writeError;
      if (this.appendToStage(offset, data)) return;
    }
    this.submitStage();
    await this.load();
    if (stageable) {
      while (this.stagedRuns.size >= STAGES_INFLIGHT) await Promise.race(this.stagedRuns);
      if (this.appendToStage(offset, data) || this.startStage(offset, data)) return;
    }
    // Whatever was staged goes first (it precedes this write), and a range in flight settles first.
    do {
      this.submitStage();
      await this.waitInflight(offset, end);
    } while (this.stage);
    const done = this.dispatch(offset, data, opts.sync ?? false, true);
    try {
      await done;
    } catch (e) {
      const f = asWriteFailure(e);
      this.writeError ??= f;
      throw f;
    }
  }

  /**
   * Map [offset, +data) and send it: synchronous up to the sends, so writes never interleave on a writer.
   * Settles when every piece has; rejects with the first failure. `tinyOk`: a hole at offset 0 of at most
   * 1 MiB may go to a tiny extent (upstream's rule; a full staging buffer is the head of a larger file).
   */
  private dispatch(offset: number, data: Buffer, sync: boolean, tinyOk: boolean): Promise<void> {
    const end = offset + data.length;
    const core = this.core;
    const deadline = Date.now() + core.retryBudgetMs;
    const jobs: Promise<void>[] = [];
    for (const seg of mapRange(this.keys, offset, data.length)) {
      const slice = data.subarray(seg.fileOffset - offset, seg.fileOffset - offset + seg.size);
      if (seg.key) jobs.push(randomWrite(core, seg.key, seg.fileOffset, slice, sync, deadline));
      else if (tinyOk && core.tinyExtents && seg.fileOffset === 0 && seg.size <= TINY_SIZE_LIMIT) jobs.push(this.writeTiny(slice, sync, deadline));
      else jobs.push(...this.append(seg.fileOffset, slice, sync, deadline));
    }
    // Settled only when every piece is (a pool buffer must not go back while a replica may still read it).
    const done = Promise.allSettled(jobs).then((rs) => {
      const bad = rs.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (bad) throw bad.reason;
      this.fileSize = Math.max(this.fileSize, end);
    });
    const range: Range = { start: offset, end, done: done.catch(() => undefined) };
    this.inflight.add(range);
    void range.done.finally(() => this.inflight.delete(range));
    return done;
  }

  /** Copy into the open stage when `data` continues it and fits (and nothing in flight overlaps). */
  private appendToStage(offset: number, data: Buffer): boolean {
    const st = this.stage;
    if (!st || offset !== st.fileOffset + st.len || data.length > st.buf.length - st.len) return false;
    if (this.overlapsInflight(offset, offset + data.length)) return false;
    data.copy(st.buf, st.len);
    st.len += data.length;
    this.staged(offset + data.length, data.length);
    if (st.len === st.buf.length) this.submitStage();
    else st.timer.refresh();
    return true;
  }

  /** Open a stage at `offset` with `data` in it; false when no buffer is at hand or a write in flight overlaps. */
  private startStage(offset: number, data: Buffer): boolean {
    if (this.stage || !this.loaded || this.overlapsInflight(offset, offset + data.length)) return false;
    const pool = this.core.rdma?.pool;
    let buf: Buffer | null = null;
    if (pool) {
      try {
        buf = pool.alloc(STAGE_BYTES, 0);
      } catch {
        return false; // the pool is busy: send this write as it is rather than wait
      }
    } else {
      buf = this.core.spareStages.pop() ?? Buffer.allocUnsafe(STAGE_BYTES);
    }
    const timer = setTimeout(() => this.submitStage(), STAGE_IDLE_MS);
    timer.unref();
    this.stage = { fileOffset: offset, buf, len: 0, pooled: pool !== undefined, timer };
    return this.appendToStage(offset, data);
  }

  private staged(end: number, n: number): void {
    this.fileSize = Math.max(this.fileSize, end);
    this.core.staging.writes++;
    this.core.staging.bytes += n;
  }

  /** Dispatch the open stage, if any; its failure is kept for the next write and for flush. */
  private submitStage(): void {
    const st = this.stage;
    if (!st) return;
    this.stage = null;
    clearTimeout(st.timer);
    const release = (): void => {
      if (st.pooled) this.core.rdma?.pool.free(st.buf);
      else if (this.core.spareStages.length < SPARE_STAGES) this.core.spareStages.push(st.buf);
    };
    if (st.len === 0) {
      release();
      return;
    }
    this.core.staging.submits++;
    // A full stage is the head of a larger file: a tiny extent only for a run that ended on its own.
    const run = this.dispatch(st.fileOffset, st.buf.subarray(0, st.len), false, st.len < st.buf.length).then(
      () => undefined,
      (e: Error) => {
        this.writeError ??= asWriteFailure(e);
        log('ino %d: staged run %d+%d failed: %s', this.ino, st.fileOffset, st.len, e.message);
      },
    ).finally(() => {
      release();
      this.stagedRuns.delete(run);
    });
    this.stagedRuns.add(run);
  }

  private overlapsInflight(start: number, end: number): boolean {
    for (const r of this.inflight) if (overlaps(r, start, end)) return true;
    return false;
  }

  async read(offset: number, size: number): Promise<Buffer> {
    if (offset < 0 || size < 0) throw new RangeError(`bad read range ${offset}+${size}`);
    const st = this.stage;
    if (st && st.fileOffset < offset + size && offset < st.fileOffset + st.len) this.submitStage();
    await this.load();
    await this.waitInflight(offset, offset + size);
    const end = Math.min(offset + size, this.fileSize);
    if (end <= offset) return Buffer.alloc(0);
    const out = Buffer.alloc(end - offset);
    const jobs: (() => Promise<void>)[] = [];
    for (const seg of mapRange(this.keys, offset, end - offset)) {
      const k = seg.key;
      if (!k) continue;
      for (let o = 0; o < seg.size; o += READ_REQUEST_SIZE) {
        const n = Math.min(READ_REQUEST_SIZE, seg.size - o);
        const fo = seg.fileOffset + o;
        jobs.push(() => readExtent(this.core, {
          partitionId: k.PartitionId, extentId: k.ExtentId, extentOffset: k.ExtentOffset + (fo - k.FileOffset), size: n,
        }, out, fo - offset));
      }
    }
    await runLimited(jobs, READ_CONCURRENCY);
    return out;
  }

  /** Every write acknowledged by all replicas and its extent key recorded at the metanode. */
  async flush(): Promise<void> {
    this.submitStage();
    while (this.inflight.size > 0 || this.stagedRuns.size > 0) {
      await Promise.all([...[...this.inflight].map((r) => r.done), ...this.stagedRuns]);
    }
    try {
      await this.serial(() => this.recordDirty());
    } catch (e) {
      throw asWriteFailure(e);
    }
    const err = this.writeError;
    this.writeError = null;
    if (err) throw err;
  }

  /** Run `job` after every key recording and truncate before it. */
  private serial<T>(job: () => Promise<T>): Promise<T> {
    const run = this.metaChain.then(job);
    this.metaChain = run.then(() => undefined, () => undefined);
    return run;
  }

  /** Record the keys of what is acknowledged now; what cannot be recorded stays dirty for the next try. */
  private async recordDirty(): Promise<void> {
    this.disarmRecorder();
    const entries = [...this.dirty.entries()];
    this.dirty.clear();
    for (let i = 0; i < entries.length; i++) {
      const [, ek] = entries[i]!;
      try {
        await this.host.meta.appendExtentKey(this.ino, ek);
      } catch (e) {
        // A key that grew meanwhile (a later ack of the same writer) is newer than this one: keep that.
        for (const [t, k] of entries.slice(i)) if (!this.dirty.has(t)) this.dirty.set(t, k);
        throw e;
      }
    }
  }

  /**
   * Acknowledged data whose key is not recorded is lost if this process dies (a kill -9, an OOM): the
   * extents are on the datanodes, but no inode names them. So keys are also recorded every flushInterval
   * while a file is being written, not only at fsync and close; a crash loses at most that much.
   */
  private armRecorder(): void {
    const every = this.core.flushIntervalMs;
    if (this.recordTimer || every <= 0) return;
    this.recordTimer = setTimeout(() => {
      this.recordTimer = null;
      if (this.dirty.size === 0) return;
      this.serial(() => this.recordDirty()).catch((e: Error) => {
        warn('data', `inode ${this.ino}: recording written extents failed (${e.message}); trying again at the next flush`,
          { key: `record-${this.ino}` });
        this.armRecorder();
      });
    }, every);
    this.recordTimer.unref();
  }

  private disarmRecorder(): void {
    if (this.recordTimer) clearTimeout(this.recordTimer);
    this.recordTimer = null;
  }

  /**
   * Set the file's size (truncate(2), ftruncate(2), O_TRUNC, fallocate's growth). A real metanode ignores a
   * truncate that extends a file it has never recorded an extent for (the inode has no extent list yet, and
   * it answers Ok all the same: upstream's client loses that size too, once its cache expires). What it
   * does honour is an extent key: such a file gets one zero byte at its new end, in a tiny extent, whose
   * key sets the size. Any other truncate is the metanode's.
   */
  async truncate(size: number): Promise<void> {
    await this.flush();
    await this.load();
    if (size > this.fileSize && this.keys.length === 0) {
      const deadline = Date.now() + this.core.retryBudgetMs;
      const { piece } = newPiece(size - 1, Buffer.alloc(1), false, deadline);
      try {
        const key = await tinyWrite(this.core, piece);
        await this.serial(() => this.host.meta.appendExtentKey(this.ino, key));
      } catch (e) {
        if (!(e instanceof NoTinyExtent)) throw asWriteFailure(e);
        await this.write(size - 1, Buffer.alloc(1));
        await this.flush();
      }
      this.truncated(size);
    } else {
      // In the chain: a periodic recording of a key beyond `size` must not land after the truncate.
      await this.serial(async () => {
        await this.host.meta.truncate(this.ino, size);
        this.truncated(size);
      });
    }
  }

  /** The file was truncated at the metanode: forget what lies beyond `size`; reload on next use. */
  truncated(size: number): void {
    this.submitStage(); // the caller flushed first; a stage opened since is sent before the truncate settles
    this.keys = truncateKeys(this.keys, size);
    for (const [t, k] of [...this.dirty.entries()]) {
      if (k.FileOffset >= size) this.dirty.delete(t);
      else if (keyEnd(k) > size) this.dirty.set(t, { ...k, Size: size - k.FileOffset });
    }
    this.fileSize = size;
    this.retireHandler();
    this.loaded = false;
  }

  /** Flush, then drop one reference; the last one closes this stream's extent writers. */
  async release(): Promise<void> {
    try {
      await this.flush();
    } finally {
      this.refs--;
      if (this.refs <= 0) this.shutdown();
    }
  }

  /** Close every writer's connection once its pieces settle. */
  shutdown(): void {
    this.disarmRecorder();
    this.submitStage();
    this.retireHandler();
    for (const w of this.writers) w.retire();
    this.writers.clear();
    this.host.forget(this);
  }

  onAck(token: object, piece: ExtentKey, whole: ExtentKey): void {
    insertKey(this.keys, piece);
    this.dirty.set(token, whole);
    this.fileSize = Math.max(this.fileSize, keyEnd(piece));
    this.armRecorder();
  }

  onReplace(old: ExtentWriter, next: ExtentWriter): void {
    this.writers.delete(old);
    this.writers.add(next);
    if (this.handler === old) this.handler = next;
  }

  private retireHandler(): void {
    if (this.handler) this.handler.retire();
    this.handler = null;
  }

  private async waitInflight(start: number, end: number): Promise<void> {
    for (;;) {
      const hit = [...this.inflight].filter((r) => overlaps(r, start, end));
      if (hit.length === 0) return;
      await Promise.all(hit.map((r) => r.done));
    }
  }

  private append(fileOffset: number, data: Buffer, sync: boolean, deadline: number): Promise<void>[] {
    const out: Promise<void>[] = [];
    let o = 0;
    while (o < data.length) {
      let h = this.handler;
      if (!h || !h.usable || h.nextFileOffset !== fileOffset + o) {
        this.retireHandler();
        h = new ExtentWriter(this, fileOffset + o, [], undefined, this.resumeAt(fileOffset + o));
        this.handler = h;
        this.writers.add(h);
      }
      // Over RDMA a piece may be larger than a TCP packet; a writer that ends up on TCP splits it.
      const n = Math.min(this.core.rdma?.maxPiece ?? MAX_PACKET_DATA, data.length - o, h.remaining);
      const { piece, done } = newPiece(fileOffset + o, data.subarray(o, o + n), sync, deadline);
      h.push(piece);
      out.push(done);
      o += n;
    }
    return out;
  }

  /**
   * An append at `at` right behind a recorded normal-extent key goes on in that extent (upstream's
   * tryInitExtentHandlerByLastEk), when its partition takes writes and the extent has room.
   */
  private resumeAt(at: number): ResumeAt | undefined {
    const k = keyEndingAt(this.keys, at);
    if (!k || k.ExtentId <= TINY_EXTENT_MAX_ID) return undefined;
    const dp = this.core.parts.current(k.PartitionId);
    const extentOffset = k.ExtentOffset + k.Size;
    if (!dp || dp.Status !== PartitionStatus.ReadWrite || dp.Hosts.length === 0 || extentOffset >= EXTENT_SIZE_LIMIT) return undefined;
    return { dp, extentId: k.ExtentId, extentOffset };
  }

  /**
   * A small hole at offset 0, to a tiny extent as one packet (upstream's tiny ExtentHandler). When the
   * datanode has no tiny extent to give (DiskNoSpace "no available extent", as a fresh upstream node
   * answers), it goes to a normal extent instead, as upstream's client does.
   */
  private async writeTiny(data: Buffer, sync: boolean, deadline: number): Promise<void> {
    const { piece } = newPiece(0, data, sync, deadline);
    let key: ExtentKey;
    try {
      key = await tinyWrite(this.core, piece);
    } catch (e) {
      if (!(e instanceof NoTinyExtent)) throw e;
      await Promise.all(this.append(0, data, sync, deadline));
      return;
    }
    this.onAck({}, key, key);
  }
}

function overlaps(r: Range, start: number, end: number): boolean {
  return r.start < end && start < r.end;
}

async function runLimited(jobs: (() => Promise<void>)[], limit: number): Promise<void> {
  let next = 0;
  let failed: unknown = null;
  const worker = async (): Promise<void> => {
    while (next < jobs.length && failed === null) {
      const j = jobs[next++]!;
      try {
        await j();
      } catch (e) {
        failed ??= e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, jobs.length) }, worker));
  if (failed !== null) throw failed;
}
