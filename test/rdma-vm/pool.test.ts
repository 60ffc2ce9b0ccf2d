// Runs inside the RDMA VM only (scripts/run-tests.mjs boots it): a real Soft-RoCE device, rxe0.
// Kept small: JavaScript runs ~20x slower there.
import t from 'tap';
import { Pool, rdmaDevices } from '../../src/pool/index.js';

const MiB = 1 << 20;
const DEV = process.env.RXE_DEV ?? 'rxe0';

t.test('ibv device discovery sees the VM\'s rxe0', async (t) => {
  t.ok(rdmaDevices().includes(DEV), `devices: [${rdmaDevices().join(', ')}]`);
});

t.test('a pool registers with a PD on rxe0 (one MR per PD), deregisters, and has nothing in use after', async (t) => {
  const p = new Pool({ capacity: 16 * MiB });
  t.teardown(() => p.close());
  const held = p.alloc(MiB);
  const r = p._rdmaSelfTest(DEV);
  t.equal(r.device, DEV, 'opened rxe0');
  t.ok(r.coversPool && r.length === p.capacity, `the MR covers the whole region (${r.length} bytes)`);
  t.ok(r.rkey !== 0 || r.lkey !== 0, `keys: lkey ${r.lkey}, rkey ${r.rkey}`);
  t.ok(r.sameMrTwice, 'registering in the same PD again returns the same MR');
  t.ok(r.mrForMatches, 'mrFor(pd) finds it');
  t.ok(r.deregistered && r.pdFreed, 'deregistered, then the PD deallocated');
  t.equal(p.stats().inUseBlocks, 1, 'registration does not touch the allocator');
  p.free(held);
  t.equal(p.stats().inUseBytes, 0, 'in use: 0');
});
