import t from 'tap';
import os from 'node:os';
import v8 from 'node:v8';
import vm from 'node:vm';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { Pool, PoolError, rdmaDevices } from '../../src/pool/index.js';
import { FuseSession } from '../../src/fuse/session.js';
import { NullFs } from '../../src/fuse/nullfs.js';
import { scratchMount, until } from '../support/wait.js';

type TT = Parameters<Parameters<typeof t.test>[0]>[0];

const run = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;

/** A pool closed in teardown, whose in-use counter must be back to 0 by then. */
function pool(t: TT, capacity: number, maxBlock?: number): Pool {
  const p = new Pool({ capacity, ...(maxBlock ? { maxBlock } : {}) });
  t.teardown(() => p.close());
  return p;
}
function idle(t: TT, p: Pool, what = 'nothing in use at the end'): void {
  const s = p.stats();
  t.same({ inUseBytes: s.inUseBytes, inUseBlocks: s.inUseBlocks, jsBuffers: s.jsBuffers }, { inUseBytes: 0, inUseBlocks: 0, jsBuffers: 0 }, what);
}

/** A deterministic generator (xorshift32) so a failure replays. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x;
  };
}
function shuffle<T>(a: T[], r: () => number): T[] {
  for (let i = a.length - 1; i > 0; i--) {
    const j = r() % (i + 1);
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}
/** Fills buf with a pattern derived from id (its first 4 bytes are id itself). */
function fill(buf: Buffer, id: number): void {
  buf.fill((id * 31 + 7) & 0xff);
  if (buf.length >= 4) buf.writeUInt32LE(id, 0);
}
function intact(buf: Buffer, id: number): boolean {
  if (buf.length >= 4 && buf.readUInt32LE(0) !== id) return false;
  const b = (id * 31 + 7) & 0xff;
  for (let i = Math.min(4, buf.length); i < buf.length; i++) if (buf[i] !== b) return false;
  return true;
}
const blockOf = (size: number): number => Math.max(4 * KiB, 2 ** Math.ceil(Math.log2(size)));

t.test('split and merge: the whole pool in 4 KiB blocks, freed in random order, merges back to 4 MiB blocks', async (t) => {
  const p = pool(t, 8 * MiB);
  t.equal(p.capacity, 8 * MiB, 'capacity');
  t.equal(p.stats().largestFree, 4 * MiB, 'starts as 4 MiB blocks');
  const bufs: Buffer[] = [];
  for (let i = 0; i < 2048; i++) bufs.push(p.alloc(4 * KiB));
  t.equal(p.stats().inUseBytes, 8 * MiB, 'all 2048 blocks out');
  t.equal(p.stats().largestFree, 0, 'nothing left');
  t.throws(() => p.alloc(1), { code: 'ENOMEM' }, 'one more fails');
  bufs.forEach((b, i) => fill(b, i));
  t.ok(bufs.every((b, i) => intact(b, i)), 'no two blocks overlap (every pattern intact)');
  const order = shuffle(bufs.map((_, i) => i), rng(42));
  for (const i of order.slice(0, 1024)) p.free(bufs[i]!);
  t.equal(p.stats().inUseBlocks, 1024, 'half freed');
  t.ok(order.slice(1024).every((i) => intact(bufs[i]!, i)), 'the live half is untouched');
  for (const i of order.slice(1024)) t.equal(p.free(bufs[i]!), true, `free ${i}`, { diagnostic: false });
  t.equal(p.stats().largestFree, 4 * MiB, 'merged back: a 4 MiB block is free');
  const big = [p.alloc(4 * MiB), p.alloc(4 * MiB)];
  t.equal(big[0]!.length + big[1]!.length, 8 * MiB, 'both 4 MiB blocks are allocatable again');
  big.forEach((b, i) => { fill(b, i); });
  t.ok(big.every((b, i) => intact(b, i)), 'and disjoint');
  big.forEach((b) => p.free(b));
  const s = p.stats();
  t.equal(s.allocs, s.frees, 'allocs == frees');
  idle(t, p);
});

t.test('fragmentation: random alloc/free rounds keep live blocks disjoint and the counters exact', async (t) => {
  const p = pool(t, 16 * MiB, MiB);
  const r = rng(7);
  const live = new Map<number, Buffer>();
  let id = 0, failed = 0, checked = 0;
  for (let round = 0; round < 4000; round++) {
    if (live.size === 0 || r() % 100 < 55) {
      const size = 1 + (r() % 100 < 80 ? r() % (64 * KiB) : r() % MiB);
      try {
        const b = p.alloc(size);
        if (b.length !== size) t.fail(`alloc(${size}) gave ${b.length} bytes`);
        fill(b, ++id);
        live.set(id, b);
      } catch (e) {
        if (!(e instanceof PoolError) || e.code !== 'ENOMEM') throw e;
        failed++;
      }
    } else {
      const keys = [...live.keys()];
      const k = keys[r() % keys.length]!;
      const b = live.get(k)!;
      if (!intact(b, k)) t.fail(`block ${k} (${b.length} bytes) was overwritten by another block`);
      checked++;
      p.free(b);
      live.delete(k);
    }
    if (round % 500 === 0) {
      const s = p.stats();
      const bytes = [...live.values()].reduce((n, b) => n + blockOf(b.length), 0);
      t.same([s.inUseBlocks, s.inUseBytes, s.allocs - s.frees], [live.size, bytes, live.size], `round ${round}: counters match the live set`);
    }
  }
  t.ok(checked > 1000, `${checked} blocks verified intact before free (${failed} allocations found the pool full)`);
  t.ok([...live].every(([k, b]) => intact(b, k)), 'every live block intact at the end');
  t.equal(p.stats().failed, failed, 'failed counter = failed allocations');
  t.ok(p.stats().peakBytes <= p.capacity, 'peak within capacity');
  for (const b of live.values()) p.free(b);
  t.equal(p.stats().largestFree, MiB, 'everything merged back to maxBlock');
  idle(t, p);
});

t.test('threads: 8 native threads alloc, fill, verify and free at once with no violation', async (t) => {
  const p = pool(t, 16 * MiB);
  const res = p._stress(8, 20000, 2);
  t.equal(res.violations, 0, `no overlap, bad block or refused free${res.first ? `: ${res.first}` : ''}`);
  t.ok(res.allocs > 50000, `${res.allocs} allocations (${res.failed} found the pool full)`);
  const s = p.stats();
  t.equal(s.allocs, s.frees, 'allocs == frees');
  t.equal(s.failed, res.failed, 'the failed counter is exact under contention');
  t.ok(s.peakBytes <= s.capacity, 'peak within capacity');
  t.equal(s.largestFree, 4 * MiB, 'merged back to 4 MiB blocks');
  idle(t, p);
});

t.test('exhaustion: fails at once, waits for a free within the deadline, fails clearly after it', async (t) => {
  const p = pool(t, 4 * MiB);
  const all = p.alloc(4 * MiB);
  const before = p.stats();
  const e = (() => { try { p.alloc(4 * KiB); } catch (x) { return x as PoolError; } return null; })();
  t.ok(e instanceof PoolError, 'a PoolError');
  t.equal(e?.code, 'ENOMEM', 'code ENOMEM');
  t.equal(e?.errno, os.constants.errno.ENOMEM, 'errno ENOMEM');
  t.match(e?.message, /pool exhausted: no free 4096-byte block for 4096 bytes \(no wait\) \(in use 4\.00 MiB of 4\.00 MiB in 1 blocks/, 'the message says exhausted, with the numbers');
  t.equal(e?.stats?.inUseBytes, 4 * MiB, 'the stats ride along');
  t.equal(p.stats().failed, before.failed + 1, 'counted as failed');
  t.equal(p.stats().waits, before.waits, 'without waiting');

  t.throws(() => p.alloc(4 * KiB, 30), { code: 'ENOMEM', message: /within 30 ms/ }, 'a synchronous wait with nobody freeing fails after its deadline');
  t.equal(p.stats().waits, before.waits + 1, 'counted as a wait');
  await t.rejects(p.allocAsync(4 * KiB, 30), { code: 'ENOMEM', message: /exhausted.*within 30 ms/ }, 'so does an async one');

  setTimeout(() => p.free(all), 20);
  const got = await p.allocAsync(MiB, 10000);
  t.equal(got.length, MiB, 'an async wait succeeds when a timer frees within the deadline');
  t.equal(p.stats().waits, before.waits + 3, 'three waits counted');
  p.free(got);

  const hold = p.alloc(4 * MiB);
  const pending = p.allocAsync(4 * KiB, 60000);
  await new Promise((r) => setTimeout(r, 20));
  p.close();
  await t.rejects(pending, { code: 'ESHUTDOWN', message: /closed/ }, 'close() fails a waiter at once');
  t.equal(hold.length, 0, 'close() detached the live buffer');
  t.throws(() => p.alloc(1), { code: 'ESHUTDOWN' }, 'alloc after close: ESHUTDOWN');
  p.close();
  t.pass('close is idempotent');
  idle(t, p);
});

t.test('bad input: double free, foreign and interior buffers are refused without corrupting anything', async (t) => {
  const p = pool(t, 8 * MiB);
  const a = p.alloc(10000);
  fill(a, 1);
  t.equal(a.length, 10000, 'exactly the requested length');
  t.equal(p.stats().inUseBytes, 16 * KiB, 'rounded up to a 16 KiB block');
  t.throws(() => p.free(Buffer.alloc(4096)), { code: 'EINVAL', message: /not a buffer from this pool/ }, 'a foreign buffer is refused');
  t.throws(() => p.free(a.subarray(4096)), { code: 'EINVAL', message: /view inside a pool buffer/ }, 'an interior view is refused');
  t.throws(() => p.alloc(0), { code: 'EINVAL' }, 'size 0 is refused');
  t.throws(() => p.alloc(8 * MiB), { code: 'EINVAL', message: /maxBlock/ }, 'a size above maxBlock is refused');
  t.equal(p.stats().inUseBlocks, 1, 'still one block out');
  t.ok(intact(a, 1), 'and intact');
  t.equal(p.free(a), true, 'free');
  t.equal(a.length, 0, 'the freed buffer is detached: a stale reference sees nothing');
  t.equal(p.free(a), false, 'a second free is refused (false)');
  const b = p.alloc(10000);
  fill(b, 2);
  t.equal(p.free(a), false, 'a stale buffer cannot free the block recycled into another buffer');
  t.ok(intact(b, 2), 'the recycled block is untouched');
  t.equal(p.stats().frees, 1, 'one free counted');
  p.free(b);
  t.throws(() => new Pool({ capacity: MiB, minBlock: 1000 }), { code: 'EINVAL' }, 'minBlock must be a power of two');
  t.throws(() => new Pool({ capacity: 0 }), { code: 'EINVAL' }, 'capacity must be positive');
  idle(t, p);
});

t.test('a buffer dropped without free goes back when it is collected', async (t) => {
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  const p = pool(t, 4 * MiB);
  (() => { p.alloc(MiB); })();
  t.equal(p.stats().inUseBlocks, 1, 'one block out');
  const back = await until(() => { gc(); return p.stats().inUseBlocks === 0; });
  t.ok(back, 'the block came back after GC');
  idle(t, p);
});

t.test('no RDMA device on the host: discovery is empty, the pool works without registration', async (t) => {
  const devs = rdmaDevices();
  t.ok(Array.isArray(devs), `devices: [${devs.join(', ')}]`);
  const p = pool(t, 4 * MiB);
  if (devs.length === 0) t.throws(() => p._rdmaSelfTest(), { code: 'ENODEV', message: /no RDMA device/ }, 'registration needs a device: a clear error');
  else t.ok(p._rdmaSelfTest().deregistered, 'registered and deregistered');
  const b = p.alloc(100);
  t.equal(b.length, 100, 'allocations work either way');
  p.free(b);
  idle(t, p);
});

// ---- FUSE receive buffers from the pool ----

t.test('FUSE: null fs receive buffers come from the pool; dd through it; in use = idle workers, then 0', async (t) => {
  const mnt = scratchMount(t).mnt;
  const p = pool(t, 32 * MiB);
  const nullfs = new NullFs();
  const workers = 4;
  const s = await FuseSession.mount(mnt, nullfs.ops, { fsname: 'nullfs-pool', handleSignals: false, workers, pool: p });
  t.teardown(() => s.unmount());
  const rb = s.stats().receiveBufferSize;
  t.equal(blockOf(rb), 2 * MiB, `a receive buffer (${rb} bytes) takes a 2 MiB block`);
  t.ok(await until(() => p.stats().inUseBlocks === workers), 'each worker holds one pool block while idle');
  t.equal(p.stats().inUseBytes, workers * 2 * MiB, `${workers} x 2 MiB in use`);

  await run('dd', ['if=/dev/zero', `of=${mnt}/zero`, 'bs=1M', 'count=64']);
  t.equal(nullfs.counters.bytesWritten, 64 * MiB, 'all 64 MiB reached JS');
  t.equal(nullfs.counters.maxWrite, MiB, 'in 1 MiB writes');
  // The worker that took the last write allocates its fresh buffer when it loops back, maybe after dd returned.
  const enough = await until(() => p.stats().allocs >= workers + 64, 5_000);
  t.ok(enough, `every write kept its pool buffer and the worker took a fresh one (${p.stats().allocs} allocations)`);
  t.equal(s.stats().fallbackBuffers, 0, 'never fell back to the heap');
  t.ok(await until(() => p.stats().inUseBlocks === workers), 'after dd: back to the idle workers\' buffers');
  await run('dd', [`if=${mnt}/zero`, 'of=/dev/null', 'bs=1M', 'count=16']);
  t.ok(nullfs.counters.bytesRead >= 16 * MiB, 'reads work too');

  await s.unmount();
  t.equal(p.stats().inUseBlocks, 0, 'after unmount: 0 in use');
  idle(t, p);
});

t.test('FUSE: a pool too small for every worker falls back to the heap without blocking, and may close under a mount', async (t) => {
  const mnt = scratchMount(t).mnt;
  const p = pool(t, 4 * MiB);
  const nullfs = new NullFs();
  const s = await FuseSession.mount(mnt, nullfs.ops, { fsname: 'nullfs-pool', handleSignals: false, workers: 4, pool: p });
  t.teardown(() => s.unmount());
  await run('dd', ['if=/dev/zero', `of=${mnt}/zero`, 'bs=1M', 'count=32']);
  t.equal(nullfs.counters.bytesWritten, 32 * MiB, 'every byte arrived');
  t.ok(s.stats().fallbackBuffers > 0, `the workers fell back to the heap (${s.stats().fallbackBuffers} buffers)`);
  t.ok(p.stats().receiveFallbacks > 0, 'and the pool counted them');
  t.ok(p.stats().inUseBlocks <= 2, 'the pool never handed out more than it has');

  p.close();
  await run('dd', ['if=/dev/zero', `of=${mnt}/zero`, 'bs=1M', 'count=8']);
  t.equal(nullfs.counters.bytesWritten, 40 * MiB, 'after pool.close() the mount still works (heap buffers)');
  await s.unmount();
  idle(t, p, 'after unmount every block came back, closed or not');
});
