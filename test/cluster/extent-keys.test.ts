/**
 * The metanode's extent-key arithmetic, as pure functions: inserting a key (what it removes, what it clips)
 * and what a change releases (a normal extent no key names any more; the ranges of tiny extents no key covers
 * any more: a removed key's whole range, a truncated key's tail, a split key's middle).
 */
import t from 'tap';
import type { ExtentKey } from '../../src/proto/index.js';
import { insertExtent, withExtent } from '../../src/cluster/extent-keys.js';
import { releasedExtents } from '../../src/cluster/reclaimer.js';

const key = (FileOffset: number, ExtentId: number, ExtentOffset: number, Size: number): ExtentKey =>
  ({ FileOffset, PartitionId: 1, ExtentId, ExtentOffset, Size, CRC: 0 });
const ranges = (l: ExtentKey[]): string[] => l.map((k) => `${k.ExtentId}:${k.ExtentOffset}+${k.Size}`);

t.test('insertExtent: covered keys removed, overlapped ones clipped or split; withExtent: a key already there changes nothing', async (t) => {
  const keys = [key(0, 3, 8192, 10_000), key(10_000, 2000, 0, 5000), key(15_000, 2001, 0, 5000)];
  const r = insertExtent(keys, key(4000, 2002, 0, 11_000));
  t.same(ranges(r.removed), ['2000:0+5000'], 'the key it covers whole is removed');
  t.same(ranges(r.clipped), ['3:8192+10000'], 'the key it covers in part is reported as it was');
  t.same(r.eks.map((k) => [k.FileOffset, k.ExtentId, k.ExtentOffset, k.Size]),
    [[0, 3, 8192, 4000], [4000, 2002, 0, 11_000], [15_000, 2001, 0, 5000]], 'sorted, no overlap');
  const split = insertExtent(keys, key(2000, 2002, 0, 1000));
  t.same(split.eks.slice(0, 3).map((k) => [k.FileOffset, k.ExtentOffset, k.Size]), [[0, 8192, 2000], [2000, 0, 1000], [3000, 11_192, 7000]], 'a key over the middle splits it');
  const same = withExtent(keys, keys[1]!);
  t.equal(same.eks, keys, 'the same key again: the very same list');
});

t.test('releasedExtents: whole normal extents; tiny ranges no key covers any more', async (t) => {
  const tiny = key(0, 3, 8192, 10_000);
  t.same(ranges(releasedExtents([tiny], [])), ['3:8192+10000'], 'a tiny key gone: its range');
  t.same(ranges(releasedExtents([tiny], [{ ...tiny, Size: 3000 }])), ['3:11192+7000'], 'truncated to 3000: the tail');
  const split = insertExtent([tiny], key(2000, 2002, 0, 1000));
  t.same(ranges(releasedExtents(split.clipped, split.eks)), ['3:10192+1000'], 'split by a write over its middle: the middle');
  t.same(releasedExtents([tiny], [tiny]), [], 'unchanged: nothing');
  t.same(releasedExtents([tiny], [key(0, 3, 0, 8192), key(50_000, 3, 30_000, 10)]), [tiny].map(() => ({ ...tiny, FileOffset: 0 })),
    'other ranges of the same tiny extent do not keep it');
  const normal = key(0, 2000, 0, 5000);
  t.same(ranges(releasedExtents([normal], [])), ['2000:0+0'], 'a normal extent no key names: the whole extent');
  t.same(releasedExtents([normal], [{ ...normal, Size: 100 }]), [], 'still named (clipped): kept');
  t.same(ranges(releasedExtents([normal, { ...normal, FileOffset: 9000, ExtentOffset: 9000 }], [])), ['2000:0+0'], 'named twice: released once');
});
