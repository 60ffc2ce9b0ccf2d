/**
 * A registered-memory pool for the RDMA tests: the addon's Pool (until branch rdma-pool lands, the stand-in
 * in native/pool). Buffers from alloc() are views of the pool's region; free() gives them back.
 */
import { loadAddon } from '../../src/util/addon.js';

export interface TestPool {
  alloc(size: number, waitMs?: number): Buffer | null;
  free(buf: Uint8Array): boolean;
  stats(): { capacity: number; inUseBytes: number; inUseBlocks: number; failed: number };
  close(): void;
}

export function newPool(capacity = 16 << 20): TestPool {
  const Pool = loadAddon().Pool as new (capacity: number) => TestPool;
  return new Pool(capacity);
}

export function mustAlloc(pool: TestPool, size: number): Buffer {
  const b = pool.alloc(size);
  if (!b) throw new Error(`pool: no ${size}-byte block free`);
  return b;
}
