/**
 * The client's ctime (src/meta/ctime.ts) beside a metanode that keeps upstream's rules: CreateTime never
 * moves, Setattr replaces the mode word whole and sets only the times it is given.
 */
import t from 'tap';
import { CTIME_FLAG, CTIME_XATTR, decodeCtime, encodeCtime, hasCtimeFlag, reportedCtime, withCtimeFlag } from '../../src/meta/ctime.js';
import { fromRfc3339, goModeToPosix, GoMode, isGoRegular } from '../../src/proto/index.js';
import { setup } from './helpers.js';

t.test('the record and the flag', async (t) => {
  t.equal(CTIME_FLAG, GoMode.Temporary, 'the flag is Go\'s os.ModeTemporary');
  const m = 0o644;
  t.notOk(hasCtimeFlag(m));
  t.ok(hasCtimeFlag(withCtimeFlag(m)));
  t.equal(withCtimeFlag(withCtimeFlag(m)), withCtimeFlag(m), 'setting it twice is once');
  t.equal(goModeToPosix(withCtimeFlag(m)), goModeToPosix(m), 'the flag is invisible in st_mode');
  t.ok(isGoRegular(withCtimeFlag(m)), 'and does not change the type');
  t.same(decodeCtime(encodeCtime({ c: 1700000000, m: -100 })), { c: 1700000000, m: -100 }, 'round trip, also an mtime before 1970');
  t.equal(decodeCtime(Buffer.from('garbage')), null, 'a value this client did not write is ignored');
  t.equal(decodeCtime(null), null);
  t.equal(reportedCtime(100, 200, null), 200, 'no record: max(CreateTime, mtime) (a write moved mtime)');
  t.equal(reportedCtime(100, 50, null), 100, 'mtime set into the past: CreateTime');
  t.equal(reportedCtime(100, 50, { c: 300, m: 50 }), 300, 'a chmod or utimes at 300');
  t.equal(reportedCtime(100, 9_000, { c: 300, m: 9_000 }), 300, 'utimes into the future: ctime is when it happened, not the mtime');
  t.equal(reportedCtime(100, 400, { c: 300, m: 50 }), 400, 'a write after the recorded change: its mtime is newer');
});

t.test('on a metanode with upstream\'s rules: the flag and the record survive, CreateTime does not move', async (t) => {
  const env = await setup(t);
  const c = env.client;
  const info = await c.create(1, 'f', 0o644, 0, 0);
  const ct = fromRfc3339(info.ct);
  await c.setXAttr(info.ino, CTIME_XATTR, encodeCtime({ c: ct + 5, m: fromRfc3339(info.mt) }));
  await c.setattr(info.ino, { mode: withCtimeFlag(info.mode) });
  const after = await c.inodeGet(info.ino);
  t.ok(hasCtimeFlag(after.mode), 'Setattr keeps the whole mode word, the flag too');
  t.equal(fromRfc3339(after.ct), ct, 'Setattr leaves CreateTime where it was (upstream\'s SetAttr sets no time it is not given)');
  t.same(decodeCtime(await c.getXAttr(info.ino, CTIME_XATTR)), { c: ct + 5, m: fromRfc3339(info.mt) }, 'the record is kept');
  await c.link(1, 'g', info.ino);
  await c.unlink(1, 'g', false);
  t.equal(fromRfc3339((await c.inodeGet(info.ino)).ct), ct, 'LinkInode and UnlinkInode leave it too');
});
