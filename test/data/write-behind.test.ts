/**
 * Write-behind (FileStream staging) against three real DataNodes: small buffered writes are gathered into
 * runs of up to 1 MiB, read back before any flush, reach other clients only at flush (as unstaged writes),
 * mix with overlapping unstaged writes without losing the newest bytes, and a failed run is reported.
 */
import t from 'tap';
import { DataClient } from '../../src/data/index.js';
import { sleep } from '../../src/util/errors.js';
import { FakeMeta, pattern, startCluster, StaticSource, view } from './helpers.js';

const KiB = 1024;

t.test('4 KiB writes are gathered into 1 MiB runs, readable before flush, visible elsewhere after it', async (t) => {
  const c = await startCluster(t, { partitions: 2 });
  const meta = new FakeMeta();
  const dc = new DataClient({ source: c.source, meta, timeoutMs: 10_000 });
  t.teardown(() => dc.close());
  const data = pattern(1000 * 4 * KiB, 7);
  const s = dc.open(1);
  for (let o = 0; o < data.length; o += 4 * KiB) await s.write(o, data.subarray(o, o + 4 * KiB), { stage: true });
  t.equal(s.size, data.length, 'the size counts staged bytes');
  t.same(await s.read(123 * 4 * KiB + 17, 300 * KiB), data.subarray(123 * 4 * KiB + 17, 123 * 4 * KiB + 17 + 300 * KiB), 'a read before any flush sees the staged bytes');
  t.equal(meta.appends, 0, 'nothing recorded at the metanode before flush');
  const other = new DataClient({ source: c.source, meta, timeoutMs: 10_000 });
  t.teardown(() => other.close());
  const o1 = other.open(1);
  t.equal((await o1.read(0, 4096)).length, 0, 'another client sees nothing before flush (as without staging)');
  await o1.release();
  await s.release();
  const st = dc.stats();
  t.equal(st.stagedWrites, 1000, 'every write was staged');
  t.ok(st.stageSubmits <= 8, `gathered into a few runs (${st.stageSubmits})`);
  t.ok(st.tcpWrites <= 40, `${st.tcpWrites} data packets for 1000 writes (<= 128 KiB each over TCP)`);
  const o2 = other.open(1);
  t.same(await o2.read(0, data.length + 10), data, 'after flush another client reads every byte');
  await o2.release();
});

t.test('staged runs and overlapping unstaged writes: the newest bytes win', async (t) => {
  const c = await startCluster(t, { partitions: 1 });
  const meta = new FakeMeta();
  const dc = new DataClient({ source: c.source, meta, timeoutMs: 10_000 });
  t.teardown(() => dc.close());
  const model = Buffer.alloc(600 * KiB);
  const s = dc.open(2);
  const w = async (off: number, buf: Buffer, stage: boolean): Promise<void> => {
    buf.copy(model, off);
    await s.write(off, buf, { stage });
  };
  for (let o = 0; o < 64 * KiB; o += 4 * KiB) await w(o, pattern(4 * KiB, o + 1), true);
  await w(32 * KiB, pattern(256 * KiB, 99), false); // over the open stage: it goes first
  await w(8 * KiB, pattern(4 * KiB, 55), true); // inside the run just sent
  await w(288 * KiB, pattern(1000, 56), true); // appends again
  await w(288 * KiB + 1000, pattern(3000, 57), true);
  await w(400 * KiB, pattern(200 * KiB, 58), false); // a hole, then a large write past the stage
  await w(300 * KiB, pattern(5 * KiB, 59), true); // into the hole
  const end = 600 * KiB;
  t.same(await s.read(0, end), model, 'read back before flush');
  await s.release();
  const r = new DataClient({ source: c.source, meta, timeoutMs: 10_000 });
  t.teardown(() => r.close());
  const rs = r.open(2);
  t.same(await rs.read(0, end), model, 'a fresh client reads the same bytes');
  await rs.release();
  t.ok(dc.stats().stagedWrites >= 20, 'the small writes were staged');
});

t.test('not staged: sync writes, writes over 128 KiB, writes that do not ask', async (t) => {
  const c = await startCluster(t, { partitions: 1 });
  const meta = new FakeMeta();
  const dc = new DataClient({ source: c.source, meta, timeoutMs: 10_000 });
  t.teardown(() => dc.close());
  const s = dc.open(3);
  await s.write(0, pattern(128 * KiB + 1, 1), { stage: true });
  await s.write(128 * KiB + 1, pattern(4 * KiB, 2), { stage: true, sync: true });
  await s.write(132 * KiB + 1, pattern(4 * KiB, 3));
  t.equal(dc.stats().stagedWrites, 0, 'none staged');
  await s.release();
});

t.test('a staged run that fails is reported by the next write and by flush', async (t) => {
  const meta = new FakeMeta();
  // nobody listens on these: every try is refused, until the retry budget runs out
  const source = new StaticSource([view(1, ['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3'])]);
  const dc = new DataClient({ source, meta, timeoutMs: 2_000, retryBudgetMs: 800 });
  t.teardown(() => dc.close().catch(() => undefined));
  const s = dc.open(4);
  await s.write(0, pattern(4 * KiB, 1), { stage: true });
  t.pass('the staged write is answered at once');
  let err: Error | null = null;
  for (let i = 0; i < 100 && !err; i++) {
    await sleep(100);
    err = await s.write(4 * KiB, pattern(4 * KiB, 2), { stage: true }).then(() => null, (e: Error) => e);
  }
  t.ok(err, `a later write reports the failure (${err?.message})`);
  await t.rejects(s.flush(), 'flush reports it too');
  s.shutdown();
});
