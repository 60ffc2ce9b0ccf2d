/**
 * DataClient: the data half of the SDK. Owns the datanode connections (a CheckoutPool: one user per
 * connection at a time, as upstream's), the router (leaders, host health, follower read), the partition
 * selector and one FileStream per open inode (refcounted: open() adds a reference, FileStream.release()
 * drops one). close() flushes every open stream, then closes what it owns.
 */
import { constants as os } from 'node:os';
import { CheckoutPool, type CheckoutStats } from '../transport/checkout-pool.js';
import { CubeFSError, ErrorCode } from '../util/errors.js';
import { RdmaPath, type DataTransportStats, type RdmaPathOptions } from './rdma.js';
import { PartitionSelector, type DataCore, type DataPartitionSource } from './partitions.js';
import { Router } from './route.js';
import { FileStream, type ExtentMetaOps, type StreamHost } from './stream.js';
import { log } from './partitions.js';
import { warn } from '../util/log.js';
import { settledWithin } from '../util/settle.js';

export interface DataClientOptions {
  source: DataPartitionSource;
  meta: ExtentMetaOps;
  /** Deadline of one request; default 30 s. */
  timeoutMs?: number;
  /** How long a write or read keeps retrying (other partitions, other hosts); default 60 s. */
  retryBudgetMs?: number;
  /**
   * How often the extent keys of acknowledged writes to a file still open are recorded at the metanode
   * (besides fsync and close), which bounds what a killed client process loses; default 2000 (upstream's
   * streamer looks every 2 s), 0: never.
   */
  flushIntervalMs?: number;
  /** Small first writes go to tiny extents; default true. */
  tinyExtents?: boolean;
  /** The RDMA path (docs/rdma.md): built from these options (RdmaPath.create), or given. Default: TCP. */
  rdma?: RdmaPathOptions | RdmaPath | null;
  /** Reads with StreamFollowerRead from any replica (upstream's followerRead; route.ts). */
  followerRead?: boolean;
  /** With followerRead, the nearest replica first (upstream's nearRead). */
  nearRead?: boolean;
  /** Idle connections kept per datanode (default 16; each closed after 30 s unused). */
  maxIdleConns?: number;
}

export class DataClient implements StreamHost {
  readonly core: DataCore;
  readonly meta: ExtentMetaOps;
  private readonly streams = new Map<number, FileStream>();
  private closed = false;
  /** TCP data requests when there is no RDMA path (DataCore.tcp). */
  private get tcp(): { writes: number; reads: number } { return this.core.tcpCounters; }

  constructor(opts: DataClientOptions) {
    this.meta = opts.meta;
    const route = new Router({ followerRead: opts.followerRead ?? false, nearRead: opts.nearRead ?? false });
    this.core = {
      conns: new CheckoutPool({
        ...(opts.maxIdleConns !== undefined ? { maxIdle: opts.maxIdleConns } : {}),
        onConnectError: (addr) => route.hostDown(addr),
      }),
      route,
      timeoutMs: opts.timeoutMs ?? 30_000,
      retryBudgetMs: opts.retryBudgetMs ?? 60_000,
      flushIntervalMs: opts.flushIntervalMs ?? 2000,
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

  /** TCP connections to datanodes: opened, reused from the pool, closed after something went wrong. */
  connStats(): CheckoutStats {
    return this.core.conns.stats();
  }

  /** Routing: TryOtherAddr answers, requests another host served, rounds that slept before retrying. */
  routeStats(): { tryOtherAddr: number; failovers: number; backoffs: number } {
    return { ...this.core.route.counters };
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

  /** Set the size of `ino` (FileStream.truncate), through its open stream or one opened for the purpose. */
  async truncate(ino: number, size: number): Promise<void> {
    const s = this.open(ino);
    try {
      await s.truncate(size);
    } finally {
      await s.release().catch((e: Error) => log('truncate of inode %d: release: %s', ino, e.message));
    }
  }

  forget(s: FileStream): void {
    if (this.streams.get(s.ino) === s) this.streams.delete(s.ino);
  }

  /**
   * Flush every open stream (all at once), then close the connections. `waitMs` bounds the wait (default:
   * each flush's own retry budget): what is not recorded by then is said, by inode, and lost.
   */
  async close(opts: { waitMs?: number } = {}): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const streams = [...this.streams.values()];
    const unrecorded = new Set(streams.map((s) => s.ino));
    const flushes = streams.map(async (s) => {
      try {
        await s.flush();
        unrecorded.delete(s.ino);
      } catch (e) {
        warn('data', `close: inode ${s.ino}: its latest writes could not be recorded (${(e as Error).message})`);
      }
      s.shutdown();
    });
    if (opts.waitMs === undefined) await Promise.all(flushes);
    else if (!(await settledWithin(flushes, opts.waitMs)) && unrecorded.size > 0) {
      warn('data', `close: gave up after ${opts.waitMs / 1000} s: writes since the last fsync to inodes ${[...unrecorded].join(', ')} are lost`);
      for (const s of streams) s.shutdown();
    }
    this.core.conns.close();
    this.core.rdma?.close();
  }
}
