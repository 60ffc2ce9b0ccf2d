import fs from 'node:fs';
import { constants as osc } from 'node:os';
import t from 'tap';
import type { Test } from 'tap';
import { DataClient } from '../../src/data/index.js';
import { crc32, Op, Result, type DataPartitionView, type Packet } from '../../src/proto/index.js';
import { PacketServer } from '../../src/transport/server.js';
import { ConnPool } from '../../src/transport/tcp.js';
import { CubeFSError, ErrorCode, sleep } from '../../src/util/errors.js';
import { FakeMeta, pattern, startCluster, StaticSource, view, type Cluster } from './helpers.js';

const MiB = 1024 * 1024;

function client(t: Test, source: StaticSource, meta: FakeMeta, o: { retryBudgetMs?: number; tinyExtents?: boolean } = {}): DataClient {
  const dc = new DataClient({ source, meta, timeoutMs: 10_000, ...o });
  t.teardown(() => dc.close());
  return dc;
}


async function writeFile(dc: DataClient, ino: number, data: Buffer, chunk = 4 * MiB): Promise<void> {
  const s = dc.open(ino);
  for (let o = 0; o < data.length; o += chunk) await s.write(o, data.subarray(o, Math.min(data.length, o + chunk)));
  await s.release();
}

async function readAll(dc: DataClient, ino: number, chunk = 8 * MiB): Promise<Buffer> {
  const s = dc.open(ino);
  const parts: Buffer[] = [];
  for (let o = 0; ; o += chunk) {
    const b = await s.read(o, chunk);
    if (b.length === 0) break;
    parts.push(b);
    if (b.length < chunk) break;
  }
  await s.release();
  return Buffer.concat(parts);
}

/** Every key's bytes are identical in the extent files of all three nodes. */
function replicasIdentical(t: Test, c: Cluster, meta: FakeMeta, ino: number): void {
  for (const k of meta.files.get(ino)!.keys) {
    const copies = c.nodes.map((n) => {
      const fd = fs.openSync(n.extentPath(k.PartitionId, k.ExtentId)!, 'r');
      const b = Buffer.alloc(k.Size);
      fs.readSync(fd, b, 0, k.Size, k.ExtentOffset);
      fs.closeSync(fd);
      return crc32(b);
    });
    t.ok(copies.every((x) => x === copies[0]), `extent ${k.PartitionId}/${k.ExtentId} identical on 3 replicas`);
  }
}

t.test('sizes round-trip through a fresh client', async (t) => {
  const c = await startCluster(t, { partitions: 2 });
  const meta = new FakeMeta();
  const w = client(t, c.source, meta);
  const sizes = [0, 1, 4095, 128 * 1024 - 1, 128 * 1024, 128 * 1024 + 1, MiB - 1, MiB, MiB + 1];
  for (const [i, n] of sizes.entries()) await writeFile(w, 100 + i, pattern(n, i + 1));
  const r = client(t, c.source, meta);
  for (const [i, n] of sizes.entries()) {
    const got = await readAll(r, 100 + i);
    t.equal(got.length, n, `size ${n}`);
    t.ok(got.equals(pattern(n, i + 1)), `bytes of ${n}`);
    t.equal(meta.files.get(100 + i)?.size ?? 0, n, `meta size ${n}`);
  }
  const small = meta.files.get(101)!.keys;
  t.ok(small.length === 1 && small[0]!.ExtentId >= 1 && small[0]!.ExtentId <= 64, 'a 1-byte file lives in a tiny extent');
  const big = meta.files.get(108)!.keys;
  t.ok(big.every((k) => k.ExtentId >= 1024), 'a file written over 1 MiB at once uses normal extents');
  replicasIdentical(t, c, meta, 106);
  replicasIdentical(t, c, meta, 108);
});

t.test('130 MiB crosses an extent boundary and reads back byte for byte', async (t) => {
  const c = await startCluster(t, { partitions: 2 });
  const meta = new FakeMeta();
  const data = pattern(130 * MiB, 77);
  await writeFile(client(t, c.source, meta), 7, data);
  const keys = meta.files.get(7)!.keys;
  t.ok(keys.length >= 2, `${keys.length} keys`);
  t.ok(keys.every((k) => k.ExtentOffset + k.Size <= 128 * MiB), 'no key past 128 MiB in its extent');
  const got = await readAll(client(t, c.source, meta), 7);
  t.equal(got.length, data.length);
  t.equal(crc32(got), crc32(data), 'crc of the whole file');
  t.ok(got.equals(data));
  replicasIdentical(t, c, meta, 7);
});

t.test('overwrite in the middle uses RandomWrite; a straddling write is split; holes read as zeros', async (t) => {
  const c = await startCluster(t, { partitions: 2 });
  const meta = new FakeMeta();
  const dc = client(t, c.source, meta);
  const expect = Buffer.from(pattern(3 * MiB, 11));
  await writeFile(dc, 9, expect);
  const keysBefore = JSON.stringify(meta.files.get(9)!.keys);
  const s = dc.open(9);
  const patch = pattern(300 * 1024, 12);
  await s.write(MiB + 5, patch);
  patch.copy(expect, MiB + 5);
  await s.flush();
  t.equal(JSON.stringify(meta.files.get(9)!.keys), keysBefore, 'an overwrite adds no key');
  const tail = pattern(5000, 13);
  await s.write(3 * MiB - 1000, tail);
  await s.flush();
  t.equal(s.size, 3 * MiB + 4000);
  const full = Buffer.concat([expect.subarray(0, 3 * MiB - 1000), tail]);
  t.ok((await s.read(0, 4 * MiB)).equals(full), 'overwrite + append read back');
  // sparse: a write far beyond the end leaves a hole
  await s.write(10 * MiB, Buffer.from('end'));
  const hole = await s.read(3 * MiB + 4000, 10 * MiB - (3 * MiB + 4000) + 3);
  t.ok(hole.subarray(0, hole.length - 3).equals(Buffer.alloc(hole.length - 3)), 'hole reads as zeros');
  t.equal(hole.subarray(hole.length - 3).toString(), 'end');
  await s.release();
  await meta.truncate(9, 12 * MiB);
  const s2 = dc.open(9);
  s2.truncated(12 * MiB);
  const after = await s2.read(10 * MiB, 4 * MiB);
  t.equal(after.length, 2 * MiB, 'short at EOF');
  t.equal(after.subarray(0, 3).toString(), 'end');
  t.ok(after.subarray(3).equals(Buffer.alloc(2 * MiB - 3)), 'past the last key but inside size: zeros');
  t.same(await readAll(client(t, c.source, meta), 9, 16 * MiB).then((b) => crc32(b.subarray(0, full.length))), crc32(full));
  await s2.release();
});

t.test('no tiny extent on the datanode: falls back to a normal extent', async (t) => {
  const c = await startCluster(t, { partitions: 1, node: { tinyExtents: false } });
  const meta = new FakeMeta();
  const data = Buffer.from('second file\n');
  await writeFile(client(t, c.source, meta), 3, data);
  const keys = meta.files.get(3)!.keys;
  t.equal(keys.length, 1);
  t.ok(keys[0]!.ExtentId >= 1024, 'normal extent after "no available extent"');
  t.ok((await readAll(client(t, c.source, meta), 3)).equals(data));
  const off = await writeFile(client(t, c.source, meta, { tinyExtents: false }), 4, data).then(() => meta.files.get(4)!.keys[0]!);
  t.ok(off.ExtentId >= 1024, 'tinyExtents: false goes straight to a normal extent');
});

/** A packet proxy in front of one datanode that flips a byte in every StreamRead reply packet. */
async function corruptingProxy(t: Test, target: string): Promise<{ addr: string; reads: number }> {
  const pool = new ConnPool(2);
  const st = { addr: '', reads: 0 };
  const server = new PacketServer('proxy', async (req) => {
    if (req.opcode !== Op.StreamRead && req.opcode !== Op.StreamFollowerRead) return pool.request(target, req);
    st.reads++;
    const out: Packet[] = [];
    let got = 0;
    await pool.request(target, req, {
      onReply: (p) => {
        out.push({ ...p, data: Buffer.from(p.data) });
        if (p.resultCode !== Result.Ok) return true;
        got += p.data.length;
        return got >= req.size;
      },
    });
    const last = out[out.length - 1]!;
    if (last.data.length > 0 && last.resultCode === Result.Ok) last.data[last.data.length >> 1]! ^= 0x20;
    return out;
  });
  st.addr = await server.listen('127.0.0.1', 0);
  t.teardown(async () => { await server.close(); pool.close(); });
  return st;
}

t.test('a corrupted reply CRC is detected: the other replicas are read instead, and all corrupt is CrcMismatch', async (t) => {
  const c = await startCluster(t, { partitions: 1 });
  const meta = new FakeMeta();
  const data = pattern(2 * MiB + 123, 21);
  await writeFile(client(t, c.source, meta), 5, data);
  const hosts = c.views[0]!.Hosts;
  const proxies = await Promise.all(hosts.map((h) => corruptingProxy(t, h)));
  const oneBad: DataPartitionView[] = [view(1, [proxies[0]!.addr, hosts[1]!, hosts[2]!])];
  const got = await readAll(client(t, new StaticSource(oneBad), meta), 5);
  t.ok(got.equals(data), 'read through the corrupt leader recovered from the other replicas (StreamFollowerRead)');
  t.ok(proxies[0]!.reads > 0, 'the corrupt proxy was asked first');
  const allBad = [view(1, proxies.map((p) => p.addr))];
  const dc = client(t, new StaticSource(allBad), meta, { retryBudgetMs: 2000 });
  const s = dc.open(5);
  const err = await s.read(0, 4096).then(() => null, (e: unknown) => e);
  t.ok(err instanceof CubeFSError && err.code === ErrorCode.CrcMismatch, `CrcMismatch (${(err as Error)?.message})`);
  await s.release();
});

t.test('a full disk is a clear ENOSPC error', async (t) => {
  const c = await startCluster(t, { partitions: 2, node: { capacityBytes: 512 * 1024 } });
  const meta = new FakeMeta();
  const dc = client(t, c.source, meta, { retryBudgetMs: 1500 });
  const s = dc.open(6);
  const err = await s.write(0, pattern(2 * MiB, 31)).then(() => null, (e: unknown) => e);
  t.ok(err instanceof CubeFSError, 'write rejected');
  t.equal((err as CubeFSError).errno, osc.errno.ENOSPC, `errno ENOSPC (${(err as Error).message})`);
  t.match((err as Error).message, /DiskNoSpace|disk full/);
  await s.release().catch(() => undefined);
});

t.test('stop/start every datanode on the same dir keeps the data', async (t) => {
  const c = await startCluster(t, { partitions: 2 });
  const meta = new FakeMeta();
  const data = pattern(5 * MiB + 7, 41);
  await writeFile(client(t, c.source, meta), 8, data);
  await writeFile(client(t, c.source, meta), 18, Buffer.from('tiny data'));
  for (let i = 0; i < 3; i++) await c.restart(i);
  const r = client(t, c.source, meta);
  t.ok((await readAll(r, 8)).equals(data), 'normal extents back');
  t.equal((await readAll(r, 18)).toString(), 'tiny data', 'tiny extents back');
});

t.test('a follower stopped mid-write: the write fails over and completes when it returns', async (t) => {
  const c = await startCluster(t, { partitions: 3 });
  const meta = new FakeMeta();
  const dc = client(t, c.source, meta);
  const data = pattern(24 * MiB, 51);
  const s = dc.open(10);
  let outage: Promise<void> | null = null;
  for (let o = 0, i = 0; o < data.length; o += MiB, i++) {
    if (i === 6) {
      await c.nodes[1]!.stop();
      outage = sleep(1000).then(() => c.restart(1));
    }
    await s.write(o, data.subarray(o, o + MiB));
  }
  await outage;
  await s.release();
  const keys = meta.files.get(10)!.keys;
  t.ok(keys.length >= 2, `failed over to a new extent (${keys.length} keys)`);
  const got = await readAll(client(t, c.source, meta), 10);
  t.ok(got.equals(data), 'reads back identical');
});

t.test('an append right behind the last key goes on in its extent, as upstream (no extent per session)', async (t) => {
  const c = await startCluster(t, { partitions: 2 });
  const meta = new FakeMeta();
  const data = pattern(3 * MiB, 71);
  // Three sessions, each appending 1 MiB to what the last one left (as `cat >> file` three times).
  for (let i = 0; i < 3; i++) {
    const s = client(t, c.source, meta).open(20);
    await s.load();
    t.equal(s.size, i * MiB, `session ${i} starts at the end`);
    await s.write(i * MiB, data.subarray(i * MiB, (i + 1) * MiB));
    await s.release();
  }
  const keys = meta.files.get(20)!.keys;
  const extents = new Set(keys.filter((k) => k.ExtentId >= 1024).map((k) => `${k.PartitionId}/${k.ExtentId}`));
  t.equal(extents.size, 1, `the appends after the first share one normal extent (${keys.map((k) => `${k.FileOffset}:${k.ExtentId}@${k.ExtentOffset}+${k.Size}`).join(' ')})`);
  t.ok((await readAll(client(t, c.source, meta), 20)).equals(data), 'reads back identical');
  // Truncated, then appended: the bytes past the key in the extent are no one's any more, and are written over.
  await meta.truncate(20, 2 * MiB + 1000);
  const tail = pattern(5000, 72);
  const s = client(t, c.source, meta).open(20);
  await s.write(2 * MiB + 1000, tail);
  await s.release();
  const want = Buffer.concat([data.subarray(0, 2 * MiB + 1000), tail]);
  t.ok((await readAll(client(t, c.source, meta), 20)).equals(want), 'after a truncate, an append resumed there reads back identical');
});
