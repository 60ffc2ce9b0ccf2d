/**
 * The registered-memory pool (native/pool): one mmap'd region, a buddy allocator of power-of-two blocks
 * (minBlock 4 KiB .. maxBlock 4 MiB by default), shared by FUSE receive buffers and, with RDMA, registered
 * once per protection domain.
 *
 * A buffer from `alloc` is a Buffer of exactly the requested length over pool memory (no copy). It belongs
 * to the caller until `free(buf)`, which detaches it (length 0 from then on: a stale reference cannot reach
 * the recycled block) and returns the block; freeing it again returns false. A buffer dropped without free
 * goes back when it is garbage-collected. `close()` detaches and returns every live buffer, fails the
 * waiters and refuses later allocations; blocks a FUSE session still holds stay valid until it lets go.
 *
 * Errors are PoolError with a stable code: ENOMEM (exhausted: no block within the wait), EINVAL (a size
 * outside 1..maxBlock, a buffer this pool did not hand out), ESHUTDOWN (closed).
 */
import { constants } from 'node:os';
import { loadAddon } from '../util/addon.js';

const E = constants.errno;
/** Linux errno values (node's typings lack ESHUTDOWN). */
const ERRNO: Record<'ENOMEM' | 'EINVAL' | 'ESHUTDOWN', number> = { ENOMEM: E.ENOMEM, EINVAL: E.EINVAL, ESHUTDOWN: 108 };
const KiB = 1024;
const MiB = 1024 * KiB;

export interface PoolOptions {
  /** Bytes in the region; rounded up to a multiple of maxBlock. */
  capacity: number;
  /** Smallest block (a power of two >= 4 KiB; default 4 KiB). */
  minBlock?: number;
  /** Largest block (a power of two >= minBlock; default 4 MiB). */
  maxBlock?: number;
}

export interface PoolStats {
  capacity: number;
  minBlock: number;
  maxBlock: number;
  /** Bytes of allocated blocks (rounded sizes), whoever holds them (JS, FUSE workers, requests). */
  inUseBytes: number;
  inUseBlocks: number;
  peakBytes: number;
  allocs: number;
  frees: number;
  /** Allocations that gave up: exhausted past their wait, out of range, or after close. */
  failed: number;
  /** Allocations that had to wait for a free. */
  waits: number;
  /** The largest block an allocation could get right now. */
  largestFree: number;
  /** Buffers handed to JS and not yet freed or collected. */
  jsBuffers: number;
  /** FUSE receive buffers that came from the default allocator because the pool had no block. */
  receiveFallbacks: number;
  closed: boolean;
}

export type PoolErrorCode = 'ENOMEM' | 'EINVAL' | 'ESHUTDOWN';

export class PoolError extends Error {
  readonly code: PoolErrorCode;
  readonly errno: number;
  /** The pool's counters when the allocation failed. */
  readonly stats?: PoolStats;
  constructor(code: PoolErrorCode, message: string, stats?: PoolStats, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'PoolError';
    this.code = code;
    this.errno = ERRNO[code];
    if (stats !== undefined) this.stats = stats;
  }
}

/** The outcome of Pool._stress: `violations` must be 0 (`first` describes the first one). */
export interface StressResult { allocs: number; failed: number; violations: number; first: string }

/** The outcome of Pool._rdmaSelfTest. */
export interface RdmaProbe {
  device: string;
  lkey: number;
  rkey: number;
  length: number;
  coversPool: boolean;
  sameMrTwice: boolean;
  mrForMatches: boolean;
  deregistered: boolean;
  pdFreed: boolean;
}

/** An opaque handle FuseSession passes to the native mount (keeps the pool's allocator alive). */
export type ReceiveAllocatorHandle = { readonly __receiveAllocator: unique symbol };

interface NativePool {
  alloc(size: number, waitMs: number): Buffer;
  allocAsync(size: number, waitMs: number): Promise<Buffer>;
  free(buf: Uint8Array): boolean;
  contains(buf: Uint8Array): boolean;
  stats(): PoolStats;
  close(): void;
  receiveAllocator(): ReceiveAllocatorHandle;
  _stress(threads: number, iterations: number, waitMs: number): StressResult;
  _rdmaSelfTest(device?: string): RdmaProbe;
}
interface Addon {
  Pool: new (capacity: number, minBlock: number, maxBlock: number) => NativePool;
  rdmaDevices(): string[];
}

let addon: Addon | null = null;
function poolAddon(): Addon {
  addon ??= loadAddon() as unknown as Addon;
  return addon;
}

const isPow2 = (n: number): boolean => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;

function wrap(e: unknown): Error {
  const x = e as { code?: string; message?: string; stats?: PoolStats };
  if (x?.code === 'ENOMEM' || x?.code === 'EINVAL' || x?.code === 'ESHUTDOWN') {
    return new PoolError(x.code, x.message ?? x.code, x.stats, e);
  }
  return e instanceof Error ? e : new Error(String(e));
}

export class Pool {
  readonly capacity: number;
  readonly minBlock: number;
  readonly maxBlock: number;
  private readonly native: NativePool;
  private isClosed = false;

  constructor(opts: PoolOptions) {
    const minBlock = opts.minBlock ?? 4 * KiB;
    const maxBlock = opts.maxBlock ?? 4 * MiB;
    if (!isPow2(minBlock) || minBlock < 4 * KiB) throw new PoolError('EINVAL', `minBlock must be a power of two >= 4096 (got ${minBlock})`);
    if (!isPow2(maxBlock) || maxBlock < minBlock || maxBlock > 2 ** 30) {
      throw new PoolError('EINVAL', `maxBlock must be a power of two, minBlock..1 GiB (got ${maxBlock})`);
    }
    if (!Number.isSafeInteger(opts.capacity) || opts.capacity <= 0) {
      throw new PoolError('EINVAL', `capacity must be a positive integer (got ${opts.capacity})`);
    }
    try {
      this.native = new (poolAddon().Pool)(opts.capacity, minBlock, maxBlock);
    } catch (e) {
      throw wrap(e);
    }
    this.minBlock = minBlock;
    this.maxBlock = maxBlock;
    this.capacity = this.native.stats().capacity;
  }

  private checkSize(size: number, waitMs: number): void {
    if (!Number.isSafeInteger(size) || size < 1 || size > this.maxBlock) {
      throw new PoolError('EINVAL', `pool alloc of ${size} bytes: the size must be an integer 1..${this.maxBlock} (maxBlock)`);
    }
    if (!Number.isInteger(waitMs) || waitMs < 0 || waitMs > 2 ** 31) throw new PoolError('EINVAL', `waitMs must be an integer >= 0 (got ${waitMs})`);
  }

  /**
   * A buffer of exactly `size` bytes. With waitMs 0 it fails at once when the pool is exhausted; otherwise it
   * waits up to waitMs for a free BLOCKING THIS THREAD (on the main thread use allocAsync).
   */
  alloc(size: number, waitMs = 0): Buffer {
    this.checkSize(size, waitMs);
    try {
      return this.native.alloc(size, waitMs);
    } catch (e) {
      throw wrap(e);
    }
  }

  /** As alloc, waiting on a libuv pool thread: resolves to the buffer or rejects with a PoolError. */
  async allocAsync(size: number, waitMs = 0): Promise<Buffer> {
    this.checkSize(size, waitMs);
    try {
      return await this.native.allocAsync(size, waitMs);
    } catch (e) {
      throw wrap(e);
    }
  }

  /** Returns `buf`'s block and detaches `buf`. False if it was already freed; PoolError EINVAL if foreign. */
  free(buf: Uint8Array): boolean {
    if (!(buf instanceof Uint8Array)) throw new TypeError('pool.free(buffer): a Buffer from this pool');
    try {
      return this.native.free(buf);
    } catch (e) {
      throw wrap(e);
    }
  }

  /**
   * True when every byte of `buf` lies inside this pool's region: a pool buffer or a view inside one (a FUSE
   * write payload in a receive buffer). RDMA sends such a buffer by descriptor; anything else is copied first.
   */
  contains(buf: Uint8Array): boolean {
    if (this.isClosed || !(buf instanceof Uint8Array) || buf.length === 0) return false;
    return this.native.contains(buf);
  }

  stats(): PoolStats { return this.native.stats(); }

  /** Idempotent. */
  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.native.close();
  }

  get closed(): boolean { return this.isClosed; }

  /** @internal For FuseSession: the native receive-buffer allocator over this pool. */
  receiveAllocator(): ReceiveAllocatorHandle {
    if (this.isClosed) throw new PoolError('ESHUTDOWN', 'pool is closed');
    return this.native.receiveAllocator();
  }

  /** @internal Test hook: `threads` native threads alloc, fill, verify and free `iterations` times each. */
  _stress(threads: number, iterations: number, waitMs = 2): StressResult {
    return this.native._stress(threads, iterations, waitMs);
  }

  /** @internal Test hook: open an RDMA device, register this pool in a new PD, then tear it all down. */
  _rdmaSelfTest(device?: string): RdmaProbe {
    return this.native._rdmaSelfTest(device);
  }
}

/** The verbs devices libibverbs sees (empty on a host without RDMA). */
export function rdmaDevices(): string[] {
  return poolAddon().rdmaDevices();
}
