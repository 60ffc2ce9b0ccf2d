/**
 * What a file system sees of FUSE: the ops table, each op's arguments, and the replies each op may send.
 *
 * Every request gets exactly one reply. A handler receives `(req, args)`: `req` carries the caller (uid, gid,
 * pid) and only the reply methods libfuse allows for that op (a lookup can answer `entry` or `err`, a
 * forget only `none`); `args` are the op's arguments, copied out of the kernel's message except a write's
 * `data`, which is a view of the receive buffer (see WriteArgs). A handler replies before it returns, or
 * before the promise it returns settles; a handler that throws, rejects, or settles without replying is
 * answered EIO (a forget: none) by the session. A second reply is a bug: it is logged and not sent.
 * Ops missing from the table are answered ENOSYS natively without reaching JS.
 *
 * Numbers: inode numbers, handles, sizes and offsets are JS numbers (exact below 2^53); times are
 * milliseconds since the epoch (fractional). Errno values come from node:os constants (`errno` below).
 */
import { constants } from 'node:os';
import { errnoName } from '../util/errors.js';
import type { Pool } from '../pool/index.js';

export const errno = constants.errno;

/** The ops, in the native binding's order (checked against the addon's `fuseOpNames` at load). */
export enum FuseOp {
  lookup, forget, forgetMulti, getattr, setattr, readlink, mknod, mkdir, unlink, rmdir, symlink, rename,
  link, open, read, write, flush, release, fsync, opendir, readdir, readdirplus, releasedir, fsyncdir,
  statfs, setxattr, getxattr, listxattr, removexattr, access, create, fallocate, copyFileRange, lseek,
}
export type FuseOpName = keyof typeof FuseOp;
export const FUSE_OP_COUNT = 34;

/** setattr `valid` bits (FUSE_SET_ATTR_*). */
export const SetattrValid = {
  MODE: 1 << 0, UID: 1 << 1, GID: 1 << 2, SIZE: 1 << 3, ATIME: 1 << 4, MTIME: 1 << 5,
  ATIME_NOW: 1 << 7, MTIME_NOW: 1 << 8, FORCE: 1 << 9, CTIME: 1 << 10, KILL_SUID: 1 << 11, KILL_SGID: 1 << 12,
} as const;

export interface Attr {
  ino: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev?: number;
  size: number;
  blocks?: number;
  blksize?: number;
  atimeMs: number;
  mtimeMs: number;
  ctimeMs: number;
}

/** A lookup's answer. `attr.ino` 0 is a negative entry (cached for entryTimeout seconds). */
export interface Entry {
  attr: Attr;
  generation?: number;
  /** Seconds. */
  attrTimeout?: number;
  /** Seconds. */
  entryTimeout?: number;
}

export interface OpenReply {
  fh: number;
  directIo?: boolean;
  keepCache?: boolean;
  nonSeekable?: boolean;
  /** opendir only. */
  cacheReaddir?: boolean;
  noFlush?: boolean;
}

export interface StatfsReply {
  bsize: number;
  frsize?: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  favail?: number;
  fsid?: number;
  namemax?: number;
}

/** What INIT negotiated with the kernel. */
export interface ConnInfo {
  protoMajor: number;
  protoMinor: number;
  maxWrite: number;
  maxRead: number;
  maxReadahead: number;
  capable: number;
  want: number;
}

// ---- arguments ----

export interface InoArgs { ino: number }
export interface NameArgs { parent: number; name: string }
export interface ForgetArgs { ino: number; nlookup: number }
export interface ForgetMultiArgs { forgets: ForgetArgs[] }
export interface GetattrArgs { ino: number; fh?: number }
export interface SetattrArgs {
  ino: number;
  /** SetattrValid bits: which of the fields below are set. */
  valid: number;
  fh?: number;
  mode?: number;
  uid?: number;
  gid?: number;
  size?: number;
  atime?: number;
  mtime?: number;
  ctime?: number;
}
export interface MknodArgs { parent: number; name: string; mode: number; umask: number; rdev: number }
export interface MkdirArgs { parent: number; name: string; mode: number; umask: number }
export interface SymlinkArgs { target: string; parent: number; name: string }
export interface RenameArgs { parent: number; name: string; newParent: number; newName: string; flags: number }
export interface LinkArgs { ino: number; newParent: number; newName: string }
export interface OpenArgs { ino: number; flags: number }
export interface ReadArgs { ino: number; size: number; offset: number; fh: number; flags: number }
/**
 * `data` is a Buffer over the payload inside the native receive buffer (no copy). It belongs to the request:
 * once the request is answered it is detached (length 0) and its memory returns to the allocator.
 */
export interface WriteArgs { ino: number; data: Buffer; offset: number; fh: number; flags: number; writepage: boolean }
export interface FlushArgs { ino: number; fh: number; lockOwner: bigint }
export interface ReleaseArgs { ino: number; fh: number; flags: number }
export interface FsyncArgs { ino: number; fh: number; datasync: boolean }
export interface ReaddirArgs { ino: number; size: number; offset: number; fh: number }
export interface ReleasedirArgs { ino: number; fh: number }
export interface SetxattrArgs { ino: number; name: string; value: Buffer; flags: number }
export interface GetxattrArgs { ino: number; name: string; size: number }
export interface ListxattrArgs { ino: number; size: number }
export interface RemovexattrArgs { ino: number; name: string }
export interface AccessArgs { ino: number; mask: number }
export interface CreateArgs { parent: number; name: string; mode: number; umask: number; flags: number }
export interface FallocateArgs { ino: number; fh: number; mode: number; offset: number; length: number }
export interface CopyFileRangeArgs {
  inoIn: number; offIn: number; fhIn: number; inoOut: number; offOut: number; fhOut: number; len: number; flags: number;
}
export interface LseekArgs { ino: number; fh: number; offset: number; whence: number }

// ---- replies: each op's request type exposes only its valid replies ----

export interface RequestInfo {
  readonly op: FuseOp;
  readonly id: number;
  readonly uid: number;
  readonly gid: number;
  readonly pid: number;
  /** True once a reply went (or was attempted). */
  readonly replied: boolean;
}
export interface ErrReply {
  /** errno; 0 is success for the ops whose only other answer is an error (unlink, flush, release, ...). */
  err(errno: number): void;
}
export interface NoneReply { none(): void }
export interface EntryReply extends ErrReply { entry(e: Entry): void }
export interface AttrReply extends ErrReply { attr(a: Attr, timeout?: number): void }
export interface OpenReplies extends ErrReply { open(o: OpenReply): void }
export interface CreateReply extends ErrReply { create(e: Entry, o: OpenReply): void }
export interface WriteReply extends ErrReply { write(count: number): void }
export interface BufReply extends ErrReply {
  /** fuse_reply_buf: the bytes are copied to the kernel before this returns. */
  buf(data: Uint8Array): void;
  /** A zero-length reply (end of file). */
  data(): void;
}
export interface ReadlinkReply extends ErrReply { readlink(target: string): void }
export interface StatfsReplies extends ErrReply { statfs(s: StatfsReply): void }
export interface XattrReply extends BufReply { xattrSize(size: number): void }
export interface LseekReply extends ErrReply { lseek(offset: number): void }
/** readdir: entries are packed natively (fuse_add_direntry) into a buffer of `args.size` bytes. */
export interface DirReply extends ErrReply {
  /** false when the entry did not fit: stop and reply. `nextOffset` is the offset of the entry after it. */
  dirAdd(name: string, ino: number, mode: number, nextOffset: number): boolean;
  dirReply(): void;
}
/** readdirplus: every entry except "." and ".." counts as one lookup (balance it with forget). */
export interface DirPlusReply extends DirReply {
  dirAddPlus(name: string, e: Entry, nextOffset: number): boolean;
}

export type Req<R> = RequestInfo & R;
export type Handled = void | Promise<void>;

/** The file system: an explicit table; absent ops are answered ENOSYS. */
export interface FuseOps {
  /** INIT is answered natively (1 MiB requests); this only reports what was negotiated. */
  init?(conn: ConnInfo): void;
  /** After the session ended (unmount from either side). */
  destroy?(): void;
  lookup?(req: Req<EntryReply>, a: NameArgs): Handled;
  forget?(req: Req<NoneReply>, a: ForgetArgs): Handled;
  forgetMulti?(req: Req<NoneReply>, a: ForgetMultiArgs): Handled;
  getattr?(req: Req<AttrReply>, a: GetattrArgs): Handled;
  setattr?(req: Req<AttrReply>, a: SetattrArgs): Handled;
  readlink?(req: Req<ReadlinkReply>, a: InoArgs): Handled;
  mknod?(req: Req<EntryReply>, a: MknodArgs): Handled;
  mkdir?(req: Req<EntryReply>, a: MkdirArgs): Handled;
  unlink?(req: Req<ErrReply>, a: NameArgs): Handled;
  rmdir?(req: Req<ErrReply>, a: NameArgs): Handled;
  symlink?(req: Req<EntryReply>, a: SymlinkArgs): Handled;
  rename?(req: Req<ErrReply>, a: RenameArgs): Handled;
  link?(req: Req<EntryReply>, a: LinkArgs): Handled;
  open?(req: Req<OpenReplies>, a: OpenArgs): Handled;
  read?(req: Req<BufReply>, a: ReadArgs): Handled;
  write?(req: Req<WriteReply>, a: WriteArgs): Handled;
  flush?(req: Req<ErrReply>, a: FlushArgs): Handled;
  release?(req: Req<ErrReply>, a: ReleaseArgs): Handled;
  fsync?(req: Req<ErrReply>, a: FsyncArgs): Handled;
  opendir?(req: Req<OpenReplies>, a: OpenArgs): Handled;
  readdir?(req: Req<DirReply>, a: ReaddirArgs): Handled;
  readdirplus?(req: Req<DirPlusReply>, a: ReaddirArgs): Handled;
  releasedir?(req: Req<ErrReply>, a: ReleasedirArgs): Handled;
  fsyncdir?(req: Req<ErrReply>, a: FsyncArgs): Handled;
  statfs?(req: Req<StatfsReplies>, a: InoArgs): Handled;
  setxattr?(req: Req<ErrReply>, a: SetxattrArgs): Handled;
  getxattr?(req: Req<XattrReply>, a: GetxattrArgs): Handled;
  listxattr?(req: Req<XattrReply>, a: ListxattrArgs): Handled;
  removexattr?(req: Req<ErrReply>, a: RemovexattrArgs): Handled;
  access?(req: Req<ErrReply>, a: AccessArgs): Handled;
  create?(req: Req<CreateReply>, a: CreateArgs): Handled;
  fallocate?(req: Req<ErrReply>, a: FallocateArgs): Handled;
  copyFileRange?(req: Req<WriteReply>, a: CopyFileRangeArgs): Handled;
  lseek?(req: Req<LseekReply>, a: LseekArgs): Handled;
}

export interface MountOptions {
  /** Shown as the source in /proc/mounts (default "cubefs"). No commas. */
  fsname?: string;
  /** The type is "fuse.<subtype>" (default "cubefs"). */
  subtype?: string;
  /** Further -o options: allow_other, default_permissions, auto_unmount, ro, ... */
  options?: string[];
  /** Native worker threads, each looping receive -> process (default 4). */
  workers?: number;
  /** Largest write request (default and maximum 1 MiB). */
  maxWrite?: number;
  /** Largest read request, the max_read mount option (default maxWrite). */
  maxRead?: number;
  /** Unmount on SIGINT/SIGTERM, then let the signal take its course (default true). */
  handleSignals?: boolean;
  /**
   * Receive buffers (one per worker, ~1 MiB + 4 KiB each: a 2 MiB block) come from this pool, so a write's
   * payload is already in pool memory. When the pool has no free block a worker takes a buffer from the
   * heap instead (counted in stats().fallbackBuffers); it never waits. The session keeps the pool's
   * allocator alive until it is gone, even if the pool is closed first.
   */
  pool?: Pool;
  /**
   * Ask for FUSE_CAP_WRITEBACK_CACHE (default false): the kernel buffers writes in the page cache and sends
   * large asynchronous WRITEs. It then opens O_WRONLY files O_RDWR (and may read through them), applies
   * O_APPEND itself, keeps i_size and mtime/ctime authoritative (sending them back by setattr), and ignores
   * the sizes and times getattr reports for regular files. conn.want tells whether the kernel agreed.
   */
  writebackCache?: boolean;
}

/** The native session's counters. */
export interface NativeStats {
  requests: Partial<Record<FuseOpName, number>>;
  maxWriteSeen: number;
  heldBuffers: number;
  fallbackBuffers: number;
  receiveBufferSize: number;
  outstanding: number;
  liveWorkers: number;
}

/** A mount failure or a session error, with an errno and its name (code). */
export class FuseError extends Error {
  readonly errno: number;
  readonly code: string;
  readonly path?: string;
  constructor(message: string, errnoValue: number, path?: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'FuseError';
    this.errno = errnoValue;
    this.code = errnoName(errnoValue) ?? 'EIO';
    if (path !== undefined) this.path = path;
  }
}
