/**
 * The extent store keeps a bounded number of files open: more extents than the cap are written and read
 * back intact, and the process's open descriptors stay bounded (random writes into holes make an extent
 * per write, which once ran a datanode out of descriptors).
 */
import t from 'tap';
import fs from 'node:fs';
import { ExtentStore, MAX_OPEN_EXTENTS } from '../../src/cluster/extent-store.js';
import { tempDir } from '../support/cluster.js';

const openFds = (): number => fs.readdirSync('/proc/self/fd').length;

t.test('more extents than open-file slots: every one written and read back, descriptors bounded', async (t) => {
  const dir = tempDir(t);
  const store = await ExtentStore.open(dir, { VolName: 'v', PartitionID: 1, Hosts: ['a:1'] }, true);
  t.teardown(() => store.close());
  const before = openFds();
  const n = MAX_OPEN_EXTENTS * 2 + 7;
  for (let i = 0; i < n; i++) {
    const id = 1024 + i;
    await store.create(id);
    await store.write(id, 4096 * (i % 3), Buffer.from(`extent ${id}`), false);
  }
  t.ok(openFds() - before <= MAX_OPEN_EXTENTS + 8, `open descriptors bounded (${openFds() - before} for ${n} extents)`);
  let bad = 0;
  for (let i = 0; i < n; i++) {
    const id = 1024 + i;
    const got = await store.read(id, 4096 * (i % 3), `extent ${id}`.length);
    if (got.toString() !== `extent ${id}`) bad++;
  }
  t.equal(bad, 0, 'every extent reads back what was written');
  await Promise.all(Array.from({ length: 64 }, (_, i) => store.write(1024 + i, 0, Buffer.from('x'), false)));
  t.ok(openFds() - before <= MAX_OPEN_EXTENTS + 8, 'concurrent writes keep it bounded');
});

t.test('extent ids: reserved on disk a block at a time, never reused after a restart', async (t) => {
  const dir = tempDir(t);
  const meta = { VolName: 'v', PartitionID: 1, Hosts: ['a:1'] };
  const saved = (): number => (JSON.parse(fs.readFileSync(`${dir}/1/meta.json`, 'utf8')) as { NextExtentId: number }).NextExtentId;
  const store = await ExtentStore.open(dir, meta, true);
  const ids: number[] = [];
  for (let i = 0; i < 10; i++) ids.push(await store.allocExtentId());
  t.same(ids, Array.from({ length: 10 }, (_, i) => 1024 + i), 'consecutive ids from 1024');
  const bound = saved();
  t.ok(bound > ids[9]!, `the bound on disk (${bound}) is past every id handed out`);
  for (let i = 0; i < 10; i++) ids.push(await store.allocExtentId());
  t.equal(saved(), bound, 'ids inside the reserved block cost no write');
  await store.create(bound + 5); // a follower told of an id past the block reserves further first
  t.ok(saved() > bound + 5, 'a follower reserves past an id it is told of');
  await store.close();
  const again = await ExtentStore.open(dir, meta, false);
  t.teardown(() => again.close());
  const next = await again.allocExtentId();
  t.ok(next > bound + 5 && next > Math.max(...ids), `after a restart the next id (${next}) is new`);
});
