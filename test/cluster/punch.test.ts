/**
 * Deleted ranges of tiny extents give their disk space back: the addon's punchHole (fallocate PUNCH_HOLE |
 * KEEP_SIZE), the extent store's MarkDelete of a tiny range on a real file system (blocks go, the size
 * stays, the other ranges read back intact, a live piece right after a released one keeps its bytes), the
 * fallback to zeros where holes cannot be punched (ramfs), and the whole path: small files deleted through
 * a client, or truncated shorter (the cut tails go), the metanode's reclaimer, MarkDelete on the three
 * datanodes.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import type { Test } from 'tap';
import type { EmbeddedCluster } from '../../src/cluster/launcher.js';
import { ExtentStore, TINY_ALIGN } from '../../src/cluster/extent-store.js';
import { punchHole } from '../../src/cluster/punch-hole.js';
import { setReportSink } from '../../src/util/log.js';
import { connect, pattern, startCluster, tempDir } from '../support/cluster.js';
import { until } from '../support/wait.js';

const alignUp = (n: number): number => Math.ceil(n / TINY_ALIGN) * TINY_ALIGN;
/** Bytes the file takes on disk. */
const allocated = (f: string): number => fs.statSync(f).blocks * 512;
const meta = { VolName: 'v', PartitionID: 1, Hosts: ['a:1'] };

t.test('punchHole: frees the range and keeps the size; bad arguments are TypeErrors, a failure has code and errno', async (t) => {
  const dir = tempDir(t);
  const f = path.join(dir, 'f');
  fs.writeFileSync(f, pattern(64 * 1024, 1));
  const fd = fs.openSync(f, 'r+');
  fs.fdatasyncSync(fd);
  const before = allocated(f);
  punchHole(fd, 16 * 1024, 32 * 1024);
  punchHole(fd, 0, 0); // nothing to punch: no error
  fs.closeSync(fd);
  t.equal(fs.statSync(f).size, 64 * 1024, 'the size stays');
  t.equal(before - allocated(f), 32 * 1024, `32 KiB given back (${before} -> ${allocated(f)} bytes allocated)`);
  t.ok(fs.readFileSync(f).subarray(16 * 1024, 48 * 1024).equals(Buffer.alloc(32 * 1024)), 'the hole reads as zeros');

  for (const args of [[-1, 0, 1], [1.5, 0, 1], [3, -4096, 1], [3, 0, NaN], [3, 0, Infinity], [3, 2 ** 53, 1], ['3', 0, 1], [3, 0]]) {
    t.throws(() => (punchHole as (...a: unknown[]) => void)(...args), TypeError, `punchHole(${args.map(String).join(', ')}) is a TypeError`);
  }
  const closed = fs.openSync(f, 'r+');
  fs.closeSync(closed);
  t.throws(() => punchHole(closed, 0, 4096), { code: 'EBADF', errno: os.constants.errno.EBADF, syscall: 'fallocate' }, 'a closed fd: EBADF');
});

t.test('MarkDelete of tiny ranges punches holes: blocks go, size stays, the other ranges read back intact', async (t) => {
  const dir = tempDir(t);
  const store = await ExtentStore.open(dir, meta, true);
  t.teardown(() => store.close());
  const sizes = [1000, 4096, 5000, 12288, 300, 70_000, 8193, 1, 4095, 20_000];
  const ranges: { off: number; data: Buffer }[] = [];
  let off = 0;
  for (const [i, n] of sizes.entries()) {
    const data = pattern(n, i + 1);
    data[0] = data[n - 1] = 0xa5; // no range starts or ends with a zero byte by chance
    await store.write(1, off, data, true);
    ranges.push({ off, data });
    off = alignUp(off + n);
  }
  const file = store.file(1);
  const size = fs.statSync(file).size;
  const before = allocated(file);
  // At least its blocks; the file system may hold a block more (its own metadata), which the deletes below
  // do not give back.
  const written = sizes.reduce((s, n) => s + alignUp(n), 0);
  t.ok(before >= written && before <= written + 64 * 1024, `every range takes its 4 KiB blocks (${before} bytes allocated for ${written})`);

  const gone = [0, 2, 3, 5, 7, 9];
  for (const i of gone) await store.markDelete(1, ranges[i]!.off, ranges[i]!.data.length);
  const freed = gone.reduce((s, i) => s + alignUp(ranges[i]!.data.length), 0);
  const after = allocated(file);
  // Exactly, but for one block: holes split the file's extents, and past four of them ext4 takes a block for
  // its extent tree, which st_blocks counts too.
  t.ok(before - after >= freed - 4096 && before - after <= freed,
    `blocks shrink by what was deleted: ${before} -> ${after} bytes allocated (${freed} deleted)`);
  t.equal(fs.statSync(file).size, size, 'the extent keeps its size');
  t.equal(store.sizeOf(1), size, 'and so does the store');
  for (const [i, r] of ranges.entries()) {
    const got = await store.read(1, r.off, alignUp(r.data.length));
    if (gone.includes(i)) t.ok(got.equals(Buffer.alloc(got.length)), `deleted range ${i} (${r.data.length} bytes) reads as zeros`);
    else t.ok(got.equals(Buffer.concat([r.data, Buffer.alloc(got.length - r.data.length)])), `range ${i} (${r.data.length} bytes) reads back intact`);
  }

  await store.markDelete(1, ranges[0]!.off, ranges[0]!.data.length);
  t.equal(allocated(file), after, 'deleting a range again changes nothing');
  const next = store.reserveTiny(10); // round robin: extent 1 first
  t.same(next, { id: 1, offset: off }, 'the append cursor is where it was');
  await store.close();
  const again = await ExtentStore.open(dir, meta, false);
  t.teardown(() => again.close());
  t.same(again.reserveTiny(10), { id: 1, offset: off }, 'and where it was after a restart');
});

t.test('a released piece of a split key: a live piece next to it in the same 4 KiB block keeps its bytes', async (t) => {
  const dir = tempDir(t);
  const store = await ExtentStore.open(dir, meta, true);
  t.teardown(() => store.close());
  const data = pattern(3000, 7).fill(0x5a, 0, 3000);
  await store.write(2, 0, data, true);
  // An overwrite of file bytes [100, 200) recorded elsewhere split the key into [0, 100) and [200, 3000);
  // then [0, 100) was overwritten elsewhere too and released.
  await store.markDelete(2, 0, 100);
  const got = await store.read(2, 0, 3000);
  t.ok(got.subarray(0, 100).equals(Buffer.alloc(100)), 'the released piece reads as zeros');
  t.ok(got.subarray(100).equals(data.subarray(100)), 'the bytes after it are untouched');
  // The live piece goes later. The overwritten middle [100, 200) is not released here (the metanode releases
  // it as a range of its own), so its old bytes keep the block: they are not known here to be dead.
  await store.markDelete(2, 200, 2800);
  const left = await store.read(2, 0, 3000);
  t.ok(left.subarray(100, 200).equals(data.subarray(100, 200)) && left.subarray(200).equals(Buffer.alloc(2800)),
    'the piece reads as zeros, the bytes not released stay');
  t.equal(allocated(store.file(2)), TINY_ALIGN, 'and so does their block');

  // A write over an edge while it is checked and punched, either way round: the written bytes stay.
  await store.write(3, 0, Buffer.alloc(3000, 0x11), true);
  const w = store.write(3, 2500, Buffer.alloc(500, 0x22), false);
  const d = store.markDelete(3, 0, 2000); // the check waits for the write in flight: [2000, 4096) is not zeros
  await Promise.all([w, d]);
  await store.write(4, 0, Buffer.alloc(1000, 0x11), true);
  const d2 = store.markDelete(4, 0, 1000); // [1000, 4096) is zeros when checked ...
  const w2 = store.write(4, 3000, Buffer.alloc(500, 0x22), false); // ... and a write there waits for the punch
  await Promise.all([d2, w2]);
  t.ok((await store.read(3, 2500, 500)).equals(Buffer.alloc(500, 0x22)), 'a write in flight before the check stays');
  t.ok((await store.read(3, 2000, 500)).equals(Buffer.alloc(500, 0x11)), 'and the bytes before it');
  t.ok((await store.read(3, 0, 2000)).equals(Buffer.alloc(2000)), 'the deleted range reads as zeros');
  t.ok((await store.read(4, 3000, 500)).equals(Buffer.alloc(500, 0x22)), 'a write that came after the check began stays');
  t.ok((await store.read(4, 0, 3000)).equals(Buffer.alloc(3000)), 'the deleted range reads as zeros');

  // A live piece before a released one (the key split the other way): the head of the block stays.
  await store.write(5, 0, Buffer.alloc(3000, 0x44), true);
  await store.markDelete(5, 1000, 2000);
  t.ok((await store.read(5, 0, 1000)).equals(Buffer.alloc(1000, 0x44)), 'the live piece before the released one keeps its bytes');
  await store.markDelete(5, 0, 1000);
  t.equal(allocated(store.file(5)), 0, 'once it goes too, so does the block');
});

/** A ramfs (no hole punching) of the test's own, unmounted in teardown. */
function ramfs(t: Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cubefs-ramfs-'));
  const r = spawnSync('mount', ['-t', 'ramfs', '-o', 'mode=0755', 'cubefs-test-ramfs', dir], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`mount -t ramfs failed: ${r.stderr || r.error?.message} (the test needs root)`);
  t.teardown(() => {
    spawnSync('umount', ['-l', dir]);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

t.test('a file system that cannot punch holes: the range is zeroed instead, and that is said once', async (t) => {
  const dir = ramfs(t);
  const lines: string[] = [];
  const prev = setReportSink((l) => lines.push(l));
  t.teardown(() => { setReportSink(prev); });
  const stores = await Promise.all([1, 2].map((p) => ExtentStore.open(dir, { ...meta, PartitionID: p }, true)));
  t.teardown(() => Promise.all(stores.map((s) => s.close())));
  for (const s of stores) {
    await s.write(5, 0, Buffer.alloc(6000, 0x33), false);
    await s.markDelete(5, 0, 2000);
    await s.markDelete(5, 4096, 1000);
    const got = await s.read(5, 0, 6000);
    t.ok(got.subarray(0, 2000).equals(Buffer.alloc(2000)) && got.subarray(4096, 5096).equals(Buffer.alloc(1000)), 'the deleted ranges read as zeros');
    t.ok(got.subarray(2000, 4096).equals(Buffer.alloc(2096, 0x33)) && got.subarray(5096).equals(Buffer.alloc(904, 0x33)), 'the rest is intact');
    t.equal(fs.statSync(s.file(5)).size, 6000, 'the size stays');
  }
  const said = lines.filter((l) => l.includes('cannot punch holes'));
  t.equal(said.length, 1, `said once for the disk: ${said[0]?.trim()}`);
  t.match(said[0], /WARN .*Operation not supported.*zeroed instead/);
});

/** Bytes on disk of the tiny extents (ids 1..64) of each datanode. */
function tinyBlocks(c: EmbeddedCluster): number[] {
  return [1, 2, 3].map((i) => {
    let n = 0;
    const walk = (d: string): void => {
      for (const e of fs.readdirSync(d, { withFileTypes: true })) {
        const p = path.join(d, e.name);
        if (e.isDirectory()) walk(p);
        else if (/^\d+$/.test(e.name) && Number(e.name) <= 64) n += allocated(p);
      }
    };
    const root = path.join(c.dir, `datanode${i}`);
    if (fs.existsSync(root)) walk(root);
    return n;
  });
}

t.test('small files deleted through a client: their tiny-extent blocks go on all three datanodes', async (t) => {
  process.env.CUBEFS_RECLAIM_DELAY_MS = '200';
  const c = await startCluster(t, { heartbeatMs: 200 });
  const fsc = await connect(t, c);
  const files = Array.from({ length: 120 }, (_, i) => ({ name: `/small-${i}`, data: pattern(500 + ((i * 7919) % 30_000), i + 1) }));
  for (const f of files) await fsc.writeFile(f.name, f.data);
  // Written to the page cache: wait until the file systems have allocated every block (delayed allocation).
  const want = files.reduce((s, f) => s + alignUp(f.data.length), 0);
  t.ok(await until(() => tinyBlocks(c).every((b) => b >= want), 15_000), `each replica holds the files' ${want} bytes (${tinyBlocks(c).join(', ')})`);
  const before = tinyBlocks(c);

  const gone = files.filter((_, i) => i % 3 !== 0);
  const freed = gone.reduce((s, f) => s + alignUp(f.data.length), 0);
  for (const f of gone) await fsc.unlink(f.name);
  const ok = await until(() => tinyBlocks(c).every((b, i) => b <= before[i]! - freed), 20_000);
  const after = tinyBlocks(c);
  t.ok(ok, `each replica gives back the ${freed} bytes of the ${gone.length} deleted files: ${before.join(', ')} -> ${after.join(', ')} bytes`);
  for (const f of files.filter((_, i) => i % 3 === 0)) {
    if (!(await fsc.readFile(f.name)).equals(f.data)) t.fail(`${f.name} reads back intact`);
  }
  t.pass('the files left read back intact');
});

t.test('small files truncated shorter: the cut tails\' tiny-extent blocks go on all three datanodes', async (t) => {
  process.env.CUBEFS_RECLAIM_DELAY_MS = '200';
  const c = await startCluster(t, { heartbeatMs: 200 });
  const fsc = await connect(t, c);
  const files = Array.from({ length: 40 }, (_, i) => ({ name: `/cut-${i}`, data: pattern(40_000 + ((i * 7919) % 60_000), i + 1), keep: 1000 + i * 37 }));
  for (const f of files) await fsc.writeFile(f.name, f.data);
  const want = files.reduce((s, f) => s + alignUp(f.data.length), 0);
  t.ok(await until(() => tinyBlocks(c).every((b) => b >= want), 15_000), `each replica holds the files' ${want} bytes (${tinyBlocks(c).join(', ')})`);
  const before = tinyBlocks(c);

  for (const f of files) await fsc.truncate(f.name, f.keep);
  // Each tail from the first whole block after the kept bytes: the kept bytes' last block stays.
  const freed = files.reduce((s, f) => s + alignUp(f.data.length) - alignUp(f.keep), 0);
  const ok = await until(() => tinyBlocks(c).every((b, i) => b <= before[i]! - freed), 20_000);
  t.ok(ok, `each replica gives back the ${freed} bytes of the cut tails: ${before.join(', ')} -> ${tinyBlocks(c).join(', ')} bytes`);
  for (const f of files) {
    if (!(await fsc.readFile(f.name)).equals(f.data.subarray(0, f.keep))) t.fail(`${f.name} reads back its first ${f.keep} bytes`);
  }
  t.pass('the kept heads read back intact');
});
