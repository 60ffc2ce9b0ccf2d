/**
 * Choosing data partitions for new extents, with a short exclusion list, and the state and retry helpers
 * the data path shares (DataCore).
 *
 * A partition that failed a write is excluded for EXCLUDE_MS. When every read-write partition is
 * excluded the selector waits (growing, bounded by the caller's deadline), refreshes the source and
 * forgets the exclusions: a datanode that was down may be back.
 */
import { constants as osc } from 'node:os';
import { PartitionStatus, Result, resultRetryable, type DataPartitionView, type Packet } from '../proto/index.js';
import type { CheckoutPool } from '../transport/checkout-pool.js';
import type { RdmaPath } from './rdma.js';
import type { Router } from './route.js';
import { CubeFSError, ErrorCode, sleep } from '../util/errors.js';
import { logger, warn } from '../util/log.js';

export const log = logger('data');

const EXCLUDE_MS = 5_000;

export interface DataPartitionSource {
  dataPartitions(): DataPartitionView[];
  refresh(): Promise<void>;
}

/** What the writers and readers of every stream share (owned by DataClient). */
export interface DataCore {
  /** TCP connections to datanodes, one user at a time (upstream's StreamConnPool). */
  readonly conns: CheckoutPool;
  /** Leaders, host health, follower read: where a request goes (route.ts). */
  readonly route: Router;
  readonly timeoutMs: number;
  readonly retryBudgetMs: number;
  /** Keys of acknowledged writes are recorded at least this often while a file is written (0: only at flush). */
  readonly flushIntervalMs: number;
  readonly tinyExtents: boolean;
  readonly parts: PartitionSelector;
  /** Writes (normal extents, overwrites) and reads go over RDMA to datanodes it connects to; null: TCP. */
  readonly rdma: RdmaPath | null;
  /** Data requests over TCP, counted when there is no RDMA path (which counts its own). */
  readonly tcpCounters: { writes: number; reads: number };
  /** Write-behind (FileStream staging): small writes gathered, and the gathered runs sent. */
  readonly staging: { writes: number; bytes: number; submits: number };
  /** Staging buffers (without RDMA) kept for reuse: a random 4 KiB write opens a stage of its own each time. */
  readonly spareStages: Buffer[];
}

/** Count one TCP data request. */
export function countTcp(core: DataCore, kind: 'writes' | 'reads'): void {
  if (core.rdma) core.rdma.counters[kind === 'writes' ? 'tcpWrites' : 'tcpReads']++;
  else core.tcpCounters[kind]++;
}

export class PartitionSelector {
  private readonly excluded = new Map<number, number>();
  /** Partitions that answered DiskNoSpace, until when. */
  private readonly full = new Map<number, number>();
  private rr = Math.floor(Math.random() * 1024);

  constructor(private readonly source: DataPartitionSource) {}

  /** Leave `pid` out of new extents for a while; `full`: it answered DiskNoSpace. */
  exclude(pid: number, full = false): void {
    const until = Date.now() + EXCLUDE_MS;
    this.excluded.set(pid, until);
    if (full) this.full.set(pid, until);
  }

  /**
   * A read-write partition not excluded; waits and refreshes while there is none, until `deadline`. When
   * every read-write partition answered DiskNoSpace lately, the cluster is full: ENOSPC at once, no wait.
   */
  async pick(deadline: number, lastErr?: Error): Promise<DataPartitionView> {
    for (let attempt = 0; ; attempt++) {
      const now = Date.now();
      const rw = this.source.dataPartitions().filter((p) => p.Status === PartitionStatus.ReadWrite && p.Hosts.length > 0);
      const ok = rw.filter((p) => (this.excluded.get(p.PartitionID) ?? 0) <= now);
      if (ok.length > 0) return ok[this.rr++ % ok.length]!;
      if (rw.length > 0 && rw.every((p) => (this.full.get(p.PartitionID) ?? 0) > now)) {
        warn('data', `every data partition is full (${rw.length}): new data fails with ENOSPC; overwrites and reads go on`, { key: 'data-full' });
        throw new CubeFSError(ErrorCode.NoPartition, `every read-write data partition is full (${rw.length}; last: ${lastErr?.message ?? 'DiskNoSpace'})`, {
          errno: osc.errno.ENOSPC, cause: lastErr,
        });
      }
      if (attempt === 1) {
        warn('data', rw.length === 0 ? 'no data partition takes writes now (datanodes down or read-only); writes wait'
          : `no data partition answers writes now (${lastErr?.message ?? 'unreachable'}); writes wait`, { key: 'data-wait' });
      }
      if (now >= deadline) {
        const why = rw.length === 0 ? 'no read-write data partition' : `all ${rw.length} read-write data partitions failed`;
        throw new CubeFSError(ErrorCode.NoPartition, `${why}${lastErr ? `; last error: ${lastErr.message}` : ''}`, {
          errno: (lastErr as CubeFSError | undefined)?.errno ?? undefined, cause: lastErr,
        });
      }
      await sleep(Math.min(backoffMs(attempt), Math.max(1, deadline - now)));
      await this.source.refresh().catch((e: Error) => log('refresh data partitions: %s', e.message));
      if (rw.length > 0) this.excluded.clear();
    }
  }

  /** The view of partition `pid` as last fetched, or undefined. */
  current(pid: number): DataPartitionView | undefined {
    return this.source.dataPartitions().find((p) => p.PartitionID === pid);
  }

  /** The view of partition `pid`, refreshing the source once if it is not known. */
  async get(pid: number): Promise<DataPartitionView> {
    let dp = this.source.dataPartitions().find((p) => p.PartitionID === pid);
    if (!dp) {
      await this.source.refresh().catch((e: Error) => log('refresh data partitions: %s', e.message));
      dp = this.source.dataPartitions().find((p) => p.PartitionID === pid);
    }
    if (!dp) throw new CubeFSError(ErrorCode.NoPartition, `data partition ${pid} is not in the volume view`);
    return dp;
  }

  refresh(): Promise<void> {
    return this.source.refresh();
  }
}

export function backoffMs(attempt: number): number {
  return Math.min(100 * 2 ** attempt, 2_000);
}

/** "h1:p/h2:p/": the followers of a partition, as upstream's client puts them in Arg of appends. */
export function followerArg(dp: DataPartitionView): Buffer {
  return Buffer.from(dp.Hosts.slice(1).map((h) => `${h}/`).join(''));
}

/** RemainingFollowers of a leader request: replicas - 1, or 127 for a single replica (upstream's marker). */
export function remainingFollowers(dp: DataPartitionView): number {
  const n = Math.max(dp.ReplicaNum || dp.Hosts.length, 1) - 1;
  return n > 0 ? n : 127;
}

/** An error reply as a CubeFSError; `retryable` as upstream's data client treats the code. */
export function replyError(p: Packet, what: string): CubeFSError {
  const text = p.data.length > 0 ? p.data.toString('utf8') : undefined;
  return CubeFSError.fromResult(p.resultCode, what, text, resultRetryable(p.resultCode) || p.resultCode === Result.IntraGroupNet);
}

/** The datanode (or the cluster) has no room: DiskNoSpace, NoSpace, ENOSPC. */
export function isDiskFull(e: unknown): boolean {
  if (!(e instanceof CubeFSError)) return false;
  return e.result === Result.DiskNoSpace || e.result === Result.NoSpace || e.errno === osc.errno.ENOSPC;
}

export function isRetryable(e: unknown): boolean {
  return e instanceof CubeFSError ? e.retryable : true;
}
