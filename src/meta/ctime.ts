/**
 * ctime on a cluster that keeps none. A CubeFS inode's CreateTime is set when the inode is made and never
 * again (upstream's metanode has no request that changes it; upstream's client reports it as ctime), so
 * chmod, chown, utimes, link, unlink, rename and xattr changes would leave ctime where it was. POSIX (and
 * git's index, backup tools, find -cmin) expects it to move.
 *
 * What this client reports as ctime:
 * - max(CreateTime, ModifyTime): the metanode moves mtime on writes, truncates and directory entry
 *   changes, and ctime moves with them;
 * - and for the changes that leave mtime alone, a record it keeps itself: the xattr CTIME_XATTR holds
 *   "CTIME:MTIME" (Unix seconds: when, and the mtime the inode had then), and the inode's mode word carries
 *   CTIME_FLAG (Go's os.ModeTemporary, which upstream's client and the kernel ignore) so a stat knows when
 *   to read the record: inodes nobody chmodded cost nothing extra. An mtime that differs from the recorded
 *   one is newer news (a write since) and counts too; one that equals it (utimes into the future) does not.
 *
 * The name has no namespace prefix, so no program can set or read it through the kernel's xattr calls
 * (the file system hides it from listxattr and refuses it by name). A client that drops the flag (upstream's
 * chmod rewrites the mode word) makes this client fall back to max(CreateTime, ModifyTime).
 */
import { GoMode } from '../proto/index.js';

export const CTIME_XATTR = 'cubefs-mount.ctime';
export const CTIME_FLAG = GoMode.Temporary;

export interface CtimeRecord {
  /** When the change happened, Unix seconds. */
  c: number;
  /** The inode's mtime just after it, Unix seconds. */
  m: number;
}

export function hasCtimeFlag(goMode: number): boolean {
  return Math.floor(goMode / CTIME_FLAG) % 2 === 1;
}

export function withCtimeFlag(goMode: number): number {
  return hasCtimeFlag(goMode) ? goMode : goMode + CTIME_FLAG;
}

export function encodeCtime(r: CtimeRecord): Buffer {
  return Buffer.from(`${r.c}:${r.m}`);
}

/** null for a value this client did not write. */
export function decodeCtime(v: Buffer | null): CtimeRecord | null {
  const m = v ? /^(\d+):(-?\d+)$/.exec(v.toString('latin1')) : null;
  return m ? { c: Number(m[1]), m: Number(m[2]) } : null;
}

/** The ctime to report, seconds (see the top). */
export function reportedCtime(createTime: number, mtime: number, rec: CtimeRecord | null | undefined): number {
  if (!rec) return Math.max(createTime, mtime);
  return rec.m === mtime ? Math.max(createTime, rec.c) : Math.max(createTime, rec.c, mtime);
}
