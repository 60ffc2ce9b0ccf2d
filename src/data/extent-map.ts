/**
 * A file's extent keys as a sorted, non-overlapping list (by FileOffset), the shape upstream's metanode
 * keeps. Inserting a key replaces whatever part of older keys it overlaps (newest wins), as an append
 * recorded after an overwrite does at the metanode.
 */
import type { ExtentKey } from '../proto/index.js';

export function keyEnd(k: ExtentKey): number {
  return k.FileOffset + k.Size;
}

/** Index of the first key whose end is beyond `off`. */
function firstEndingAfter(keys: ExtentKey[], off: number): number {
  let lo = 0, hi = keys.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (keyEnd(keys[mid]!) <= off) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function slice(k: ExtentKey, from: number, to: number): ExtentKey {
  return { ...k, FileOffset: from, ExtentOffset: k.ExtentOffset + (from - k.FileOffset), Size: to - from };
}

/** Insert a copy of `ek` into `keys` in place; merges it with a contiguous neighbour in the same extent. */
export function insertKey(keys: ExtentKey[], ek: ExtentKey): void {
  if (ek.Size <= 0) return;
  const s = ek.FileOffset, e = keyEnd(ek);
  const i = firstEndingAfter(keys, s);
  let j = i;
  const before: ExtentKey[] = [], after: ExtentKey[] = [];
  while (j < keys.length && keys[j]!.FileOffset < e) {
    const k = keys[j]!;
    if (k.FileOffset < s) before.push(slice(k, k.FileOffset, s));
    if (keyEnd(k) > e) after.push(slice(k, e, keyEnd(k)));
    j++;
  }
  const mid: ExtentKey = { FileOffset: s, PartitionId: ek.PartitionId, ExtentId: ek.ExtentId, ExtentOffset: ek.ExtentOffset, Size: ek.Size, CRC: ek.CRC ?? 0 };
  keys.splice(i, j - i, ...before, mid, ...after);
  let m = i + before.length;
  if (m > 0 && mergeable(keys[m - 1]!, keys[m]!)) {
    keys[m - 1] = { ...keys[m - 1]!, Size: keys[m - 1]!.Size + keys[m]!.Size };
    keys.splice(m, 1);
    m--;
  }
  if (m + 1 < keys.length && mergeable(keys[m]!, keys[m + 1]!)) {
    keys[m] = { ...keys[m]!, Size: keys[m]!.Size + keys[m + 1]!.Size };
    keys.splice(m + 1, 1);
  }
}

function mergeable(a: ExtentKey, b: ExtentKey): boolean {
  return a.PartitionId === b.PartitionId && a.ExtentId === b.ExtentId &&
    keyEnd(a) === b.FileOffset && a.ExtentOffset + a.Size === b.ExtentOffset;
}

/** The key that ends exactly at `off`, if any. */
export function keyEndingAt(keys: ExtentKey[], off: number): ExtentKey | undefined {
  const i = firstEndingAfter(keys, off) - 1;
  const k = i >= 0 ? keys[i] : undefined;
  return k && keyEnd(k) === off ? k : undefined;
}

/** Keys cut at `size`: everything at or beyond it dropped. */
export function truncateKeys(keys: ExtentKey[], size: number): ExtentKey[] {
  const out: ExtentKey[] = [];
  for (const k of keys) {
    if (k.FileOffset >= size) continue;
    out.push(keyEnd(k) > size ? slice(k, k.FileOffset, size) : k);
  }
  return out;
}

export interface Segment {
  fileOffset: number;
  size: number;
  /** The key covering this segment, or undefined for a hole. */
  key?: ExtentKey;
}

/** Split [offset, offset+size) into covered segments (with their key) and holes. */
export function mapRange(keys: ExtentKey[], offset: number, size: number): Segment[] {
  const out: Segment[] = [];
  const end = offset + size;
  let pos = offset;
  for (let i = firstEndingAfter(keys, offset); i < keys.length && pos < end; i++) {
    const k = keys[i]!;
    if (k.FileOffset >= end) break;
    if (k.FileOffset > pos) {
      out.push({ fileOffset: pos, size: k.FileOffset - pos });
      pos = k.FileOffset;
    }
    const to = Math.min(end, keyEnd(k));
    out.push({ fileOffset: pos, size: to - pos, key: k });
    pos = to;
  }
  if (pos < end) out.push({ fileOffset: pos, size: end - pos });
  return out;
}
