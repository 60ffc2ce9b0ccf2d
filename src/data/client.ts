/**
 * DataClient: the data half of the SDK. Owns the connection pool (unless handed one), the partition
 * selector and one FileStream per open inode (refcounted: open() adds a reference, FileStream.release()
 * drops one). close() flushes every open stream, then closes what it owns.
 */
import { constants as os } from 'node:os';
import { ConnPool } from '../transport/tcp.js';
import { CubeFSError, ErrorCode } from '../util/errors.js';
import { RdmaPath, type DataTransportStats, type RdmaPathOptions } from './rdma.js';
import { PartitionSelector, type DataCore, type DataPartitionSource } from './partitions.js';
import { FileStream, type ExtentMetaOps, type StreamHost } from './stream.js';
import { log } from './partitions.js';

export interface DataClientOptions {
  source: DataPartitionSource;
  meta: ExtentMetaOps;
  pool?: ConnPool;
  /** Deadline of one request; default 30 s. */
  timeoutMs?: number;
  /** How long a write or read keeps retrying (other partitions, other hosts); default 60 s. */
  retryBudgetMs?: number;
  /** Small first writes go to tiny extents; default true. */
  tinyExtents?: boolean;
  /** The RDMA path (docs/rdma.md): built from these options (RdmaPath.create), or given. Default: TCP. */
  rdma?: RdmaPathOptions | RdmaPath | null;
}

export class DataClient implements StreamHost {
  readonly core: DataCore;
  readonly meta: ExtentMetaOps;
  private readonly ownPool: boolean;
  private readonly streams = new Map<number, FileStream>();
  private closed = false;
  /** TCP data requests when there is no RDMA path (DataCore.tcp). */
  private get tcp(): { writes: number; reads: number } { return this.core.tcpCounters; }

  constructor(opts: DataClientOptions) {
    this.ownPool = !opts.pool;
    this.meta = opts.meta;
    this.core = {
      pool: opts.pool ?? new ConnPool(8),
      timeoutMs: opts.timeoutMs ?? 30_000,
      retryBudgetMs: opts.retryBudgetMs ?? 60_000,
      tinyExtents: opts.tinyExtents ?? true,
      tcpCounters: { writes: 0, reads: 0 },
      staging: { writes: 0, bytes: 0, submits: 0 },
      spareStages: [],
      parts: new PartitionSelector(opts.source),
      rdma: opts.rdma instanceof RdmaPath ? opts.rdma : opts.rdma ? RdmaPath.create(opts.rdma) : null,
    };
  }

  /** What moved how: RDMA and TCP requests, payload copies, fallbacks, the pool's bytes in use. */
  stats(): DataTransportStats {
    const r = this.core.rdma;
    const c = r?.counters ?? { payloadCopies: 0, rdmaWrites: 0, rdmaReads: 0, tcpWrites: 0, tcpReads: 0, rdmaErrors: 0, tcpFallbacks: 0 };
    const st = this.core.staging;
    return { transport: r ? 'rdma' : 'tcp', ...c, ...this.tcpCounters(), stagedWrites: st.writes, stagedBytes: st.bytes, stageSubmits: st.submits, poolInUse: r && !r.pool.closed ? r.pool.stats().inUseBytes : 0 };
  }

  private tcpCounters(): { tcpWrites: number; tcpReads: number } {
    const r = this.core.rdma;
    return r ? { tcpWrites: r.counters.tcpWrites, tcpReads: r.counters.tcpReads } : { tcpWrites: this.tcp.writes, tcpReads: this.tcp.reads };
  }

  /** The shared stream of `ino`, with one more reference. */
  open(ino: number): FileStream {
    if (this.closed) throw new CubeFSError(ErrorCode.Closed, 'DataClient is closed', { errno: os.errno.EBADF });
    let s = this.streams.get(ino);
    if (!s) {
      s = new FileStream(this, ino);
      this.streams.set(ino, s);
    }
    s.refs++;
    return s;
  }

  /** The open stream of `ino`, if any, without taking a reference (stat and truncate consult it). */
  peek(ino: number): FileStream | undefined {
    return this.streams.get(ino);
  }

  forget(s: FileStream): void {
    if (this.streams.get(s.ino) === s) this.streams.delete(s.ino);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const s of [...this.streams.values()]) {
      await s.flush().catch((e: Error) => log('close: flush of inode %d failed: %s', s.ino, e.message));
      s.shutdown();
    }
    if (this.ownPool) this.core.pool.close();
    this.core.rdma?.close();
  }
}
