import { goldenUrl } from '../support/shared.js';
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import http from 'node:http';
import net from 'node:net';
import { Master, MAX_VOLUMES } from '../../src/cluster/master.js';
import { MasterClient, authKeyOf } from '../../src/master/client.js';
import { Volume } from '../../src/master/volume.js';
import { Op } from '../../src/proto/index.js';
import { CubeFSError, ErrorCode } from '../../src/util/errors.js';
import { TestAdminPeer } from './peer.js';
import { waitFor } from '../support/wait.js';

/** The subtest object tap hands a test function. */
type TT = Parameters<Parameters<typeof t.test>[0]>[0];

const GOLDEN = goldenUrl();
const goldenData = (f: string): unknown => (JSON.parse(fs.readFileSync(new URL(f, GOLDEN), 'utf8')) as { data: unknown }).data;

/** The admin secret every test master here is started with. */
const SECRET = 'test-secret-0123456789abcdef0123456789abcdef';

interface Cluster {
  dir: string;
  meta: TestAdminPeer;
  datas: TestAdminPeer[];
  master: Master;
  addr: string;
  client: MasterClient;
}

async function cluster(t: TT, heartbeatMs = 100): Promise<Cluster> {
  const dir = fs.mkdtempSync(os.tmpdir() + '/cubefs-');
  const meta = new TestAdminPeer('meta');
  const datas = [new TestAdminPeer('data'), new TestAdminPeer('data'), new TestAdminPeer('data')];
  let master: Master | null = null;
  let client: MasterClient | null = null;
  t.teardown(async () => {
    client?.close();
    await master?.stop();
    await meta.stop();
    for (const d of datas) await d.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await meta.start();
  for (const d of datas) await d.start();
  master = new Master({ dir, metanodes: [meta.addr], datanodes: datas.map((d) => d.addr), heartbeatMs, secret: SECRET });
  const addr = await master.start();
  client = new MasterClient(addr, { timeoutMs: 5000, adminSecret: SECRET });
  return { dir, meta, datas, master, addr, client };
}

/** A port nothing listens on. */
async function deadAddr(): Promise<string> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return `127.0.0.1:${port}`;
}

function rawGet(addr: string, path: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http.get(`http://${addr}${path}`, { headers }, (res) => {
      let b = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (b += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: b }));
    }).on('error', reject);
  });
}

async function rejectsWith(t: TT, p: Promise<unknown>, code: string): Promise<CubeFSError> {
  try {
    await p;
  } catch (e) {
    t.ok(e instanceof CubeFSError, 'a CubeFSError');
    t.equal((e as CubeFSError).code, code);
    return e as CubeFSError;
  }
  t.fail(`expected ${code}`);
  throw new Error('no error');
}


t.test('createVolume sends the admin ops and getVolume returns upstream shapes', async (t) => {
  const c = await cluster(t);
  await c.client.createVolume('vol1', 'alice', { capacityGB: 5 });
  const mpOps = c.meta.received.filter((r) => r.op === Op.CreateMetaPartition);
  t.equal(mpOps.length, 3, 'three CreateMetaPartition');
  t.equal(mpOps[2]!.body, `{"VolName":"vol1","PartitionID":3,"Start":8388609,"End":9223372036854775807,"Members":["${c.meta.addr}"]}`);
  t.same(JSON.parse(mpOps[0]!.body), { VolName: 'vol1', PartitionID: 1, Start: 0, End: 4194304, Members: [c.meta.addr] });
  t.same(JSON.parse(mpOps[1]!.body), { VolName: 'vol1', PartitionID: 2, Start: 4194305, End: 8388608, Members: [c.meta.addr] });
  for (const d of c.datas) {
    const dpOps = d.received.filter((r) => r.op === Op.CreateDataPartition);
    t.equal(dpOps.length, 4, `every datanode gets the 4 data partitions (${d.addr})`);
    const first = JSON.parse(dpOps.find((r) => r.pid === 1)!.body) as { VolName: string; Hosts: string[] };
    t.equal(first.VolName, 'vol1');
    t.same(first.Hosts, c.datas.map((x) => x.addr));
  }

  const vv = await c.client.getVolume('vol1', 'alice');
  t.equal(vv.Name, 'vol1');
  t.equal(vv.Owner, 'alice');
  t.same(vv.DataPartitions, [], 'DataPartitions empty as upstream /client/vol');
  t.equal(vv.MetaPartitions.length, 3);
  t.same(vv.MetaPartitions.map((m) => [m.Start, m.End < 2 ** 53 ? m.End : 'max']), [[0, 4194304], [4194305, 8388608], [8388609, 'max']]);

  const dps = await c.client.getDataPartitions('vol1');
  t.equal(dps.DataPartitions.length, 4);
  const leaders = new Set<string>();
  let notFirst = 0;
  for (const dp of dps.DataPartitions) {
    t.ok(dp.Hosts.includes(dp.LeaderAddr), `partition ${dp.PartitionID}: the leader ${dp.LeaderAddr} is one of its hosts`);
    if (dp.LeaderAddr !== dp.Hosts[0]) notFirst++;
    t.equal(dp.Status, 2);
    t.equal(dp.ReplicaNum, 3);
    leaders.add(dp.LeaderAddr);
  }
  t.ok(notFirst > 0, `${notFirst} of 4 raft leaders are not Hosts[0], as on a real cluster`);
  t.equal(leaders.size, 3, 'leaders spread across the three datanodes');

  const raw = await rawGet(c.addr, '/client/metaPartitions?name=vol1');
  t.match(raw.body, /"End":9223372036854775807[,}]/, 'End is written as exact digits');

  const adminView = await c.client.getVolumeAdmin('vol1');
  t.equal(adminView.EnableTransactionV1, 'rename');
  t.equal(adminView.Capacity, 5);

  const ip = await c.client.getClusterIp();
  t.equal(ip.Cluster, 'cfs_local');
  t.equal(ip.Ip, '127.0.0.1');

  const admin = { 'X-CubeFS-Secret': SECRET };
  const dup = await rawGet(c.addr, '/admin/createVol?name=vol1&owner=alice&capacity=1', admin);
  t.same(JSON.parse(dup.body), { code: 12, msg: 'duplicate vol', data: null });
  const created = await rawGet(c.addr, '/admin/createVol?name=vol2&owner=bob&capacity=1&replicaNum=2', admin);
  t.same(JSON.parse(created.body), { code: 0, msg: 'success', data: 'create vol[vol2] successfully, has allocate [4] data partitions' });
  const dp2 = await c.client.getDataPartitions('vol2');
  t.ok(dp2.DataPartitions.every((d) => d.Hosts.length === 2 && d.ReplicaNum === 2), 'replicaNum 2 honoured');
});

t.test('replies carry upstream keys, key by key with the golden captures', async (t) => {
  const c = await cluster(t);
  await c.master.createVolume('ltptest', 'ltp');
  const keysOf = (o: unknown): string[] => Object.keys(o as object).sort();
  const ours = async (path: string): Promise<unknown> => (JSON.parse((await rawGet(c.addr, path)).body) as { data: unknown }).data;
  const pairs: [string, string, (x: unknown) => unknown][] = [
    ['client_vol.json', `/client/vol?name=ltptest&authKey=${authKeyOf('ltp')}`, (x) => x],
    ['client_vol.json', `/client/vol?name=ltptest&authKey=${authKeyOf('ltp')}`, (x) => (x as { MetaPartitions: unknown[] }).MetaPartitions[0]],
    ['client_metaPartitions.json', '/client/metaPartitions?name=ltptest', (x) => (x as unknown[])[0]],
    ['client_partitions.json', '/client/partitions?name=ltptest', (x) => x],
    ['client_partitions.json', '/client/partitions?name=ltptest', (x) => (x as { DataPartitions: unknown[] }).DataPartitions[0]],
    ['client_volStat.json', '/client/volStat?name=ltptest', (x) => x],
    ['admin_getIp.json', '/admin/getIp', (x) => x],
    ['admin_getVol.json', '/admin/getVol?name=ltptest', (x) => x],
    ['admin_getCluster.json', '/admin/getCluster', (x) => x],
  ];
  for (const [file, path, pick] of pairs) {
    t.same(keysOf(pick(await ours(path))), keysOf(pick(goldenData(file))), `${path} has the keys of ${file}`);
  }
  const novol = await rawGet(c.addr, '/client/vol?name=nope&authKey=x');
  t.equal(novol.status, 200);
  t.same(JSON.parse(novol.body), JSON.parse(fs.readFileSync(new URL('client_vol_novol.json', GOLDEN), 'utf8')));
  const bad = await rawGet(c.addr, '/client/vol?name=ltptest&authKey=0123');
  t.equal(bad.status, 200);
  const goldenBad = fs.readFileSync(new URL('client_vol_badauth.txt', GOLDEN), 'utf8').split('\r\n\r\n').pop()!.split('\n\n').pop()!.trim();
  t.equal(bad.body, goldenBad, 'bad auth reply is byte-identical to upstream');
});

t.test('owner and volume errors', async (t) => {
  const c = await cluster(t);
  await c.master.createVolume('vol1', 'alice');
  const auth = await rejectsWith(t, c.client.getVolume('vol1', 'mallory'), ErrorCode.AuthMismatch);
  t.equal(auth.errno, os.constants.errno.EACCES);
  t.equal(auth.message, 'volume "vol1": owner "mallory" is not the owner (master: client and server auth key do not match)');
  const nov = await rejectsWith(t, c.client.getVolume('ghost', 'alice'), ErrorCode.VolNotExist);
  t.equal(nov.errno, os.constants.errno.ENOENT);
  t.equal(nov.message, `volume "ghost" does not exist on master ${c.addr}`);
  await rejectsWith(t, c.client.getMetaPartitions('ghost'), ErrorCode.VolNotExist);
  await rejectsWith(t, Volume.open(c.client, 'vol1', 'mallory'), ErrorCode.AuthMismatch);
  await rejectsWith(t, c.master.createVolume('vol1', 'alice'), ErrorCode.MasterError);
  await rejectsWith(t, c.master.createVolume('bad name!', 'alice'), ErrorCode.MasterError);
});

t.test('an unreachable master fails fast naming every address', async (t) => {
  const a = await deadAddr();
  const b = await deadAddr();
  const client = new MasterClient(`${a},${b}`, { timeoutMs: 3000 });
  t.teardown(() => client.close());
  const e = await rejectsWith(t, client.getClusterIp(), ErrorCode.MasterUnreachable);
  t.match(e.message, a);
  t.match(e.message, b);
  t.match(e.message, /ECONNREFUSED/);
  t.equal(e.retryable, true);
});

t.test('a master that does not answer in time counts as a failure', async (t) => {
  const sockets = new Set<net.Socket>();
  const hang = net.createServer((s) => sockets.add(s));
  await new Promise<void>((r) => hang.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    hang.close();
  });
  const addr = `127.0.0.1:${(hang.address() as net.AddressInfo).port}`;
  const client = new MasterClient([addr], { timeoutMs: 200 });
  t.teardown(() => client.close());
  const e = await rejectsWith(t, client.getClusterIp(), ErrorCode.MasterUnreachable);
  t.match(e.message, /no reply in 200 ms/);
});

t.test('failover: dead, 403 and 5xx addresses are skipped; the good one is remembered', async (t) => {
  const c = await cluster(t);
  await c.master.createVolume('vol1', 'alice');
  let hits = 0;
  const refuse = http.createServer((req, res) => {
    hits++;
    res.writeHead(req.url?.startsWith('/admin/getIp') ? 403 : 503);
    res.end('not leader');
  });
  await new Promise<void>((r) => refuse.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => {
    refuse.closeAllConnections();
    refuse.close();
  });
  const refuseAddr = `127.0.0.1:${(refuse.address() as net.AddressInfo).port}`;
  const dead = await deadAddr();
  const client = new MasterClient([dead, refuseAddr, c.addr]);
  t.teardown(() => client.close());
  const ip = await client.getClusterIp();
  t.equal(ip.Cluster, 'cfs_local', 'answered by the third address after a refused connection and a 403');
  t.equal(client.leader, c.addr);
  t.equal(hits, 1);
  const vv = await client.getVolume('vol1', 'alice');
  t.equal(vv.Name, 'vol1');
  t.equal(hits, 1, 'the next call starts at the last good address');

  const client2 = new MasterClient([refuseAddr, c.addr]);
  t.teardown(() => client2.close());
  const mps = await client2.getMetaPartitions('vol1');
  t.equal(mps.length, 3, 'a 503 moves on too');
  t.equal(hits, 2);
});

t.test('restart keeps volumes', async (t) => {
  const c = await cluster(t);
  await c.master.createVolume('keep', 'alice', { dataPartitions: 2 });
  const before = await c.client.getDataPartitions('keep');
  await c.master.stop();
  await c.master.stop();
  t.ok(fs.existsSync(`${c.dir}/master.json`), 'state file written');
  const again = new Master({ dir: c.dir, metanodes: [c.meta.addr], datanodes: c.datas.map((d) => d.addr), heartbeatMs: 100, secret: SECRET });
  const addr = await again.start();
  t.teardown(() => again.stop());
  const client = new MasterClient(addr);
  t.teardown(() => client.close());
  const vv = await client.getVolume('keep', 'alice');
  t.equal(vv.MetaPartitions.length, 3);
  t.same((await client.getDataPartitions('keep')).DataPartitions.map((d) => [d.PartitionID, d.Hosts]), before.DataPartitions.map((d) => [d.PartitionID, d.Hosts]));
  await again.createVolume('next', 'bob', { dataPartitions: 1 });
  const mps = await client.getMetaPartitions('next');
  t.same(mps.map((m) => m.PartitionID), [4, 5, 6], 'partition ids continue after a restart');
  const dps = await client.getDataPartitions('next');
  t.same(dps.DataPartitions.map((d) => d.PartitionID), [3]);
});

t.test('a data partition goes read-only while a datanode misses heartbeats', async (t) => {
  const c = await cluster(t, 100);
  await c.master.createVolume('vol1', 'alice', { dataPartitions: 3, replicaNum: 2 });
  const vol = await Volume.open(c.client, 'vol1', 'alice', { refreshMs: 0 });
  t.teardown(() => vol.close());
  t.ok(vol.dataPartitions().every((d) => d.Status === 2));
  const victim = c.datas[2]!;
  victim.silent = true;
  const statusOf = async (): Promise<Map<number, number>> => {
    await vol.refresh();
    return new Map(vol.dataPartitions().map((d) => [d.PartitionID, d.Status]));
  };
  await waitFor('read-only', async () => (await statusOf()).get(2) === 1);
  const st = await statusOf();
  // dp1 hosts [d0,d1], dp2 [d1,d2], dp3 [d2,d0]
  t.same([st.get(1), st.get(2), st.get(3)], [2, 1, 1], 'partitions with the silent host are read-only, the others stay read-write');
  victim.silent = false;
  await waitFor('read-write again', async () => [...(await statusOf()).values()].every((s) => s === 2));
  t.pass('back to read-write once the datanode answers');
});

t.test('Volume: open, transactions, refresh coalescing, stat from heartbeats', async (t) => {
  const c = await cluster(t, 100);
  await c.master.createVolume('vol1', 'alice', { capacityGB: 2 });
  c.meta.partitions = [
    { PartitionID: 1, InodeCount: 3, DentryCount: 2, MaxInodeID: 3, UsedSize: 1000 },
    { PartitionID: 2, InodeCount: 1, DentryCount: 0, MaxInodeID: 4194306, UsedSize: 24 },
  ];
  const vol = await Volume.open(c.client, 'vol1', 'alice', { refreshMs: 50 });
  t.teardown(() => vol.close());
  t.equal(vol.name, 'vol1');
  t.equal(vol.owner, 'alice');
  t.equal(vol.txRename, true);
  t.same(vol.metaPartitions().map((m) => m.PartitionID), [1, 2, 3]);
  t.equal(vol.dataPartitions().length, 4);
  const a = vol.refresh();
  const b = vol.refresh();
  t.equal(a, b, 'concurrent refreshes share one request');
  await a;
  await waitFor('stats from the metanode heartbeat', async () => (await vol.stat()).InodeCount === 4);
  const st = await vol.stat();
  t.equal(st.UsedSize, 1024);
  t.equal(st.TotalSize, 2 * 1024 ** 3);
  await waitFor('periodic refresh picks up MaxInodeID', async () => vol.metaPartitions()[1]!.MaxInodeID === 4194306);
  t.pass('periodic refresh ran');

  const old = vol.metaPartitions();
  await c.master.stop();
  await rejectsWith(t, vol.refresh(), ErrorCode.MasterUnreachable);
  t.equal(vol.metaPartitions(), old, 'a failed refresh keeps the old view');
  vol.close();
  vol.close();
  await rejectsWith(t, vol.refresh(), ErrorCode.Closed);
});

t.test('a master without /admin/getVol means no transactions', async (t) => {
  const c = await cluster(t);
  await c.master.createVolume('vol1', 'alice');
  const proxy = http.createServer((req, res) => {
    if (req.url?.startsWith('/admin/getVol')) {
      res.writeHead(404);
      res.end('404 page not found');
      return;
    }
    const up = http.request(`http://${c.addr}${req.url}`, { method: req.method }, (r) => {
      res.writeHead(r.statusCode ?? 500, r.headers);
      r.pipe(res);
    });
    req.pipe(up);
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => {
    proxy.closeAllConnections();
    proxy.close();
  });
  const client = new MasterClient(`127.0.0.1:${(proxy.address() as net.AddressInfo).port}`);
  t.teardown(() => client.close());
  const vol = await Volume.open(client, 'vol1', 'alice', { refreshMs: 0 });
  t.teardown(() => vol.close());
  t.equal(vol.txRename, false);
  t.equal(vol.metaPartitions().length, 3);
});

t.test('admin secret: createVol refused without it, getVol hides Owner without it', async (t) => {
  const c = await cluster(t);
  const path = '/admin/createVol?name=open1&owner=eve&capacity=1';
  const none = await rawGet(c.addr, path);
  t.equal(none.status, 200, "upstream's envelope: HTTP 200");
  const refused = JSON.parse(none.body) as { code: number; msg: string; data: unknown };
  t.equal(refused.code, 57, 'code 57 (no permission)');
  t.match(refused.msg, /createVol needs the cluster secret \(header X-CubeFS-Secret/, 'says what is missing and where it goes');
  t.equal(refused.data, null);
  const wrong = JSON.parse((await rawGet(c.addr, path, { 'X-CubeFS-Secret': 'guess' })).body) as { code: number; msg: string };
  t.same([wrong.code, wrong.msg], [57, 'no permission: wrong cluster secret'], 'a wrong secret is refused');
  t.same(c.meta.received.filter((r) => r.op === Op.CreateMetaPartition), [], 'nothing reached the metanode');
  t.same(c.datas.flatMap((d) => d.received.filter((r) => r.op === Op.CreateDataPartition)), [], 'nor a datanode');
  t.equal(JSON.parse((await rawGet(c.addr, `${path}&secret=${encodeURIComponent(SECRET)}`)).body).code, 57, 'the secret in the query does not count');

  const anon = new MasterClient(c.addr, { timeoutMs: 5000 });
  t.teardown(() => anon.close());
  const e = await rejectsWith(t, anon.createVolume('open2', 'eve'), ErrorCode.MasterError);
  t.equal(e.errno, os.constants.errno.EACCES);
  t.match(e.message, /needs the cluster's admin secret/);
  const liar = new MasterClient(c.addr, { timeoutMs: 5000, adminSecret: 'x'.repeat(64) });
  t.teardown(() => liar.close());
  t.match((await rejectsWith(t, liar.createVolume('open2', 'eve'), ErrorCode.MasterError)).message, /not this cluster's/);

  await c.client.createVolume('open1', 'eve', { capacityGB: 1 });
  t.pass('with the secret createVol works');
  t.equal((await c.client.getVolumeAdmin('open1')).Owner, 'eve', 'getVol with the secret shows the owner');
  const hidden = await anon.getVolumeAdmin('open1');
  t.equal(hidden.Owner, '', 'getVol without the secret: Owner is empty');
  t.equal(hidden.EnableTransactionV1, 'rename', 'and the rest is there (the client reads EnableTransactionV1)');
  await rejectsWith(t, liar.getVolumeAdmin('open1'), ErrorCode.MasterError);
  const vol = await Volume.open(anon, 'open1', 'eve', { refreshMs: 0 });
  t.teardown(() => vol.close());
  t.equal(vol.txRename, true, 'a client without the secret opens the volume, transactions and all');
  t.equal((await anon.getClusterIp()).Cluster, 'cfs_local', 'getIp stays open');
  t.ok(await anon.get('/admin/getCluster'), 'getCluster stays open');
  t.equal((await anon.getVolume('open1', 'eve')).Name, 'open1', '/client/vol stays open (it checks the owner)');
});

t.test('createVol is bounded: names, owners, capacity, partitions, volumes', async (t) => {
  const c = await cluster(t);
  const msgOf = async (p: Promise<unknown>): Promise<string> => (await rejectsWith(t, p, ErrorCode.MasterError)).message;
  t.match(await msgOf(c.client.createVolume('x', 'alice')), /name not legal/, 'a one-letter name');
  t.match(await msgOf(c.client.createVolume('a'.repeat(64), 'alice')), /name not legal/, 'a 64-letter name');
  t.match(await msgOf(c.client.createVolume('../etc', 'alice')), /name not legal/, 'a path');
  t.match(await msgOf(c.client.createVolume('v1', 'a b')), /owner not legal/, 'an owner with a space');
  t.match(await msgOf(c.client.createVolume('v1', 'o'.repeat(22))), /owner not legal/, 'a 22-letter owner');
  t.match(await msgOf(c.client.createVolume('v1', 'alice', { capacityGB: 0 })), /bad capacity 0/);
  t.match(await msgOf(c.client.createVolume('v1', 'alice', { capacityGB: 1.5 })), /whole GB/);
  t.match(await msgOf(c.client.createVolume('v1', 'alice', { capacityGB: 2 * 1024 * 1024 })), /bad capacity/);
  t.match(await msgOf(c.client.createVolume('v1', 'alice', { dataPartitions: 65 })), /partition count 65 \(1\.\.64\)/);
  t.match(await msgOf(c.client.createVolume('v1', 'alice', { dataPartitions: 0 })), /partition count 0/);
  t.same(c.meta.received.filter((r) => r.op === Op.CreateMetaPartition), [], 'nothing was created for a refused request');
  for (let i = 0; i < MAX_VOLUMES; i++) await c.master.createVolume(`v${i}`, 'alice', { dataPartitions: 1 });
  t.match(await msgOf(c.client.createVolume('onemore', 'alice', { dataPartitions: 1 })), /at most 64 volumes/, 'the 65th volume is refused');
});
