/**
 * SDK round trips against the embedded cluster (real master, metanode and three datanodes on loopback,
 * files on disk): what is written reads back byte for byte, and namespace operations behave as POSIX.
 */
import t from 'tap';
import { constants as os } from 'node:os';
import { connect, pattern, rejects, sha256, startCluster } from '../support/cluster.js';

const E = os.errno;

t.test('files of edge sizes round-trip byte for byte', async (t) => {
  const fs = await connect(t, await startCluster(t));
  const K = 1024, M = 1024 * 1024;
  const sizes = [0, 1, 4095, 128 * K - 1, 128 * K, 128 * K + 1, M - 1, M, M + 1];
  for (const size of sizes) {
    const data = pattern(size, size);
    await fs.writeFile(`/f-${size}`, data);
    const back = await fs.readFile(`/f-${size}`);
    t.equal(back.length, size, `size ${size}: length`);
    t.ok(back.equals(data), `size ${size}: bytes`);
    t.equal((await fs.stat(`/f-${size}`)).size, size, `size ${size}: stat`);
  }
});

t.test('a file over 128 MiB crosses an extent and reads back identical', async (t) => {
  const fs = await connect(t, await startCluster(t));
  const size = 130 * 1024 * 1024 + 12345;
  const data = pattern(size, 7);
  const h = await fs.open('/big', 'w');
  for (let o = 0; o < size; o += 4 * 1024 * 1024) await h.write(data.subarray(o, Math.min(size, o + 4 * 1024 * 1024)), o);
  await h.close();
  const keys = await fs.meta.listExtents(await fs.resolve('/big'));
  t.ok(new Set(keys.extents.map((k) => `${k.PartitionId}/${k.ExtentId}`)).size >= 2, 'data spans at least two extents');
  t.equal(keys.size, size, 'metanode size');
  const r = await fs.open('/big', 'r');
  const parts: Buffer[] = [];
  for (let o = 0; o < size; o += 8 * 1024 * 1024) parts.push(await r.read(o, Math.min(8 * 1024 * 1024, size - o)));
  await r.close();
  t.equal(sha256(Buffer.concat(parts)), sha256(data), 'sha256 of the whole file');
});

t.test('overwrite in the middle, truncate down and up', async (t) => {
  const fs = await connect(t, await startCluster(t));
  const data = pattern(3 * 1024 * 1024 + 100, 3);
  await fs.writeFile('/ow', data);
  const patch = pattern(300 * 1024, 9);
  const h = await fs.open('/ow', 'r+');
  await h.write(patch, 1024 * 1024 - 777);
  await h.close();
  patch.copy(data, 1024 * 1024 - 777);
  t.ok((await fs.readFile('/ow')).equals(data), 'overwrite landed in place, the rest unchanged');

  await fs.truncate('/ow', 1000);
  t.equal((await fs.stat('/ow')).size, 1000, 'truncated down');
  t.ok((await fs.readFile('/ow')).equals(data.subarray(0, 1000)), 'the first 1000 bytes remain');
  await fs.truncate('/ow', 5000);
  const up = await fs.readFile('/ow');
  t.equal(up.length, 5000, 'truncated up');
  t.ok(up.subarray(0, 1000).equals(data.subarray(0, 1000)), 'old bytes kept');
  t.ok(up.subarray(1000).equals(Buffer.alloc(4000)), 'the extension reads as zeros');
  const w = await fs.open('/ow', 'r+');
  await w.write(Buffer.from('tail'), 5000);
  await w.close();
  t.equal((await fs.readFile('/ow')).subarray(4990).toString('latin1'), '\0'.repeat(10) + 'tail', 'write after truncate up');
});

t.test('rename over an existing file replaces it', async (t) => {
  const fs = await connect(t, await startCluster(t));
  await fs.mkdir('/d1');
  await fs.mkdir('/d2');
  await fs.writeFile('/d1/a', 'new content');
  await fs.writeFile('/d2/b', 'old content that goes away');
  const oldIno = await fs.resolve('/d2/b');
  await fs.rename('/d1/a', '/d2/b');
  t.equal((await fs.readFile('/d2/b')).toString(), 'new content');
  await rejects(t, fs.stat('/d1/a'), { errno: E.ENOENT }, 'source name is gone');
  await rejects(t, fs.meta.inodeGet(oldIno), { errno: E.ENOENT }, 'the replaced inode was evicted');
  t.same((await fs.readdir('/d1')).map((e) => e.name), []);
  t.same((await fs.readdir('/d2')).map((e) => e.name), ['b']);
  await fs.rename('/d2', '/d3');
  t.equal((await fs.readFile('/d3/b')).toString(), 'new content', 'directory rename keeps its children');
  await fs.mkdir('/d4');
  await fs.writeFile('/d4/x', 'x');
  await rejects(t, fs.rename('/d3', '/d4'), { errno: E.ENOTEMPTY }, 'rename over a non-empty directory');
});

t.test('hard links share the inode and survive unlink of one name', async (t) => {
  const fs = await connect(t, await startCluster(t));
  await fs.writeFile('/orig', 'linked bytes');
  await fs.link('/orig', '/alias');
  const a = await fs.stat('/orig'), b = await fs.stat('/alias');
  t.equal(a.ino, b.ino, 'same inode');
  t.equal(b.nlink, 2, 'nlink 2');
  await fs.unlink('/orig');
  t.equal((await fs.stat('/alias')).nlink, 1, 'nlink back to 1');
  t.equal((await fs.readFile('/alias')).toString(), 'linked bytes', 'data still there');
});

t.test('unlink while open: the handle keeps working, the inode goes at close', async (t) => {
  const fs = await connect(t, await startCluster(t));
  const data = pattern(200 * 1024, 5);
  await fs.writeFile('/open-unlinked', data);
  const ino = await fs.resolve('/open-unlinked');
  const h = await fs.open('/open-unlinked', 'r+');
  await fs.unlink('/open-unlinked');
  await rejects(t, fs.stat('/open-unlinked'), { errno: E.ENOENT }, 'name gone');
  t.ok((await h.read(0, data.length)).equals(data), 'still readable through the handle');
  await h.write(Buffer.from('more'), data.length);
  t.equal((await h.read(data.length, 4)).toString(), 'more', 'still writable');
  t.ok(await fs.meta.inodeGet(ino), 'inode alive while open');
  await h.close();
  await rejects(t, fs.meta.inodeGet(ino), { errno: E.ENOENT }, 'evicted after the last close');
});

t.test('xattrs: set, get, list, remove', async (t) => {
  const fs = await connect(t, await startCluster(t));
  await fs.writeFile('/x', 'x');
  await fs.setxattr('/x', 'user.color', 'blue');
  await fs.setxattr('/x', 'user.bin', Buffer.from([0, 1, 2, 0xc3, 0xa9]));
  t.equal((await fs.getxattr('/x', 'user.color')).toString(), 'blue');
  t.same([...(await fs.getxattr('/x', 'user.bin'))], [0, 1, 2, 0xc3, 0xa9], 'control bytes and UTF-8 survive');
  await rejects(t, fs.setxattr('/x', 'user.raw', Buffer.from([0xff, 0xfe])), { errno: E.EINVAL, message: /UTF-8/ },
    'bytes that are not UTF-8 are refused, not stored altered (upstream keeps values as JSON strings)');
  t.same((await fs.listxattr('/x')).sort(), ['user.bin', 'user.color']);
  await fs.removexattr('/x', 'user.color');
  await rejects(t, fs.getxattr('/x', 'user.color'), { errno: E.ENODATA });
  t.same(await fs.listxattr('/x'), ['user.bin']);
});

t.test('readdir of 3,000 entries, paged by the metanode', async (t) => {
  const fs = await connect(t, await startCluster(t));
  await fs.mkdir('/many');
  const names: string[] = [];
  for (let i = 0; i < 3000; i++) names.push(`entry-${String(i).padStart(5, '0')}`);
  for (let i = 0; i < names.length; i += 100) {
    await Promise.all(names.slice(i, i + 100).map((n) => fs.writeFile(`/many/${n}`, n)));
  }
  const list = await fs.readdir('/many');
  t.equal(list.length, 3000, 'every entry once');
  t.same(list.map((e) => e.name).sort(), names, 'the same names');
  t.equal((await fs.stat('/many')).nlink, 3002, 'parent nlink counts every child');
  t.equal((await fs.readFile('/many/entry-02999')).toString(), 'entry-02999');
});

t.test('symlinks, chmod, chown, utimes, mkdir/rmdir errors', async (t) => {
  const fs = await connect(t, await startCluster(t));
  await fs.writeFile('/target', 'abc');
  await fs.symlink('/target', '/ln');
  t.equal(await fs.readlink('/ln'), '/target');
  t.ok((await fs.stat('/ln')).isSymbolicLink());
  await fs.chmod('/target', 0o600);
  t.equal((await fs.stat('/target')).mode & 0o7777, 0o600);
  await fs.chown('/target', 1000, 1001);
  const st = await fs.stat('/target');
  t.same([st.uid, st.gid], [1000, 1001]);
  const before = Math.floor(Date.now() / 1000);
  await fs.utimes('/target', 1_600_000_000, 1_700_000_000);
  const st2 = await fs.stat('/target');
  t.equal(st2.mtime, 1_700_000_000, 'utimes sets mtime');
  // A CubeFS metanode sets atime to now whenever it reads an inode (the embedded one as upstream's): an atime
  // set in the past is gone by the next stat.
  t.ok(st2.atime >= before, `atime reads as the last inode read (${st2.atime} >= ${before}), as on a real cluster`);
  await fs.mkdir('/dir');
  await rejects(t, fs.mkdir('/dir'), { errno: E.EEXIST });
  await fs.writeFile('/dir/f', 'f');
  await rejects(t, fs.rmdir('/dir'), { errno: E.ENOTEMPTY });
  await fs.unlink('/dir/f');
  await fs.rmdir('/dir');
  await rejects(t, fs.stat('/dir'), { errno: E.ENOENT });
  await rejects(t, fs.open('/nope/x', 'w'), { errno: E.ENOENT });
  await rejects(t, fs.open('/target', 'wx'), { errno: E.EEXIST });
  const stat = await fs.statfs();
  t.ok(stat.TotalSize > 0, 'statfs reports a capacity');
});
