/**
 * A FUSE mount with rdma 'on' in the VM (the mount in a child process, the cluster in this one on $RXE_IP):
 * fio with --verify=crc32c passes at bs 4k and 128k (write-behind: gathered in pool staging buffers) and 1m; FUSE
 * write payloads (views inside the pool's receive buffers) went by descriptor with no copy (payloadCopies 0); the pool is back to 0 in use after unmount.
 */
import path from 'node:path';
import t from 'tap';
import { EmbeddedCluster } from '../../src/cluster/launcher.js';
import { tempDir } from '../support/cluster.js';
import { mountRdma, runAsync } from './support.js';

const IP = process.env.RXE_IP ?? '192.0.2.1';

t.test('fio --verify=crc32c over an RDMA mount: no payload copies, pool back to 0', async (t) => {
  const dir = tempDir(t);
  const c = await EmbeddedCluster.start({ processes: false, masterPort: 0, heartbeatMs: 500, host: IP, dir: path.join(dir, 'cluster') });
  t.teardown(() => c.stop());
  const m = await mountRdma(path.join(dir, 'mnt'), c.masterAddr, c.vol, c.owner, 'on');
  let stopped = false;
  t.teardown(() => (stopped ? undefined : m.stop().catch(() => undefined)));
  for (const [bs, size] of [['4k', '2m'], ['128k', '8m'], ['1m', '8m']] as const) {
    const r = await runAsync('fio', ['--name=v', `--directory=${m.mnt}`, `--filename=f-${bs}`, '--rw=write', `--bs=${bs}`, `--size=${size}`,
      '--verify=crc32c', '--verify_fatal=1', '--verify_state_save=0', '--do_verify=1', '--ioengine=psync', '--end_fsync=1']);
    t.equal(r.status, 0, `fio write+verify bs ${bs}`, r.status === 0 ? {} : { out: r.out.slice(-3000) });
    t.notMatch(r.out, /verify.*(bad|fail)/i, `bs ${bs}: no verify failure`);
  }
  const end = await m.stop();
  stopped = true;
  const s = end.stats;
  t.comment(`mount stats ${JSON.stringify(s)}; pool in use ${end.pool?.inUseBytes}, peak ${end.pool?.peakBytes}`);
  t.equal(s.transport, 'rdma', 'the mount ran the RDMA path');
  // 8 MiB at 1 MiB: 8 requests (a piece over RDMA may be up to 1 MiB); the 4 KiB and 128 KiB writes went as
  // gathered runs of up to 1 MiB: at least 2 + 8 more
  t.ok(s.rdmaWrites >= 8 + 10, `the 18 MiB went by RDMA writes (${s.rdmaWrites})`);
  t.ok(s.rdmaReads > 0, `verify read back by RDMA (${s.rdmaReads})`);
  t.equal(s.payloadCopies, 0, 'FUSE write payloads went by descriptor: no copy into the pool');
  // 2 MiB at 4 KiB and 8 MiB at 128 KiB: 512 + 64 writes gathered (write-behind) in staging buffers from the pool
  t.ok(s.stagedWrites >= 512 + 64, `the 4 KiB and 128 KiB writes were staged (${s.stagedWrites}) ...`);
  t.ok(s.stageSubmits >= 2 && s.stageSubmits <= 64, `... and went out as a few runs (${s.stageSubmits})`);
  t.equal(s.tcpFallbacks, 0, 'no TCP fallback');
  t.same(end.warnings, [], 'no transport warnings');
  t.ok(end.pool, 'the mount had a registered pool');
  t.equal(end.pool?.inUseBytes, 0, 'pool: nothing in use after unmount');
  t.ok((end.pool?.peakBytes ?? 0) > 0, 'the pool was used (FUSE receive buffers)');
});
