/**
 * The metanode's log under faults, for real: its directory on a small tmpfs that fills up; a torn record
 * left at the end of the log; a damaged record in the middle. Write-ahead: a change that cannot be logged is
 * refused (NoSpace: ENOSPC for the one request) and changes nothing; a torn tail is cut at start; the
 * metanode starts on a full disk and serves reads.
 */
import fs from 'node:fs';
import path from 'node:path';
import { constants as osc } from 'node:os';
import t, { type Test } from 'tap';
import { MetaNode } from '../../src/cluster/metanode.js';
import { MetaClient } from '../../src/meta/client.js';
import { setReportSink } from '../../src/util/log.js';
import { failure, tempDir } from '../support/cluster.js';
import { fill, smallTmpfs } from '../support/tmpfs.js';
import { droppingProxy } from '../support/wire-proxy.js';
import { createPartitions, Op, StaticSource, viewsFor, VOL } from './helpers.js';

const E = osc.errno;
const FILE = 0o644; // a regular file's Go mode: permission bits only

/** Operator warnings said during the test. */
function warnings(t: Test): string[] {
  const said: string[] = [];
  const prev = setReportSink((l) => said.push(l));
  t.teardown(() => { setReportSink(prev); });
  return said;
}

async function start(t: Test, dir: string, listen?: string): Promise<{ node: MetaNode; addr: string; client: MetaClient }> {
  const node = new MetaNode({ dir, ...(listen ? { listen } : {}) });
  const addr = await node.start();
  t.teardown(() => node.stop());
  const client = new MetaClient({ vol: VOL, source: new StaticSource(viewsFor(addr)), retryBudgetMs: 2000 });
  t.teardown(() => client.close());
  return { node, addr, client };
}

t.test('a full disk: each change is refused with ENOSPC and changes nothing; with room again, everything goes on', async (t) => {
  const said = warnings(t);
  const dir = smallTmpfs(t, 4);
  let m = await start(t, dir);
  await createPartitions(m.addr);
  const a = await m.client.create(1, 'before', FILE, 0, 0);
  const filler = fill(dir);
  // The log's last page may still have room for a few records: fill that, up to the first refusal.
  let fit = 0;
  for (; fit < 200; fit++) {
    const ok = await m.client.create(1, `fits-${fit}`, FILE, 0, 0).then(() => true, (e: { errno?: number }) => {
      if (e.errno !== E.ENOSPC) throw e;
      return false;
    });
    if (!ok) break;
  }
  t.ok(fit < 200, `the disk is full after ${fit} more creates`);
  let refused = 0;
  for (let i = 0; i < 50; i++) {
    const e = await failure(m.client.create(1, `full-${i}`, FILE, 0, 0));
    if ((e as { errno?: number }).errno === E.ENOSPC) refused++;
  }
  t.equal(refused, 50, 'every create on the full disk: ENOSPC');
  t.equal((await m.client.lookup(1, 'before')).ino, a.ino, 'reads go on');
  t.match(await failure(m.client.lookup(1, 'full-0')), { errno: E.ENOENT }, 'a refused create left no name');
  t.match(await failure(m.client.lookup(1, `fits-${fit}`)), { errno: E.ENOENT }, 'nor did the first refused one');
  t.ok(said.some((l) => /WARN no space for the log/.test(l)), 'the operator is told, once');
  t.equal(said.filter((l) => /no space for the log/.test(l)).length, 1, 'once, not 50 times');
  fs.rmSync(filler);
  const b = await m.client.create(1, 'after', FILE, 0, 0);
  t.ok(b.ino > a.ino, 'with room again, a create succeeds');
  // Restart: the log replays (no torn record was left behind by the refused writes).
  await m.node.stop();
  m = await start(t, dir, m.addr);
  t.equal((await m.client.lookup(1, 'after')).ino, b.ino, 'after a restart: what was acknowledged is there');
  t.match(await failure(m.client.lookup(1, 'full-7')), { errno: E.ENOENT }, 'and nothing that was refused');
});

t.test('the metanode starts on a full disk: reads served, changes refused with ENOSPC', async (t) => {
  const said = warnings(t);
  const dir = smallTmpfs(t, 4);
  let m = await start(t, dir);
  await createPartitions(m.addr);
  const a = await m.client.create(1, 'x', FILE, 0, 0);
  await m.node.stop();
  const filler = fill(dir);
  m = await start(t, dir, m.addr);
  t.equal((await m.client.lookup(1, 'x')).ino, a.ino, 'started, and serves reads');
  t.match(await failure(m.client.create(1, 'y', FILE, 0, 0)), { errno: E.ENOSPC }, 'a change: ENOSPC');
  t.ok(said.some((l) => /no snapshot written/.test(l) || /no space for the log/.test(l)), 'the operator is told');
  fs.rmSync(filler);
  t.ok((await m.client.create(1, 'y', FILE, 0, 0)).ino > 0, 'room again: changes go on');
});

t.test('a torn record at the end of the log is cut off at start; a damaged one in the middle stops the start', async (t) => {
  const said = warnings(t);
  const dir = tempDir(t);
  let m = await start(t, dir);
  await createPartitions(m.addr);
  const a = await m.client.create(1, 'kept', FILE, 0, 0);
  // Stop without the snapshot a clean stop writes: what a kill leaves (the log as it is).
  const log = path.join(dir, 'meta.log');
  const logged = fs.readFileSync(log);
  await m.node.stop();
  fs.rmSync(path.join(dir, 'meta.snap'), { force: true });
  fs.writeFileSync(log, Buffer.concat([logged, Buffer.from('0badc0de [{"k":"I","p":1,"v":{"ino":99')]));
  m = await start(t, dir, m.addr);
  t.equal((await m.client.lookup(1, 'kept')).ino, a.ino, 'the records before the torn one are there');
  t.ok(said.some((l) => /cut off a torn record of \d+ bytes at offset \d+/.test(l)), 'the cut is said');
  await m.node.stop();
  // A damaged record with a good one after it is not a torn tail.
  const lines = logged.toString().split('\n').filter(Boolean);
  t.ok(lines.length >= 2, 'the log has several records');
  fs.rmSync(path.join(dir, 'meta.snap'), { force: true });
  lines[0] = lines[0]!.replace(/^[0-9a-f]{8}/, 'ffffffff');
  fs.writeFileSync(log, lines.join('\n') + '\n');
  const bad = new MetaNode({ dir });
  const e = await failure(bad.start());
  t.match(e.message, /record 1 at offset 0 is damaged .*good records follow it: refusing to start/, 'start refuses, saying where');
});

t.test('a file of 2,000 extent keys: each key added is one small log record, and a replay after a kill rebuilds the same list', async (t) => {
  const dir = tempDir(t);
  let m = await start(t, dir);
  await createPartitions(m.addr);
  const f = await m.client.create(1, 'sparse', FILE, 0, 0);
  const log = path.join(dir, 'meta.log');
  // 4 KiB writes at scattered offsets of a 64 MiB file, some landing on ranges written before (the new key
  // covers or splits older ones), as random writes into a sparse file record them.
  let seed = 7;
  const rand = (n: number): number => { seed = (seed * 48271) % 2147483647; return seed % n; };
  const sizes: number[] = [];
  for (let i = 0; i < 2000; i++) {
    const at = rand(16384) * 4096 + (i % 3 === 0 ? 2048 : 0);
    const before = fs.statSync(log).size;
    await m.client.appendExtentKey(f.ino, { FileOffset: at, PartitionId: 1, ExtentId: 1024 + i, ExtentOffset: 0, Size: 4096, CRC: 0 });
    sizes.push(fs.statSync(log).size - before);
  }
  const listed = await m.client.listExtents(f.ino);
  t.ok(listed.extents.length > 1500, `${listed.extents.length} keys recorded`);
  const first = Math.max(...sizes.slice(0, 100)), last = Math.max(...sizes.slice(-100));
  t.ok(last < 1024, `the 2,000th key's record is as small as the first's (${first} and ${last} bytes), not the whole list`);
  // What a kill leaves: the log as it is, no snapshot.
  const logged = fs.readFileSync(log);
  await m.node.stop();
  fs.rmSync(path.join(dir, 'meta.snap'), { force: true });
  fs.writeFileSync(log, logged);
  m = await start(t, dir, m.addr);
  const replayed = await m.client.listExtents(f.ino);
  t.same(replayed.extents, listed.extents, 'the replayed list is the one served before, key for key');
  t.equal(replayed.size, listed.size, 'and so is the size');
});

t.test('replies lost on the way back: a create keeps its name and inode, a link and an unlink count once', async (t) => {
  const dir = tempDir(t);
  const node = new MetaNode({ dir });
  const addr = await node.start();
  t.teardown(() => node.stop());
  await createPartitions(addr);
  const direct = new MetaClient({ vol: VOL, source: new StaticSource(viewsFor(addr)) });
  t.teardown(() => direct.close());
  const proxy = await droppingProxy(t, '127.0.0.1', addr, () => false);
  const client = new MetaClient({ vol: VOL, source: new StaticSource(viewsFor(proxy.addr)), retryBudgetMs: 1500, timeoutMs: 300 });
  t.teardown(() => client.close());

  // Every CreateDentry is applied, and no reply comes back: the retries run out not knowing.
  proxy.drop = (p) => p.opcode === Op.MetaCreateDentry;
  const made = await client.create(1, 'lost-reply', FILE, 0, 0);
  t.ok(proxy.dropped > 0, `${proxy.dropped} CreateDentry replies lost`);
  t.equal((await direct.lookup(1, 'lost-reply')).ino, made.ino, 'the create succeeds: the lookup found its own dentry');
  t.equal((await direct.inodeGet(made.ino)).nlink, 1, 'and the inode was not rolled back under it');

  // Now the lookup cannot tell either: EIO, and nothing rolled back (the name may exist).
  proxy.drop = (p) => p.opcode === Op.MetaCreateDentry || p.opcode === Op.MetaLookup;
  t.match(await failure(client.create(1, 'unknown', FILE, 0, 0)), { errno: E.EIO }, 'an outcome nobody can tell: EIO');
  const u = await direct.lookup(1, 'unknown');
  t.equal((await direct.inodeGet(u.ino)).nlink, 1, 'the name that was made points at a live inode');

  // A definite refusal still rolls back: the name exists with another inode.
  proxy.drop = () => false;
  t.match(await failure(client.create(1, 'lost-reply', FILE, 0, 0)), { errno: E.EEXIST }, 'EEXIST for a name that exists');
  t.equal((await direct.lookup(1, 'lost-reply')).ino, made.ino, 'the existing name is untouched');

  // LinkInode and UnlinkInode carry a unique id: a retry after a lost reply is applied once.
  let lost = 0;
  proxy.drop = (p) => p.opcode === Op.MetaLinkInode && lost++ === 0;
  await client.link(1, 'second-name', made.ino);
  t.equal((await direct.inodeGet(made.ino)).nlink, 2, 'a LinkInode retried after a lost reply counts once');

  // An UnlinkInode that cannot get through after the name is gone: the unlink succeeds, the link count
  // comes down in the background once the metanode answers again.
  proxy.drop = (p) => p.opcode === Op.MetaUnlinkInode;
  const later = new Promise<number>((resolve) => { client.onDeferredUnlink = (info) => resolve(info.nlink); });
  t.equal(await client.unlink(1, 'second-name', false), null, 'unlink answers once the name is gone');
  t.match(await failure(direct.lookup(1, 'second-name')), { errno: E.ENOENT }, 'the name is gone');
  proxy.drop = () => false;
  t.equal(await later, 1, 'the deferred UnlinkInode went through');
  t.equal((await direct.inodeGet(made.ino)).nlink, 1, 'once: the other name still holds the inode');
});
