/**
 * A registered-memory pool for the RDMA tests (src/pool's Pool): buffers from alloc() are views of the
 * pool's region; free() gives them back.
 */
import { Pool } from '../../src/pool/index.js';

export type TestPool = Pool;

export function newPool(capacity = 16 << 20): Pool {
  return new Pool({ capacity });
}

export function mustAlloc(pool: Pool, size: number): Buffer {
  return pool.alloc(size);
}
