/** On a host without an RDMA device: discovery is empty and a context (hence any connect) fails clearly. */
import t from 'tap';
import { RdmaConnection, RdmaContext, rdmaDevices } from '../../src/transport/rdma.js';
import { CubeFSError, ErrorCode } from '../../src/util/errors.js';
import { newPool } from '../support/rdma-pool.js';

const hasDevice = rdmaDevices().length > 0;

t.test('rdmaDevices() is an empty list, not an error', { skip: hasDevice && 'this machine has an RDMA device' }, async (t) => {
  t.same(rdmaDevices(), []);
});

t.test('connecting without a device gives a clear "no RDMA device" error', { skip: hasDevice && 'this machine has an RDMA device' }, async (t) => {
  const pool = newPool(4 << 20);
  t.teardown(() => pool.close());
  let err: unknown;
  try {
    const ctx = new RdmaContext({ pool });
    await RdmaConnection.connect(ctx, '192.0.2.1:17360');
  } catch (e) {
    err = e;
  }
  t.ok(err instanceof CubeFSError, 'a CubeFSError');
  t.equal((err as CubeFSError).code, ErrorCode.NoRdmaDevice);
  t.match((err as Error).message, /no RDMA device/);
  t.equal(pool.stats().inUseBytes, 0);
});
