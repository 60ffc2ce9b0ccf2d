/**
 * An inode's extent keys as the metanode keeps them: sorted by file offset, never overlapping. Shared by the
 * metanode, which edits them, and the store, which replays an added key from the log the same way.
 */
import type { ExtentKey } from '../proto/types.js';

export interface Inserted {
  eks: ExtentKey[];
  /** Keys `ek` covers entirely, gone from the list. */
  removed: ExtentKey[];
  /** Keys `ek` covers in part, as they were before it clipped or split them. */
  clipped: ExtentKey[];
}

/**
 * Inserts `ek` into sorted, non-overlapping keys: keys it covers entirely are removed, keys it covers in
 * part are clipped or split around it, as upstream's SortedExtents does.
 */
export function insertExtent(keys: ExtentKey[], ek: ExtentKey): Inserted {
  const s = ek.FileOffset, e = ek.FileOffset + ek.Size;
  const out: ExtentKey[] = [];
  const removed: ExtentKey[] = [];
  const clipped: ExtentKey[] = [];
  for (const k of keys) {
    const ks = k.FileOffset, ke = k.FileOffset + k.Size;
    if (ke <= s || ks >= e) { out.push(k); continue; }
    if (ks >= s && ke <= e) { removed.push(k); continue; }
    clipped.push(k);
    if (ks < s) out.push({ ...k, Size: s - ks });
    if (ke > e) out.push({ ...k, FileOffset: e, ExtentOffset: k.ExtentOffset + (e - ks), Size: ke - e });
  }
  out.push({ FileOffset: ek.FileOffset, PartitionId: ek.PartitionId, ExtentId: ek.ExtentId, ExtentOffset: ek.ExtentOffset, Size: ek.Size, CRC: ek.CRC });
  out.sort((a, b) => a.FileOffset - b.FileOffset);
  return { eks: out, removed, clipped };
}

/**
 * `keys` after recording `ek` (MetaExtentsAdd): unchanged when the very same key is there already (a retried
 * append), else insertExtent's result.
 */
export function withExtent(keys: ExtentKey[], ek: ExtentKey): Inserted {
  const same = keys.some((k) => k.FileOffset === ek.FileOffset && k.PartitionId === ek.PartitionId && k.ExtentId === ek.ExtentId &&
    k.ExtentOffset === ek.ExtentOffset && k.Size === ek.Size);
  return same ? { eks: keys, removed: [], clipped: [] } : insertExtent(keys, ek);
}
