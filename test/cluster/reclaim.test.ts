/**
 * Space comes back: the extents of a deleted file, of a range truncated away and of a file overwritten with
 * O_TRUNC are deleted on all three datanodes (the metanode's reclaimer sends MarkDelete after a delay,
 * here 200 ms); extents still named by a file stay, and a pending deletion survives a cluster restart.
 */
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import type { EmbeddedCluster } from '../../src/cluster/launcher.js';
import { connect, pattern, startCluster, tempDir } from '../support/cluster.js';
import { until } from '../support/wait.js';

process.env.CUBEFS_RECLAIM_DELAY_MS = '200';
const MiB = 1024 * 1024;

/** Normal extent files (ids above 64) on each datanode: name -> bytes. */
function normalExtents(c: EmbeddedCluster): Map<string, number>[] {
  return [1, 2, 3].map((i) => {
    const out = new Map<string, number>();
    const root = path.join(c.dir, `datanode${i}`);
    const walk = (d: string): void => {
      for (const e of fs.readdirSync(d, { withFileTypes: true })) {
        const p = path.join(d, e.name);
        if (e.isDirectory()) walk(p);
        else if (/^\d+$/.test(e.name) && Number(e.name) > 64) out.set(path.relative(root, p), fs.statSync(p).size);
      }
    };
    if (fs.existsSync(root)) walk(root);
    return out;
  });
}

const total = (c: EmbeddedCluster): number => normalExtents(c).reduce((s, m) => s + [...m.values()].reduce((a, b) => a + b, 0), 0);

t.test('unlink, truncate and O_TRUNC give the space back on every replica; live extents stay', async (t) => {
  const c = await startCluster(t, { heartbeatMs: 200 });
  const fsc = await connect(t, c);
  await fsc.writeFile('/keep', pattern(3 * MiB, 1));
  await fsc.writeFile('/gone', pattern(5 * MiB, 2));
  await fsc.writeFile('/cut', pattern(6 * MiB, 3));
  const before = total(c);
  t.ok(before >= 3 * 14 * MiB, `three replicas of 14 MiB on disk (${before} bytes)`);

  await fsc.unlink('/gone');
  t.ok(await until(() => total(c) <= before - 3 * 5 * MiB, 15_000), `the deleted file's extents are gone from all three datanodes (${total(c)} bytes left)`);

  await fsc.truncate('/cut', 0);
  t.ok(await until(() => total(c) <= 3 * 3 * MiB, 15_000), `the truncated file's extents are gone too (${total(c)} bytes left)`);

  const fresh = pattern(2 * MiB, 4);
  await fsc.writeFile('/keep', fresh); // open with O_TRUNC, new data on a new extent
  t.ok(await until(() => total(c) === 3 * 2 * MiB, 15_000), `after the overwrite only the new 2 MiB remain, three times (${total(c)} bytes)`);
  t.ok((await fsc.readFile('/keep')).equals(fresh), 'the live file reads back whole');
  const dn = normalExtents(c);
  t.same(dn[1], dn[0], 'replicas hold the same extents');
  t.same(dn[2], dn[0]);
});

t.test('a deletion pending at shutdown is carried out after the restart', async (t) => {
  const dir = tempDir(t);
  process.env.CUBEFS_RECLAIM_DELAY_MS = '60000'; // not before the stop
  let c = await startCluster(t, { dir, heartbeatMs: 200 });
  let fsc = await connect(t, c);
  await fsc.writeFile('/f', pattern(4 * MiB, 5));
  const before = total(c);
  await fsc.unlink('/f');
  await fsc.close();
  await c.stop();
  t.equal(total(c), before, 'nothing deleted yet');
  process.env.CUBEFS_RECLAIM_DELAY_MS = '200';
  c = await startCluster(t, { dir, heartbeatMs: 200 });
  fsc = await connect(t, c);
  t.ok(await until(() => total(c) === 0, 15_000), `deleted after the restart (${total(c)} bytes left)`);
});
