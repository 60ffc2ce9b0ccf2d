/**
 * The RDMA mode on a host without an RDMA device: 'on' is a clear error at connect; 'auto' uses TCP and
 * says so once ("no RDMA device: using TCP"), and the data still round-trips; 'off' says nothing.
 */
import t from 'tap';
import { CubeFSClient } from '../../src/sdk/client.js';
import { rdmaDevices } from '../../src/transport/rdma.js';
import { ErrorCode } from '../../src/util/errors.js';
import { failure, pattern, startCluster } from '../support/cluster.js';

const hasDevice = rdmaDevices().length > 0;

t.test('rdma "on" without a device: a clear error at connect', { skip: hasDevice ? 'this host has an RDMA device' : false }, async (t) => {
  const c = await startCluster(t);
  const e = await failure(CubeFSClient.connect({ masters: c.masterAddr, vol: c.vol, owner: c.owner, rdma: 'on' }));
  t.equal(e.code, ErrorCode.NoRdmaDevice, 'CUBEFS_NO_RDMA_DEVICE');
  t.match(e.message, /rdma "on".*no RDMA device/, `says why: ${e.message}`);
});

t.test('rdma "auto" without a device: TCP, said once; "off": silent', { skip: hasDevice ? 'this host has an RDMA device' : false }, async (t) => {
  const c = await startCluster(t);
  const warnings: string[] = [];
  const fs = await CubeFSClient.connect({ masters: c.masterAddr, vol: c.vol, owner: c.owner, rdma: 'auto', rdmaPort: 'same', onWarning: (w) => warnings.push(w) });
  t.teardown(() => fs.close());
  const data = pattern(2 * 1024 * 1024 + 3, 5);
  await fs.writeFile('/a', data);
  await fs.writeFile('/b', data.subarray(0, 1000));
  t.ok((await fs.readFile('/a')).equals(data), 'round trip over TCP');
  t.same(warnings, ['no RDMA device: using TCP'], 'said once');
  const s = fs.data.stats();
  t.equal(s.transport, 'tcp', 'transport: tcp');
  t.ok(s.tcpWrites > 0 && s.tcpReads > 0, `TCP writes ${s.tcpWrites}, reads ${s.tcpReads}`);
  t.equal(s.rdmaWrites + s.rdmaReads, 0, 'nothing over RDMA');

  const quiet: string[] = [];
  const off = await CubeFSClient.connect({ masters: c.masterAddr, vol: c.vol, owner: c.owner, rdma: 'off', onWarning: (w) => quiet.push(w) });
  t.teardown(() => off.close());
  t.ok((await off.readFile('/b')).equals(data.subarray(0, 1000)), 'off: reads');
  t.same(quiet, [], 'off: nothing said');
});
