/**
 * The cluster as separate processes: a restart loses nothing, and a follower datanode killed with
 * SIGKILL in the middle of a write does not lose or corrupt the file.
 */
import t from 'tap';
import { EmbeddedCluster } from '../../src/cluster/launcher.js';
import { CubeFSClient } from '../../src/sdk/client.js';
import { pattern, sha256, tempDir } from '../support/cluster.js';

const open = (c: EmbeddedCluster): Promise<CubeFSClient> =>
  CubeFSClient.connect({ masters: c.masterAddr, vol: c.vol, owner: c.owner, refreshMs: 500 });

t.test('restart the cluster: every file and its bytes are still there', async (t) => {
  const dir = tempDir(t);
  let cluster = await EmbeddedCluster.start({ dir, masterPort: 0, heartbeatMs: 500 });
  const files = new Map<string, Buffer>();
  let fs = await open(cluster);
  await fs.mkdir('/keep');
  for (const [i, size] of [0, 1, 5000, 300 * 1024, 3 * 1024 * 1024].entries()) {
    const data = pattern(size, i + 11);
    files.set(`/keep/file-${i}`, data);
    await fs.writeFile(`/keep/file-${i}`, data);
  }
  await fs.setxattr('/keep/file-1', 'user.k', 'v');
  await fs.symlink('file-2', '/keep/link');
  await fs.close();
  await cluster.stop();

  cluster = await EmbeddedCluster.start({ dir, heartbeatMs: 500 });
  t.teardown(() => cluster.stop());
  fs = await open(cluster);
  t.teardown(() => fs.close());
  const names = (await fs.readdir('/keep')).map((e) => e.name).sort();
  t.same(names, [...files.keys()].map((p) => p.slice(6)).concat('link').sort(), 'directory listing survived');
  for (const [p, data] of files) t.ok((await fs.readFile(p)).equals(data), `${p}: bytes survived`);
  t.equal((await fs.getxattr('/keep/file-1', 'user.k')).toString(), 'v', 'xattr survived');
  t.equal(await fs.readlink('/keep/link'), 'file-2', 'symlink survived');
});

t.test('kill -9 a follower datanode during a 64 MiB write: the write completes and reads back identical', async (t) => {
  const dir = tempDir(t);
  const cluster = await EmbeddedCluster.start({ dir, masterPort: 0, heartbeatMs: 300 });
  t.teardown(() => cluster.stop());
  const fs = await open(cluster);
  t.teardown(() => fs.close());
  const size = 64 * 1024 * 1024;
  const data = pattern(size, 99);
  const h = await fs.open('/survivor', 'w');
  const chunk = 1024 * 1024;
  let killedPid: number | undefined;
  for (let o = 0; o < size; o += chunk) {
    if (o === 16 * chunk) {
      // Every partition has all three datanodes; Hosts[0] leads. Kill one that follows the partition in use.
      const victim = 1;
      killedPid = cluster.pid('datanode', victim);
      cluster.kill('datanode', victim, 'SIGKILL');
    }
    await h.write(data.subarray(o, o + chunk), o);
  }
  await h.close();
  t.ok(killedPid, 'a datanode process was killed mid-write');
  t.not(cluster.pid('datanode', 1), killedPid, 'the launcher restarted it as a new process');
  const back = await fs.readFile('/survivor');
  t.equal(back.length, size, 'length');
  t.equal(sha256(back), sha256(data), 'sha256 identical');
});
