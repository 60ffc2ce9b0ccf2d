/**
 * The data path over RDMA (docs/rdma.md "Flows") on Soft-RoCE in the VM: an embedded cluster on $RXE_IP
 * whose datanodes serve RDMA on their TCP port numbers, an SDK client with rdma 'on'. Round trips of edge
 * sizes and an overwrite read back byte for byte, the counters show RDMA moved the data (and that the
 * SDK's own buffers were copied into the pool, as they must be), and every pool is back to 0 in use.
 * A follower killed mid-write (processes mode, supervised) does not lose the write. Small: JS is slow here.
 */
import t from 'tap';
import type { Test } from 'tap';
import { EmbeddedCluster, type ClusterOptions } from '../../src/cluster/launcher.js';
import { CubeFSClient } from '../../src/sdk/client.js';
import { pattern, sha256, tempDir } from '../support/cluster.js';
import { until } from '../support/wait.js';

const IP = process.env.RXE_IP ?? '192.0.2.1';
const K = 1024, M = 1024 * 1024;

async function cluster(t: Test, opts: Partial<ClusterOptions> = {}): Promise<EmbeddedCluster> {
  const c = await EmbeddedCluster.start({ processes: false, masterPort: 0, heartbeatMs: 500, host: IP, ...opts, dir: tempDir(t) });
  t.teardown(() => c.stop());
  return c;
}

async function client(c: EmbeddedCluster, warnings: string[] = []): Promise<CubeFSClient> {
  return CubeFSClient.connect({
    masters: c.masterAddr, vol: c.vol, owner: c.owner, refreshMs: 1000,
    rdma: 'on', rdmaPort: 'same', rdmaPoolMB: 32, onWarning: (m) => warnings.push(m),
  });
}

t.test('SDK round trips over RDMA: edge sizes, an overwrite, all by RDMA, pools back to 0', async (t) => {
  const c = await cluster(t);
  const warnings: string[] = [];
  const fs = await client(c, warnings);
  let open = true;
  t.teardown(() => (open ? fs.close() : undefined));
  const sizes = [0, 1, 4095, 128 * K - 1, 128 * K + 1, M + 1, 3 * M + 5];
  for (const size of sizes) {
    const data = pattern(size, size + 1);
    await fs.writeFile(`/f-${size}`, data);
    const back = await fs.readFile(`/f-${size}`);
    t.ok(back.length === size && back.equals(data), `size ${size}: reads back byte for byte`);
  }
  // an overwrite in the middle of a multi-extent file (RandomWrite over RDMA)
  const data = pattern(3 * M + 100, 3);
  await fs.writeFile('/ow', data);
  const patch = pattern(300 * K, 9);
  const h = await fs.open('/ow', 'r+');
  await h.write(patch, M - 777);
  await h.close();
  patch.copy(data, M - 777);
  t.equal(sha256(await fs.readFile('/ow')), sha256(data), 'overwrite landed in place, the rest unchanged');

  const s = fs.data.stats();
  t.equal(s.transport, 'rdma', 'the client runs the RDMA path');
  t.ok(s.rdmaWrites > 0 && s.rdmaReads > 0, `RDMA writes ${s.rdmaWrites}, reads ${s.rdmaReads}`);
  t.equal(s.tcpReads, 0, 'no read went over TCP');
  t.ok(s.tcpWrites <= 8, `only tiny first writes went over TCP (${s.tcpWrites})`);
  t.equal(s.payloadCopies, s.rdmaWrites, `SDK buffers are not in the pool: each RDMA write payload was copied into it (${s.payloadCopies})`);
  t.equal(s.tcpFallbacks, 0, 'no datanode fell back to TCP');
  t.same(warnings, [], 'no transport warnings');
  t.equal(s.poolInUse, 0, 'client pool: nothing in use after the round trips');
  await fs.close();
  open = false;
  let served = 0, forwards = 0;
  for (const i of [0, 1, 2]) {
    const d = c.datanode(i)!;
    t.ok(d.rdmaAddr, `datanode ${i + 1} serves RDMA on ${d.rdmaAddr} (TCP ${d.addr})`);
    t.equal(d.rdmaAddr, d.addr, 'on the same host and port number as TCP');
    // A read's buffer goes back when its RDMA Writes complete, which may be just after the client has the reply.
    await until(() => d.rdmaPoolStats()?.inUseBytes === 0, 5_000);
    t.equal(d.rdmaPoolStats()?.inUseBytes, 0, `datanode ${i + 1}: pool nothing in use`);
    served += d.stats.rdmaWrites;
    forwards += d.stats.rdmaForwards;
  }
  t.equal(served, 3 * s.rdmaWrites, `every write was RDMA-Read by the leader and both followers (${served})`);
  t.equal(forwards, 2 * s.rdmaWrites, `leaders replicated over RDMA (${forwards} forwards)`);
  t.comment(`client stats ${JSON.stringify(s)}`);
});

t.test('a follower killed mid-write over RDMA: the write completes and reads back identical', async (t) => {
  const c = await cluster(t, { processes: true, supervise: true });
  const fs = await client(c);
  t.teardown(() => fs.close());
  const size = 4 * M + 123;
  const data = pattern(size, 42);
  const h = await fs.open('/killed', 'w');
  const chunk = 256 * K;
  let killed = false;
  for (let o = 0; o < size; o += chunk) {
    await h.write(data.subarray(o, Math.min(size, o + chunk)), o);
    if (!killed && o >= M) {
      // datanode 3 follows partitions led by 1 and 2 (and leads others, which the writer then avoids)
      c.kill('datanode', 2);
      killed = true;
    }
  }
  await h.close();
  t.ok(killed, 'a datanode was killed mid-write');
  const back = await fs.readFile('/killed');
  t.equal(back.length, size, 'size');
  t.equal(sha256(back), sha256(data), 'reads back identical');
  const s = fs.data.stats();
  t.ok(s.rdmaWrites > 0, `RDMA writes ${s.rdmaWrites} (errors ${s.rdmaErrors}, TCP fallbacks ${s.tcpFallbacks})`);
  t.equal(s.poolInUse, 0, 'client pool: nothing in use');
});

t.test('rdma "auto" against datanodes without RDMA: TCP, said once per datanode, 1 MiB pieces split for TCP', async (t) => {
  const c = await cluster(t, { rdma: 'off' });
  const warnings: string[] = [];
  const fs = await CubeFSClient.connect({
    masters: c.masterAddr, vol: c.vol, owner: c.owner, refreshMs: 1000,
    rdma: 'auto', rdmaPort: 'same', rdmaPoolMB: 16, onWarning: (m) => warnings.push(m),
  });
  t.teardown(() => fs.close());
  const data = pattern(3 * M + 17, 11);
  await fs.writeFile('/x', data.subarray(0, 100));
  const h = await fs.open('/x', 'r+');
  await h.write(data, 0);
  await h.close();
  t.equal(sha256(await fs.readFile('/x')), sha256(data), 'reads back identical over TCP');
  const s = fs.data.stats();
  t.equal(s.transport, 'rdma', 'the client has an RDMA path (a device exists)');
  t.equal(s.rdmaWrites + s.rdmaReads, 0, 'nothing went over RDMA');
  t.ok(s.tcpWrites >= 3 * 8, `writes went as <= 128 KiB TCP packets (${s.tcpWrites})`);
  const per = new Map<string, number>();
  for (const w of warnings) {
    const m = /^datanode (\S+): RDMA unavailable \(.*\), using TCP$/.exec(w);
    t.ok(m, `says: ${w}`);
    if (m) per.set(m[1]!, (per.get(m[1]!) ?? 0) + 1);
  }
  t.ok(per.size >= 1 && [...per.values()].every((n) => n === 1), `once per datanode (${[...per.entries()].map(([k, v]) => `${k}: ${v}`).join(', ')})`);
  t.equal(s.tcpFallbacks, per.size, 'fallbacks counted');
});
