import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import net from 'node:net';
import { constants as osc } from 'node:os';
import { MetaNode } from '../../src/cluster/metanode.js';
import { MetaClient } from '../../src/meta/client.js';
import { GoMode, newPacket, Op, Result } from '../../src/proto/index.js';
import { PacketConn } from '../../src/transport/tcp.js';
import { nextReqId } from '../../src/transport/reqid.js';
import { CubeFSError } from '../../src/util/errors.js';
import { setup, StaticSource, viewsFor, VOL } from './helpers.js';

const E = osc.errno;
const FILE = 0o644;
const DIR = GoMode.Dir + 0o755;

/** What a promise failed with (a CubeFSError, to match), or a string saying it did not fail as one. */
async function failure(p: Promise<unknown>): Promise<CubeFSError | string> {
  try {
    await p;
    return 'it succeeded';
  } catch (e) {
    return e instanceof CubeFSError ? e : `not a CubeFSError: ${String(e)}`;
  }
}

t.test('root exists; create, lookup and readdir paging of 3,000 entries', async (t) => {
  const { client } = await setup(t);
  const root = await client.inodeGet(1);
  t.equal(root.nlink, 2);
  t.equal(root.mode, GoMode.Dir + 0o777);

  const dir = await client.create(1, 'big', DIR, 0, 0);
  t.equal(dir.nlink, 2);
  t.equal((await client.inodeGet(1)).nlink, 3, 'root counts its child');

  const names: string[] = [];
  for (let i = 0; i < 3000; i++) names.push(`f${String(i).padStart(5, '0')}`);
  const shuffled = [...names].sort(() => Math.random() - 0.5);
  const inos = new Map<string, number>();
  for (let i = 0; i < shuffled.length; i += 100) {
    const batch = shuffled.slice(i, i + 100);
    const infos = await Promise.all(batch.map((n) => client.create(dir.ino, n, FILE, 1000, 1000)));
    batch.forEach((n, j) => inos.set(n, infos[j]!.ino));
  }
  const all = await client.readdir(dir.ino);
  t.equal(all.length, 3000);
  t.same(all.map((d) => d.name), names, 'sorted by name, nothing repeated');
  t.ok(all.every((d) => d.ino === inos.get(d.name) && d.type === FILE));

  const page = await client.readdirLimit(dir.ino, 'f01000', 10);
  t.equal(page.length, 10);
  t.equal(page[0]!.name, 'f01000', 'marker is inclusive');

  const l = await client.lookup(dir.ino, 'f02999');
  t.equal(l.ino, inos.get('f02999'));
  t.equal(l.mode, FILE);
  t.equal((await client.inodeGet(dir.ino)).nlink, 3002);

  const got = await client.batchInodeGet([1, dir.ino, ...[...inos.values()].slice(0, 50)]);
  t.equal(got.length, 52, 'batchInodeGet spans partitions');
  t.ok(got.some((i) => i.ino === 1));

  t.match(await failure(client.create(dir.ino, 'f00001', FILE, 0, 0)), { errno: E.EEXIST });
  t.match(await failure(client.lookup(dir.ino, 'nope')), { errno: E.ENOENT, result: Result.NotExist });
});

t.test('unlink, evict, hard links, rmdir', async (t) => {
  const { client } = await setup(t);
  const f = await client.create(1, 'a', FILE, 0, 0);
  const l = await client.link(1, 'b', f.ino);
  t.equal(l.nlink, 2);
  t.equal((await client.inodeGet(f.ino)).nlink, 2);
  t.equal((await client.lookup(1, 'b')).ino, f.ino);

  const after1 = await client.unlink(1, 'a', false);
  t.equal(after1?.nlink, 1);
  const after2 = await client.unlink(1, 'b', false);
  t.equal(after2?.nlink, 0);
  await client.evictInode(f.ino);
  t.match(await failure(client.inodeGet(f.ino)), { errno: E.ENOENT });
  t.equal((await client.inodeGet(1)).nlink, 2);

  const d = await client.create(1, 'd', DIR, 0, 0);
  await client.create(d.ino, 'x', FILE, 0, 0);
  t.match(await failure(client.unlink(1, 'd', true)), { errno: E.ENOTEMPTY });
  t.match(await failure(client.unlink(1, 'd', false)), { errno: E.EISDIR });
  await client.unlink(d.ino, 'x', false);
  const gone = await client.unlink(1, 'd', true);
  t.equal(gone?.nlink, 0);
  await client.evictInode(d.ino);
  t.same(await client.readdir(1), []);
});

for (const transactions of [false, true]) {
  t.test(`rename ${transactions ? 'with' : 'without'} transactions`, async (t) => {
    const { client } = await setup(t, { transactions });
    const a = await client.create(1, 'a', FILE, 0, 0);
    const b = await client.create(1, 'b', FILE, 0, 0);
    // a directory in another partition than its parent
    let far = await client.create(1, 'far', DIR, 0, 0);
    while (far.ino < 4194305) far = await client.create(1, `far${far.ino}`, DIR, 0, 0);

    const r1 = await client.rename(1, 'a', 1, 'a2');
    t.equal(r1.overwritten, null);
    t.equal((await client.lookup(1, 'a2')).ino, a.ino);
    t.match(await failure(client.lookup(1, 'a')), { errno: E.ENOENT });
    t.equal((await client.inodeGet(a.ino)).nlink, 1);

    const r2 = await client.rename(1, 'a2', 1, 'b');
    t.equal(r2.overwritten?.ino, b.ino, 'overwritten inode returned');
    t.equal(r2.overwritten?.nlink, 0);
    await client.evictInode(b.ino);
    t.equal((await client.lookup(1, 'b')).ino, a.ino);

    const rootBefore = (await client.inodeGet(1)).nlink;
    await client.rename(1, 'b', far.ino, 'moved');
    t.equal((await client.lookup(far.ino, 'moved')).ino, a.ino);
    t.equal((await client.inodeGet(1)).nlink, rootBefore - 1);
    t.equal((await client.inodeGet(far.ino)).nlink, 3);
    t.same((await client.readdir(far.ino)).map((d) => d.name), ['moved']);

    const d2 = await client.create(1, 'd2', DIR, 0, 0);
    t.match(await failure(client.rename(1, 'd2', far.ino, 'moved')), { errno: E.ENOTDIR });
    await client.create(1, 'plain', FILE, 0, 0);
    t.match(await failure(client.rename(1, 'plain', 1, 'd2')), { errno: E.EISDIR });
    t.match(await failure(client.rename(1, 'd2', 1, 'far')), { errno: E.ENOTEMPTY });
    await client.create(1, 'empty', DIR, 0, 0);
    const r3 = await client.rename(1, 'd2', 1, 'empty');
    t.equal(r3.overwritten?.nlink, 0, 'empty dir replaced');
    t.equal((await client.lookup(1, 'empty')).ino, d2.ino);
    t.match(await failure(client.rename(1, 'missing', 1, 'x')), { errno: E.ENOENT });
  });
}

t.test('xattrs, setattr, truncate, extent keys', async (t) => {
  const { client } = await setup(t);
  const f = await client.create(1, 'f', FILE, 5, 6);
  await client.setXAttr(f.ino, 'user.a', Buffer.from('hello'));
  await client.setXAttr(f.ino, 'user.b', Buffer.from(''));
  t.same(await client.getXAttr(f.ino, 'user.a'), Buffer.from('hello'));
  t.same(await client.getXAttr(f.ino, 'user.b'), Buffer.alloc(0), 'empty value is not absent');
  t.equal(await client.getXAttr(f.ino, 'user.none'), null);
  t.same((await client.listXAttr(f.ino)).sort(), ['user.a', 'user.b']);
  await client.removeXAttr(f.ino, 'user.a');
  t.same(await client.listXAttr(f.ino), ['user.b']);

  await client.setattr(f.ino, { mode: 0o600, uid: 7, mtime: 1_000_000_000 });
  const s = await client.inodeGet(f.ino);
  t.equal(s.mode, 0o600);
  t.equal(s.uid, 7);
  t.equal(s.gid, 6, 'gid untouched');
  t.equal(s.mt, '2001-09-09T01:46:40Z');

  const ek = (off: number, eid: number, size: number, eoff = 0) => ({ FileOffset: off, PartitionId: 1, ExtentId: eid, ExtentOffset: eoff, Size: size, CRC: 0 });
  await client.appendExtentKey(f.ino, ek(0, 1024, 100));
  await client.appendExtentKey(f.ino, ek(100, 1025, 100));
  await client.appendExtentKey(f.ino, ek(0, 1024, 100), []);
  let l = await client.listExtents(f.ino);
  t.equal(l.size, 200);
  t.equal(l.extents.length, 2, 'a repeated key is not added twice');

  // overwrite the middle: split the first key, cover part of the second
  await client.appendExtentKey(f.ino, ek(50, 1026, 100));
  l = await client.listExtents(f.ino);
  t.same(l.extents.map((k) => [k.FileOffset, k.ExtentId, k.ExtentOffset, k.Size]), [[0, 1024, 0, 50], [50, 1026, 0, 100], [150, 1025, 50, 50]]);
  const gen = l.gen;

  // a key that fully covers 1026 with the right discard list, then a stale one
  await client.appendExtentKey(f.ino, ek(50, 1027, 100), [ek(50, 1026, 100)]);
  t.match(await failure(client.appendExtentKey(f.ino, ek(0, 1028, 10), [ek(0, 9999, 10)])), { result: Result.ConflictExtents });

  await client.truncate(f.ino, 120);
  l = await client.listExtents(f.ino);
  t.equal(l.size, 120);
  t.ok(l.gen > gen);
  t.same(l.extents.map((k) => [k.FileOffset, k.ExtentId, k.Size]), [[0, 1024, 50], [50, 1027, 70]]);
  t.equal((await client.inodeGet(f.ino)).sz, 120);

  const u1 = await client.getUniqId(f.ino, 10);
  const u2 = await client.getUniqId(f.ino, 1);
  t.equal(u2, u1 + 10);
});

t.test('durability across restart', async (t) => {
  const env = await setup(t);
  const { client } = env;
  const d = await client.create(1, 'keep', DIR, 0, 0);
  const f = await client.create(d.ino, 'file', FILE, 0, 0);
  await client.setXAttr(f.ino, 'user.k', Buffer.from('v'));
  await client.appendExtentKey(f.ino, { FileOffset: 0, PartitionId: 3, ExtentId: 1030, ExtentOffset: 0, Size: 4096, CRC: 0 });
  await client.create(1, 'gone', FILE, 0, 0);
  await client.unlink(1, 'gone', false);
  await env.node.stop();

  const node2 = new MetaNode({ dir: env.dir });
  const addr2 = await node2.start();
  t.teardown(() => node2.stop());
  const c2 = new MetaClient({ vol: VOL, source: new StaticSource(viewsFor(addr2)) });
  t.teardown(() => c2.close());
  t.equal((await c2.lookup(1, 'keep')).ino, d.ino);
  t.equal((await c2.lookup(d.ino, 'file')).ino, f.ino);
  t.same(await c2.getXAttr(f.ino, 'user.k'), Buffer.from('v'));
  const l = await c2.listExtents(f.ino);
  t.equal(l.size, 4096);
  t.equal(l.extents[0]?.ExtentId, 1030);
  t.match(await failure(c2.lookup(1, 'gone')), { errno: E.ENOENT });
  const n = await c2.create(1, 'new', FILE, 0, 0);
  t.not(n.ino, f.ino, 'inode numbers are not reused');
  t.equal((await c2.inodeGet(1)).nlink, 4);
  await node2.stop();

  // and a third start sees what the second one wrote
  const node3 = new MetaNode({ dir: env.dir });
  const addr3 = await node3.start();
  t.teardown(() => node3.stop());
  const c3 = new MetaClient({ vol: VOL, source: new StaticSource(viewsFor(addr3)) });
  t.teardown(() => c3.close());
  t.equal((await c3.lookup(1, 'new')).ino, n.ino);
});

t.test('leader retry: a dead leader and a live member', async (t) => {
  const { addr } = await setup(t);
  const dead = net.createServer();
  await new Promise<void>((r) => dead.listen(0, '127.0.0.1', () => r()));
  const deadAddr = `127.0.0.1:${(dead.address() as net.AddressInfo).port}`;
  await new Promise<void>((r) => dead.close(() => r()));
  const source = new StaticSource(viewsFor(deadAddr, [deadAddr, addr]));
  const c = new MetaClient({ vol: VOL, source, timeoutMs: 2000 });
  t.teardown(() => c.close());
  const f = await c.create(1, 'via-follower', FILE, 0, 0);
  t.equal((await c.lookup(1, 'via-follower')).ino, f.ino);

  const lonely = new MetaClient({ vol: VOL, source: new StaticSource(viewsFor(deadAddr)), retryBudgetMs: 300 });
  t.teardown(() => lonely.close());
  t.match(await failure(lonely.inodeGet(1)), { code: 'CUBEFS_NETWORK' }, 'gives up when no member answers');
});

t.test('malformed and misrouted requests get error replies', async (t) => {
  const { addr, client } = await setup(t);
  const c = await PacketConn.connect(addr);
  t.teardown(() => c.close());
  const send = (op: number, pid: number, data: string) =>
    c.request(newPacket({ opcode: op, partitionId: pid, reqId: nextReqId(), data: Buffer.from(data) }));
  let r = await send(Op.MetaCreateInode, 1, '{"vol":"ltptest","pid":1,"mode":');
  t.equal(r.resultCode, Result.ArgMismatch);
  t.match(r.data.toString(), /malformed JSON/);
  r = await send(Op.MetaLookup, 1, '{"vol":"ltptest","pid":1,"pino":"x","name":"a"}');
  t.equal(r.resultCode, Result.ArgMismatch);
  r = await send(Op.MetaInodeGet, 42, '{"vol":"ltptest","pid":42,"ino":1}');
  t.equal(r.resultCode, Result.Err, 'a partition it does not host: Err, as upstream\'s current metanode answers');
  t.match(r.data.toString(), /partition 42 is not hosted/);
  r = await send(Op.MetaCreateDentry, 1, '{"vol":"ltptest","pid":1,"pino":1,"ino":5,"name":"a/b","mode":420}');
  t.equal(r.resultCode, Result.ArgMismatch);
  r = await send(Op.MetaNodeHeartbeat, 0, '');
  t.equal(r.resultCode, Result.Ok);
  const hb = JSON.parse(r.data.toString());
  t.equal(hb.Partitions.length, 3);
  t.equal((await client.inodeGet(1)).ino, 1, 'the node still serves');
});

t.test('tx locks, rollback, and UnlinkInode retried with the same unique id', async (t) => {
  const { addr, client } = await setup(t);
  const f = await client.create(1, 'held', FILE, 0, 0);
  const c = await PacketConn.connect(addr);
  t.teardown(() => c.close());
  const send = async (op: number, pid: number, body: unknown) => {
    const r = await c.request(newPacket({ opcode: op, partitionId: pid, reqId: nextReqId(), data: Buffer.from(JSON.stringify(body)) }));
    return { rc: r.resultCode, body: r.resultCode === Result.Ok && r.data.length ? JSON.parse(r.data.toString()) : null, text: r.data.toString() };
  };
  const created = await send(Op.MetaTxCreate, 1, { vol: VOL, pid: 1, tx: { TxID: '', TxType: 4, TmID: 1, Timeout: 1, TxInodeInfos: {}, TxDentryInfos: {} } });
  t.equal(created.rc, Result.Ok);
  const tx = created.body.tx;
  t.match(tx.TxID, /^1_\d+$/);
  const del = await send(Op.MetaTxDeleteDentry, 1, { vol: VOL, pid: 1, pino: 1, name: 'held', ino: f.ino, tx });
  t.equal(del.rc, Result.Ok);
  t.equal(del.body.ino, f.ino);
  t.match(await failure(client.deleteDentry(1, 'held')), { result: Result.TxConflict }, 'a staged dentry is locked');
  t.equal((await client.lookup(1, 'held')).ino, f.ino, 'not applied before commit');
  const rb = await send(Op.TxRollback, 1, { tx: tx.TxID, tmid: 1, type: 2 });
  t.equal(rb.rc, Result.Ok);
  t.equal((await send(Op.TxCommit, 1, { tx: tx.TxID, tmid: 1, type: 1 })).rc, Result.NotExist, 'a rolled-back tx cannot commit');
  t.equal(await client.deleteDentry(1, 'held'), f.ino, 'lock released by rollback');

  const start = await client.getUniqId(f.ino, 1);
  const u1 = await send(Op.MetaUnlinkInode, 1, { vol: VOL, pid: 1, ino: f.ino, uid: start });
  const u2 = await send(Op.MetaUnlinkInode, 1, { vol: VOL, pid: 1, ino: f.ino, uid: start });
  t.equal(u1.body.info.nlink, 0);
  t.equal(u2.rc, Result.Ok);
  t.equal(u2.body.info.nlink, 0, 'a retry does not unlink twice');
  const l = await client.linkInode((await client.create(1, 'x', FILE, 0, 0)).ino);
  t.equal(l.nlink, 2);
});

t.test('InodeFull: createInode moves on to the next read-write partition', async (t) => {
  const dir = fs.mkdtempSync(os.tmpdir() + '/cubefs-');
  const node = new MetaNode({ dir });
  const addr = await node.start();
  t.teardown(async () => {
    await node.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const c = await PacketConn.connect(addr);
  t.teardown(() => c.close());
  for (const body of [
    `{"VolName":"small","PartitionID":1,"Start":0,"End":3,"Members":["${addr}"]}`,
    `{"VolName":"small","PartitionID":2,"Start":4,"End":9223372036854775807,"Members":["${addr}"]}`,
    `{"VolName":"small","PartitionID":2,"Start":4,"End":9223372036854775807,"Members":["${addr}"]}`,
  ]) {
    const r = await c.request(newPacket({ opcode: 0x40, reqId: nextReqId(), data: Buffer.from(body) }));
    t.equal(r.resultCode, Result.Ok, 'CreateMetaPartition (idempotent)');
  }
  const views = [
    { PartitionID: 1, Start: 0, End: 3, Members: [addr], LeaderAddr: addr, Status: 2 },
    { PartitionID: 2, Start: 4, End: 2 ** 63, Members: [addr], LeaderAddr: addr, Status: 2 },
  ];
  const mc = new MetaClient({ vol: 'small', source: new StaticSource(views) });
  t.teardown(() => mc.close());
  const inos: number[] = [];
  for (let i = 0; i < 6; i++) inos.push((await mc.create(1, `f${i}`, FILE, 0, 0)).ino);
  t.ok(inos.includes(2) && inos.includes(3), 'partition 1 filled');
  t.equal(new Set(inos).size, 6);
  t.ok(inos.filter((i) => i > 4).length === 4, 'the rest from partition 2');
  t.equal((await mc.readdir(1)).length, 6);
});
