/**
 * The POSIX file system: FUSE ops mapped onto the CubeFS SDK.
 *
 * This layer owns what the kernel's view needs and CubeFS does not keep:
 * - lookup counts: every entry we hand out (lookup, create, mkdir, link, readdirplus ...) counts one; forget
 *   balances it. An inode whose link count reached 0 is evicted at the metanode only when its lookup count
 *   reaches 0 (the kernel holds one while the file is open), which is what makes unlink-while-open work.
 * - file and directory handles: a file handle holds the inode's shared FileStream; a directory handle holds
 *   the listing taken at opendir, so readdir offsets stay stable while the directory changes.
 * - a short attribute cache (attrValid), invalidated by every change made through this mount.
 * Every handler replies exactly once (the session asserts it); errors are errno values from the SDK's
 * single result-code table (errnoOf).
 */
import { constants as osc } from 'node:os';
import type { CubeFSClient } from '../sdk/client.js';
import type { FileStream } from '../data/index.js';
import { goModeToPosix, isGoDir, posixToGoMode, fromRfc3339, S_IFMT, S_IFDIR, S_IFLNK, S_IFREG, S_IFIFO, S_IFSOCK, S_IFCHR, S_IFBLK, type InodeInfo } from '../proto/index.js';
import { devNumbers, makeDev } from '../fuse/session.js';
import { CubeFSError, ErrorCode, errnoOf } from '../util/errors.js';
import { Result } from '../proto/result.js';
import { logger, warn } from '../util/log.js';
import { settledWithin } from '../util/settle.js';
import { CTIME_XATTR, decodeCtime, encodeCtime, hasCtimeFlag, reportedCtime, withCtimeFlag, type CtimeRecord } from '../meta/ctime.js';
import {
  SetattrValid,
  type AccessArgs, type Attr, type AttrReply, type CopyFileRangeArgs, type CreateArgs, type CreateReply, type DirPlusReply,
  type DirReply, type Entry, type EntryReply, type ErrReply, type FallocateArgs, type FlushArgs, type ForgetArgs,
  type ForgetMultiArgs, type FsyncArgs, type FuseOps, type GetattrArgs, type GetxattrArgs, type InoArgs, type LinkArgs,
  type ListxattrArgs, type MkdirArgs, type MknodArgs, type NameArgs, type NoneReply, type OpenArgs, type OpenReplies,
  type ReadArgs, type ReaddirArgs, type ReadlinkReply, type ReleaseArgs, type ReleasedirArgs, type RemovexattrArgs,
  type RenameArgs, type Req, type SetattrArgs, type SetxattrArgs, type StatfsReplies, type SymlinkArgs,
  type BufReply, type WriteArgs, type WriteReply, type XattrReply,
} from '../fuse/types.js';

const log = logger('fs');
const E = osc.errno;
const ROOT = 1;
const BLOCK = 4096;
const RENAME_NOREPLACE = 1;
const RENAME_EXCHANGE = 2;
const XATTR_CREATE = 1;
const XATTR_REPLACE = 2;
const O_ACCMODE = 3;
const O_RDONLY = 0;
const O_WRONLY = 1;
const O_RDWR = 2;
const O_APPEND = 0o2000;
const O_TRUNC = 0o1000;
const O_SYNC = 0o4010000;
const O_DSYNC = 0o10000;
const O_DIRECT = 0o40000;
/** Longest name (bytes), as statfs reports: the kernel lets FUSE names up to 1024 bytes through. */
const NAME_MAX = 255;
/** How long an unmount waits for open files' last writes to be recorded (see shutdown). */
const UNMOUNT_WAIT_MS = 15_000;

/**
 * Where a device node keeps its device number: CubeFS inodes have no rdev, but every inode can carry a
 * target (CreateInode's Target, kept and returned for any type by upstream's metanode; upstream's client
 * reads it for symlinks only). So a character or block device's inode is created with the target
 * "MAJOR:MINOR" (ASCII, decimal): upstream's client lists it as a device of its type, with rdev 0.
 */
function deviceTarget(rdev: number): Buffer {
  const { major, minor } = devNumbers(rdev);
  return Buffer.from(`${major}:${minor}`);
}

/** st_rdev of a device inode from its target ("MAJOR:MINOR"); 0 when it has none (made by another client). */
function deviceOf(tgt: string | null | undefined): number {
  if (!tgt) return 0;
  const m = /^(\d+):(\d+)$/.exec(Buffer.from(tgt, 'base64').toString('latin1'));
  return m ? makeDev(Number(m[1]), Number(m[2])) : 0;
}

function tooLong(name: string): boolean {
  return name.length > NAME_MAX / 4 && Buffer.byteLength(name) > NAME_MAX;
}

export interface FsOptions {
  /** Seconds the kernel may cache attributes (upstream's attrValid). */
  attrValid?: number;
  /** Seconds the kernel may cache names (upstream's lookupValid). */
  lookupValid?: number;
  readOnly?: boolean;
  /** fsync the data on every close (upstream's fsyncOnClose); flush always waits for the replicas. */
  fsyncOnClose?: boolean;
  /**
   * The mount asked for FUSE's writeback cache. The kernel then owns i_size, mtime and ctime of every
   * regular file it has cached (it ignores getattr's and sends its own back by setattr), opens
   * O_WRONLY files O_RDWR because it may read pages around a write, and applies O_APPEND itself (writes
   * arrive at their final offsets; this layer never appends on its own).
   */
  writebackCache?: boolean;
  /**
   * Write-behind (default true): a buffered write of up to 128 KiB is gathered with the writes that follow it
   * and answered once copied; close, fsync and flush still wait for every replica (see FileStream).
   */
  writeBehind?: boolean;
}

interface FileHandle {
  ino: number;
  stream: FileStream;
  flags: number;
}

interface DirHandle {
  ino: number;
  entries: { name: string; ino: number; mode: number }[];
}

interface CachedInode {
  info: InodeInfo;
  expires: number;
}

/** Answers a failed request with its errno (from the SDK's one result-code table); an EIO is also logged. */
function fail(req: ErrReply, e: unknown, what: string): void {
  const n = errnoOf(e);
  if (n === E.EIO) log('%s: %s', what, (e as Error)?.stack ?? e);
  req.err(n);
}

export class CubeFileSystem implements FuseOps {
  private readonly attrValid: number;
  private readonly lookupValid: number;
  private readonly readOnly: boolean;
  private readonly fsyncOnClose: boolean;
  private readonly writebackCache: boolean;
  private readonly writeBehind: boolean;
  /** Kernel lookup counts. */
  private readonly lookups = new Map<number, number>();
  /** Inodes whose last link went away while the kernel still knew them: evicted at the last forget. */
  private readonly orphans = new Set<number>();
  private readonly files = new Map<number, FileHandle>();
  private readonly dirs = new Map<number, DirHandle>();
  private readonly cache = new Map<number, CachedInode>();
  /** ctime records of flagged inodes (ctime.ts), kept as long as their inode is cached or known. */
  private readonly ctimes = new Map<number, CtimeRecord>();
  /**
   * getxattr answers for attrValid seconds. The kernel asks for security.capability before every write
   * (to drop privileges), so without this each write would cost a metanode round trip.
   */
  private readonly xattrCache = new Map<string, { value: Buffer | null; expires: number }>();
  private nextFh = 1;

  constructor(private readonly client: CubeFSClient, opts: FsOptions = {}) {
    this.attrValid = opts.attrValid ?? 1;
    this.lookupValid = opts.lookupValid ?? 1;
    this.readOnly = opts.readOnly ?? false;
    this.fsyncOnClose = opts.fsyncOnClose ?? false;
    this.writebackCache = opts.writebackCache ?? false;
    this.writeBehind = opts.writeBehind ?? true;
    client.meta.onDeferredUnlink = (info) => this.unlinked(info);
  }

  get meta(): CubeFSClient['meta'] {
    return this.client.meta;
  }

  // ---- attributes ----

  private async inode(ino: number, fresh = false): Promise<InodeInfo> {
    const c = this.cache.get(ino);
    if (!fresh && c && c.expires > Date.now()) return c.info;
    const info = await this.meta.inodeGet(ino);
    await this.learnCtimes([info]);
    this.remember(info);
    return info;
  }

  /** The ctime records of those of `infos` that carry the flag (one getxattr each, in parallel). */
  private async learnCtimes(infos: InodeInfo[]): Promise<void> {
    await Promise.all(infos.map(async (info) => {
      if (!hasCtimeFlag(info.mode)) {
        this.ctimes.delete(info.ino);
        return;
      }
      const rec = decodeCtime(await this.meta.getXAttr(info.ino, CTIME_XATTR).catch(() => null));
      if (rec) this.ctimes.set(info.ino, rec);
      else this.ctimes.delete(info.ino);
    }));
  }

  /**
   * A change that moves ctime and not mtime (chmod, chown, utimes, link, unlink, rename, xattrs): recorded
   * as ctime.ts describes. `mtime`: the inode's mtime after the change (default: as the metanode has it).
   * Best effort: the change itself is done, so a failure here is said and not passed on.
   */
  private async touchCtime(ino: number, mtime?: number): Promise<void> {
    try {
      const cur = await this.meta.inodeGet(ino);
      const rec: CtimeRecord = { c: Math.floor(Date.now() / 1000), m: mtime ?? fromRfc3339(cur.mt) };
      await this.meta.setXAttr(ino, CTIME_XATTR, encodeCtime(rec));
      if (!hasCtimeFlag(cur.mode)) await this.meta.setattr(ino, { mode: withCtimeFlag(cur.mode) });
      this.ctimes.set(ino, rec);
    } catch (e) {
      log('ctime of inode %d not recorded: %s', ino, (e as Error).message);
    }
    this.forgetCached(ino);
  }

  private remember(info: InodeInfo): void {
    this.cache.set(info.ino, { info, expires: Date.now() + this.attrValid * 1000 });
  }

  private forgetCached(...inos: number[]): void {
    for (const i of inos) this.cache.delete(i);
  }

  private attrOf(info: InodeInfo): Attr {
    const stream = this.client.data.peek(info.ino);
    const size = stream ? Math.max(stream.size, info.sz) : info.sz;
    const mode = goModeToPosix(info.mode);
    const isLink = (mode & S_IFMT) === S_IFLNK;
    const linkLen = isLink && info.tgt ? Buffer.from(info.tgt, 'base64').length : 0;
    const isDevice = (mode & S_IFMT) === S_IFCHR || (mode & S_IFMT) === S_IFBLK;
    return {
      ino: info.ino,
      mode,
      nlink: info.nlink,
      uid: info.uid,
      gid: info.gid,
      rdev: isDevice ? deviceOf(info.tgt) : 0,
      size: isLink ? linkLen : (mode & S_IFMT) === S_IFDIR ? BLOCK : isDevice ? 0 : size,
      blocks: Math.ceil(size / 512),
      blksize: BLOCK,
      atimeMs: fromRfc3339(info.at) * 1000,
      mtimeMs: fromRfc3339(info.mt) * 1000,
      ctimeMs: reportedCtime(fromRfc3339(info.ct), fromRfc3339(info.mt), this.ctimes.get(info.ino)) * 1000,
    };
  }

  /** An entry for the kernel: counts one lookup. */
  private entry(info: InodeInfo): Entry {
    this.lookups.set(info.ino, (this.lookups.get(info.ino) ?? 0) + 1);
    this.remember(info);
    return { attr: this.attrOf(info), attrTimeout: this.attrValid, entryTimeout: this.lookupValid };
  }

  private ro(req: ErrReply): boolean {
    if (this.readOnly) req.err(E.EROFS);
    return this.readOnly;
  }

  // ---- names ----

  async lookup(req: Req<EntryReply>, a: NameArgs): Promise<void> {
    if (tooLong(a.name)) return req.err(E.ENAMETOOLONG);
    try {
      req.entry(this.entry(await this.lookupInode(a.parent, a.name)));
    } catch (e) {
      fail(req, e, `lookup ${a.parent}/${a.name}`);
    }
  }

  /**
   * The inode a name stands for. A dentry whose inode does not exist (a create that died between its two
   * steps, on a client without the lookup-before-rollback rule) would make the name unusable: stat fails,
   * create says EEXIST. Inodes are made before the dentries that name them, so such a dentry is never
   * valid: once a second lookup still shows it, it is removed (said once) and the name is ENOENT.
   */
  private async lookupInode(parent: number, name: string): Promise<InodeInfo> {
    for (let attempt = 0; ; attempt++) {
      const { ino } = await this.meta.lookup(parent, name);
      try {
        return await this.inode(ino, true);
      } catch (e) {
        if (!(e instanceof CubeFSError && e.result === Result.NotExist) || attempt >= 2) throw e;
        const again = await this.meta.lookup(parent, name);
        if (again.ino !== ino) continue;
        warn('fs', `directory entry ${parent}/${name} names inode ${ino}, which does not exist: removing the entry`, { key: 'dangling-dentry' });
        await this.meta.deleteDentry(parent, name);
        throw new CubeFSError(ErrorCode.Result, `lookup ${parent}/${name}: dangling entry removed`, { errno: E.ENOENT, result: Result.NotExist });
      }
    }
  }

  forget(req: Req<NoneReply>, a: ForgetArgs): void {
    this.drop(a.ino, a.nlookup);
    req.none();
  }

  forgetMulti(req: Req<NoneReply>, a: ForgetMultiArgs): void {
    for (const f of a.forgets) this.drop(f.ino, f.nlookup);
    req.none();
  }

  private drop(ino: number, n: number): void {
    const left = (this.lookups.get(ino) ?? 0) - n;
    if (left > 0) {
      this.lookups.set(ino, left);
      return;
    }
    this.lookups.delete(ino);
    this.forgetCached(ino);
    this.ctimes.delete(ino);
    if (this.orphans.delete(ino)) {
      this.meta.evictInode(ino).catch((e: Error) => log('evict %d: %s', ino, e.message));
    }
  }

  /** After an unlink or an overwriting rename: evict now, or at the last forget if the kernel knows it. */
  private unlinked(info: InodeInfo | null): void {
    if (!info) return;
    this.forgetCached(info.ino);
    if (info.nlink > 0 && !isGoDir(info.mode)) return;
    if (this.lookups.has(info.ino)) this.orphans.add(info.ino);
    else this.meta.evictInode(info.ino).catch((e: Error) => log('evict %d: %s', info.ino, e.message));
  }

  async getattr(req: Req<AttrReply>, a: GetattrArgs): Promise<void> {
    try {
      req.attr(this.attrOf(await this.inode(a.ino)), this.attrValid);
    } catch (e) {
      fail(req, e, `getattr ${a.ino}`);
    }
  }

  async setattr(req: Req<AttrReply>, a: SetattrArgs): Promise<void> {
    if (this.ro(req)) return;
    try {
      const v = a.valid;
      const stream = this.client.data.peek(a.ino);
      // Record pending extent keys first: the metanode stamps mtime when it appends them, which must not
      // undo explicit times (tar and cp -p set them with futimens before close).
      // Sizes are JavaScript numbers here: exact up to 2^53 - 1 (8 PiB), beyond that refused, not rounded.
      if (v & SetattrValid.SIZE && !Number.isSafeInteger(a.size)) return req.err(E.EFBIG);
      if (stream && v & (SetattrValid.SIZE | SetattrValid.ATIME | SetattrValid.MTIME)) await stream.flush();
      if (v & SetattrValid.SIZE) await this.client.data.truncate(a.ino, a.size!);
      const attrs: { mode?: number; uid?: number; gid?: number; mtime?: number; atime?: number } = {};
      // Everything but a size change leaves mtime alone and moves ctime: recorded (ctime.ts) before the
      // change, whose Setattr also carries the flag (a Setattr mode is the whole mode word, as upstream's).
      // (No bit at all: chown(f, -1, -1), which moves ctime and nothing else.)
      const movesCtime = v === 0 || (v & (SetattrValid.MODE | SetattrValid.UID | SetattrValid.GID | SetattrValid.ATIME | SetattrValid.MTIME | SetattrValid.CTIME)) !== 0;
      const cur = v & SetattrValid.MODE || movesCtime ? await this.inode(a.ino, true) : null;
      if (v & SetattrValid.MODE) attrs.mode = posixToGoMode((goModeToPosix(cur!.mode) & S_IFMT) | (a.mode! & 0o7777));
      if (v & SetattrValid.UID) attrs.uid = a.uid!;
      if (v & SetattrValid.GID) attrs.gid = a.gid!;
      const now = Math.floor(Date.now() / 1000);
      if (v & SetattrValid.ATIME) attrs.atime = v & SetattrValid.ATIME_NOW ? now : Math.floor(a.atime! / 1000);
      if (v & SetattrValid.MTIME) attrs.mtime = v & SetattrValid.MTIME_NOW ? now : Math.floor(a.mtime! / 1000);
      if (movesCtime) {
        const rec: CtimeRecord = { c: now, m: attrs.mtime ?? fromRfc3339(cur!.mt) };
        await this.meta.setXAttr(a.ino, CTIME_XATTR, encodeCtime(rec));
        if (attrs.mode !== undefined || !hasCtimeFlag(cur!.mode)) attrs.mode = withCtimeFlag(attrs.mode ?? cur!.mode);
        this.ctimes.set(a.ino, rec);
      }
      if (Object.keys(attrs).length > 0) await this.meta.setattr(a.ino, attrs);
      this.forgetCached(a.ino);
      req.attr(this.attrOf(await this.inode(a.ino, true)), this.attrValid);
    } catch (e) {
      fail(req, e, `setattr ${a.ino}`);
    }
  }

  async readlink(req: Req<ReadlinkReply>, a: InoArgs): Promise<void> {
    try {
      const info = await this.inode(a.ino);
      if ((goModeToPosix(info.mode) & S_IFMT) !== S_IFLNK) return req.err(E.EINVAL);
      req.readlink(Buffer.from(info.tgt ?? '', 'base64').toString());
    } catch (e) {
      fail(req, e, `readlink ${a.ino}`);
    }
  }

  /** Ownership of a new inode: the caller's, with the group of a setgid parent (and setgid on directories). */
  private async owner(req: { uid: number; gid: number }, parent: number, mode: number): Promise<{ uid: number; gid: number; mode: number }> {
    const p = await this.inode(parent);
    const pmode = goModeToPosix(p.mode);
    if (pmode & 0o2000) return { uid: req.uid, gid: p.gid, mode: (mode & S_IFMT) === S_IFDIR ? mode | 0o2000 : mode };
    return { uid: req.uid, gid: req.gid, mode };
  }

  private async make(req: Req<EntryReply> | Req<CreateReply>, parent: number, name: string, mode: number, target?: Buffer): Promise<InodeInfo> {
    const o = await this.owner(req, parent, mode);
    const info = await this.meta.create(parent, name, posixToGoMode(o.mode), o.uid, o.gid, target);
    this.forgetCached(parent);
    return info;
  }

  async mknod(req: Req<EntryReply>, a: MknodArgs): Promise<void> {
    if (this.ro(req)) return;
    if (tooLong(a.name)) return req.err(E.ENAMETOOLONG);
    const type = a.mode & S_IFMT;
    if (type !== S_IFREG && type !== S_IFIFO && type !== S_IFSOCK && type !== S_IFCHR && type !== S_IFBLK) return req.err(E.EINVAL);
    // The kernel let only CAP_MKNOD through for devices. The device number goes where the inode keeps a
    // symlink's target (see deviceTarget).
    const target = type === S_IFCHR || type === S_IFBLK ? deviceTarget(a.rdev) : undefined;
    try {
      req.entry(this.entry(await this.make(req, a.parent, a.name, a.mode, target)));
    } catch (e) {
      fail(req, e, `mknod ${a.parent}/${a.name}`);
    }
  }

  async mkdir(req: Req<EntryReply>, a: MkdirArgs): Promise<void> {
    if (this.ro(req)) return;
    if (tooLong(a.name)) return req.err(E.ENAMETOOLONG);
    try {
      req.entry(this.entry(await this.make(req, a.parent, a.name, S_IFDIR | (a.mode & 0o7777))));
    } catch (e) {
      fail(req, e, `mkdir ${a.parent}/${a.name}`);
    }
  }

  async symlink(req: Req<EntryReply>, a: SymlinkArgs): Promise<void> {
    if (this.ro(req)) return;
    if (tooLong(a.name)) return req.err(E.ENAMETOOLONG);
    try {
      req.entry(this.entry(await this.make(req, a.parent, a.name, S_IFLNK | 0o777, Buffer.from(a.target))));
    } catch (e) {
      fail(req, e, `symlink ${a.parent}/${a.name}`);
    }
  }

  async unlink(req: Req<ErrReply>, a: NameArgs): Promise<void> {
    await this.remove(req, a, false);
  }

  async rmdir(req: Req<ErrReply>, a: NameArgs): Promise<void> {
    await this.remove(req, a, true);
  }

  private async remove(req: Req<ErrReply>, a: NameArgs, isDir: boolean): Promise<void> {
    if (this.ro(req)) return;
    try {
      const after = await this.meta.unlink(a.parent, a.name, isDir);
      this.forgetCached(a.parent);
      this.unlinked(after);
      if (after && after.nlink > 0 && !isGoDir(after.mode)) await this.touchCtime(after.ino); // one link fewer
      req.err(0);
    } catch (e) {
      fail(req, e, `${isDir ? 'rmdir' : 'unlink'} ${a.parent}/${a.name}`);
    }
  }

  async rename(req: Req<ErrReply>, a: RenameArgs): Promise<void> {
    if (this.ro(req)) return;
    if (tooLong(a.newName)) return req.err(E.ENAMETOOLONG);
    if (a.flags & RENAME_EXCHANGE) return req.err(E.EINVAL); // CubeFS has no atomic exchange
    if (a.flags & ~RENAME_NOREPLACE) return req.err(E.EINVAL);
    try {
      if (a.flags & RENAME_NOREPLACE) {
        const exists = await this.meta.lookup(a.newParent, a.newName).then(() => true, (e) => {
          if (errnoOf(e) === E.ENOENT) return false;
          throw e;
        });
        if (exists) return req.err(E.EEXIST);
      }
      const { ino, overwritten } = await this.meta.rename(a.parent, a.name, a.newParent, a.newName);
      this.forgetCached(a.parent, a.newParent, ino);
      this.unlinked(overwritten);
      await this.touchCtime(ino);
      if (overwritten && overwritten.nlink > 0 && !isGoDir(overwritten.mode)) await this.touchCtime(overwritten.ino);
      req.err(0);
    } catch (e) {
      fail(req, e, `rename ${a.parent}/${a.name} -> ${a.newParent}/${a.newName}`);
    }
  }

  async link(req: Req<EntryReply>, a: LinkArgs): Promise<void> {
    if (this.ro(req)) return;
    if (tooLong(a.newName)) return req.err(E.ENAMETOOLONG);
    try {
      await this.meta.link(a.newParent, a.newName, a.ino);
      this.forgetCached(a.newParent, a.ino);
      this.orphans.delete(a.ino);
      await this.touchCtime(a.ino);
      req.entry(this.entry(await this.inode(a.ino, true)));
    } catch (e) {
      fail(req, e, `link ${a.ino} -> ${a.newParent}/${a.newName}`);
    }
  }

  // ---- files ----

  private addFile(ino: number, flags: number): number {
    if (this.writebackCache) {
      // The kernel already turns O_WRONLY into O_RDWR (it reads pages around partial writes) and does
      // O_APPEND itself; normalise here too, so nothing below treats this handle as write-only or appending.
      if ((flags & O_ACCMODE) === O_WRONLY) flags = (flags & ~O_ACCMODE) | O_RDWR;
      flags &= ~O_APPEND;
    }
    const fh = this.nextFh++;
    this.files.set(fh, { ino, stream: this.client.data.open(ino), flags });
    return fh;
  }

  async open(req: Req<OpenReplies>, a: OpenArgs): Promise<void> {
    if (this.readOnly && (a.flags & O_ACCMODE) !== O_RDONLY) return req.err(E.EROFS);
    const fh = this.addFile(a.ino, a.flags);
    const stream = this.files.get(fh)!.stream;
    try {
      // libfuse 3 negotiates atomic_o_trunc: the kernel leaves O_TRUNC to open instead of sending a setattr
      // (it has checked write permission, also for O_RDONLY|O_TRUNC, which Linux truncates too).
      if (a.flags & O_TRUNC) {
        if (this.readOnly) throw new CubeFSError(ErrorCode.Invalid, 'read-only mount', { errno: E.EROFS });
        await this.truncateAtOpen(req, a.ino, stream);
      }
      await stream.load();
      req.open({ fh, keepCache: false });
    } catch (e) {
      // No handle reaches the kernel: drop this one's stream reference.
      this.files.delete(fh);
      await stream.release().catch(() => undefined);
      fail(req, e, `open ${a.ino}`);
    }
  }

  /**
   * O_TRUNC as truncate(2) does it: size 0, mtime (and so ctime) now even when the file was empty, and a
   * caller without CAP_FSETID (not root) loses setuid, and setgid where group execute is set.
   */
  private async truncateAtOpen(req: { uid: number }, ino: number, stream: FileStream): Promise<void> {
    await stream.truncate(0);
    const cur = await this.inode(ino, true);
    const attrs: { mtime: number; mode?: number } = { mtime: Math.floor(Date.now() / 1000) };
    const m = goModeToPosix(cur.mode);
    const kill = req.uid !== 0 ? (m & 0o4000) | ((m & 0o2010) === 0o2010 ? 0o2000 : 0) : 0;
    if (kill) {
      const next = posixToGoMode(m & ~kill);
      attrs.mode = hasCtimeFlag(cur.mode) ? withCtimeFlag(next) : next;
    }
    await this.meta.setattr(ino, attrs);
    this.forgetCached(ino);
  }

  async create(req: Req<CreateReply>, a: CreateArgs): Promise<void> {
    if (this.ro(req)) return;
    if (tooLong(a.name)) return req.err(E.ENAMETOOLONG);
    try {
      const info = await this.make(req, a.parent, a.name, S_IFREG | (a.mode & 0o7777));
      const fh = this.addFile(info.ino, a.flags);
      req.create(this.entry(info), { fh });
    } catch (e) {
      fail(req, e, `create ${a.parent}/${a.name}`);
    }
  }

  async read(req: Req<BufReply>, a: ReadArgs): Promise<void> {
    const h = this.files.get(a.fh);
    if (!h) return req.err(E.EBADF);
    try {
      const data = await h.stream.read(a.offset, a.size);
      if (data.length === 0) req.data();
      else req.buf(data);
    } catch (e) {
      fail(req, e, `read ${a.ino}@${a.offset}+${a.size}`);
    }
  }

  async write(req: Req<WriteReply>, a: WriteArgs): Promise<void> {
    const h = this.files.get(a.fh);
    if (!h) return req.err(E.EBADF);
    if (!Number.isSafeInteger(a.offset + a.data.length)) return req.err(E.EFBIG);
    try {
      // a.data is a view of the FUSE receive buffer, valid until this request is answered. A large write (or a
      // sync or O_DIRECT one) resolves only once every replica has it, with no copy; a small buffered one may be
      // staged (copied) for write-behind.
      const sync = (h.flags & O_SYNC) === O_SYNC;
      const direct = (h.flags & (O_DSYNC | O_DIRECT)) !== 0;
      await h.stream.write(a.offset, a.data, { sync, stage: this.writeBehind && !direct });
      // O_DIRECT and O_SYNC/O_DSYNC writes are recorded at the metanode before they return, as upstream's
      // client does (its Write waits for a flush): another client sees them at once, and a crash keeps them.
      if (direct) await h.stream.flush();
      this.forgetCached(a.ino);
      req.write(a.data.length);
    } catch (e) {
      fail(req, e, `write ${a.ino}@${a.offset}+${a.data.length}`);
    }
  }

  async flush(req: Req<ErrReply>, a: FlushArgs): Promise<void> {
    const h = this.files.get(a.fh);
    if (!h) return req.err(0);
    try {
      await h.stream.flush();
      req.err(0);
    } catch (e) {
      fail(req, e, `flush ${a.ino}`);
    }
  }

  async fsync(req: Req<ErrReply>, a: FsyncArgs): Promise<void> {
    const h = this.files.get(a.fh);
    try {
      if (h) await h.stream.flush();
      req.err(0);
    } catch (e) {
      fail(req, e, `fsync ${a.ino}`);
    }
  }

  async release(req: Req<ErrReply>, a: ReleaseArgs): Promise<void> {
    const h = this.files.get(a.fh);
    this.files.delete(a.fh);
    try {
      if (h) {
        if (this.fsyncOnClose) await h.stream.flush();
        await h.stream.release();
      }
      this.forgetCached(a.ino);
      req.err(0);
    } catch (e) {
      fail(req, e, `release ${a.ino}`);
    }
  }

  async fallocate(req: Req<ErrReply>, a: FallocateArgs): Promise<void> {
    if (this.ro(req)) return;
    if (a.mode !== 0) return req.err(E.EOPNOTSUPP); // only plain allocation: no punching or collapsing
    try {
      const end = a.offset + a.length;
      const info = await this.inode(a.ino, true);
      const stream = this.client.data.peek(a.ino);
      const size = stream ? Math.max(stream.size, info.sz) : info.sz;
      if (end > size) {
        await this.client.data.truncate(a.ino, end);
        this.forgetCached(a.ino);
      }
      req.err(0);
    } catch (e) {
      fail(req, e, `fallocate ${a.ino}`);
    }
  }

  async copyFileRange(req: Req<WriteReply>, a: CopyFileRangeArgs): Promise<void> {
    const src = this.files.get(a.fhIn);
    const dst = this.files.get(a.fhOut);
    if (!src || !dst) return req.err(E.EBADF);
    if (this.readOnly) return req.err(E.EROFS);
    try {
      // No server-side copy in CubeFS: move the bytes here, 1 MiB at a time, without crossing into the kernel.
      let done = 0;
      while (done < a.len) {
        const chunk = await src.stream.read(a.offIn + done, Math.min(1 << 20, a.len - done));
        if (chunk.length === 0) break;
        await dst.stream.write(a.offOut + done, chunk);
        done += chunk.length;
      }
      this.forgetCached(a.inoOut);
      req.write(done);
    } catch (e) {
      fail(req, e, `copy_file_range ${a.inoIn} -> ${a.inoOut}`);
    }
  }

  // ---- directories ----

  async opendir(req: Req<OpenReplies>, a: OpenArgs): Promise<void> {
    try {
      const list = await this.meta.readdir(a.ino);
      const fh = this.nextFh++;
      this.dirs.set(fh, { ino: a.ino, entries: list.map((d) => ({ name: d.name, ino: d.ino, mode: goModeToPosix(d.type) })) });
      req.open({ fh });
    } catch (e) {
      fail(req, e, `opendir ${a.ino}`);
    }
  }

  /** The listing with "." and "..": offsets are indexes + 1, stable for the handle's life. */
  private listing(h: DirHandle): { name: string; ino: number; mode: number }[] {
    return [{ name: '.', ino: h.ino, mode: S_IFDIR }, { name: '..', ino: ROOT, mode: S_IFDIR }, ...h.entries];
  }

  readdir(req: Req<DirReply>, a: ReaddirArgs): void {
    const h = this.dirs.get(a.fh);
    if (!h) return req.err(E.EBADF);
    const all = this.listing(h);
    for (let i = a.offset; i < all.length; i++) {
      const d = all[i]!;
      if (!req.dirAdd(d.name, d.ino, d.mode, i + 1)) break;
    }
    req.dirReply();
  }

  async readdirplus(req: Req<DirPlusReply>, a: ReaddirArgs): Promise<void> {
    const h = this.dirs.get(a.fh);
    if (!h) return req.err(E.EBADF);
    try {
      const all = this.listing(h);
      const slice = all.slice(a.offset, a.offset + 256);
      const infos = new Map<number, InodeInfo>();
      const want = slice.filter((d) => d.name !== '.' && d.name !== '..').map((d) => d.ino);
      const got = want.length ? await this.meta.batchInodeGet(want) : [];
      await this.learnCtimes(got);
      for (const info of got) infos.set(info.ino, info);
      for (let i = 0; i < slice.length; i++) {
        const d = slice[i]!;
        const off = a.offset + i + 1;
        if (d.name === '.' || d.name === '..') {
          // The kernel takes no reference for these, so no lookup is counted: type only, no caching.
          const dot: Entry = { attr: { ino: d.ino, mode: S_IFDIR, nlink: 2, uid: 0, gid: 0, size: BLOCK, atimeMs: 0, mtimeMs: 0, ctimeMs: 0 }, attrTimeout: 0, entryTimeout: 0 };
          if (!req.dirAddPlus(d.name, dot, off)) break;
          continue;
        }
        const info = infos.get(d.ino);
        if (!info) continue; // removed since opendir
        const attr = this.attrOf(info);
        const e: Entry = { attr, attrTimeout: this.attrValid, entryTimeout: this.lookupValid };
        if (!req.dirAddPlus(d.name, e, off)) break;
        this.lookups.set(info.ino, (this.lookups.get(info.ino) ?? 0) + 1);
        this.remember(info);
      }
      req.dirReply();
    } catch (e) {
      fail(req, e, `readdirplus ${a.ino}`);
    }
  }

  releasedir(req: Req<ErrReply>, a: ReleasedirArgs): void {
    this.dirs.delete(a.fh);
    req.err(0);
  }

  fsyncdir(req: Req<ErrReply>): void {
    req.err(0); // metadata is durable at the metanode before each reply
  }

  // ---- the rest ----

  async statfs(req: Req<StatfsReplies>, _a: InoArgs): Promise<void> {
    try {
      const st = await this.client.volume.stat();
      const blocks = Math.floor(st.TotalSize / BLOCK);
      const used = Math.ceil(st.UsedSize / BLOCK);
      const free = Math.max(0, blocks - used);
      const files = 1 << 30;
      req.statfs({ bsize: BLOCK, frsize: BLOCK, blocks, bfree: free, bavail: free, files, ffree: Math.max(0, files - st.InodeCount), namemax: 255 });
    } catch (e) {
      fail(req, e, 'statfs');
    }
  }

  async setxattr(req: Req<ErrReply>, a: SetxattrArgs): Promise<void> {
    if (this.ro(req)) return;
    if (a.name === CTIME_XATTR) return req.err(E.EPERM); // this client's own (ctime.ts)
    try {
      if (a.flags & (XATTR_CREATE | XATTR_REPLACE)) {
        const cur = await this.meta.getXAttr(a.ino, a.name);
        if (a.flags & XATTR_CREATE && cur !== null) return req.err(E.EEXIST);
        if (a.flags & XATTR_REPLACE && cur === null) return req.err(E.ENODATA);
      }
      this.xattrCache.delete(`${a.ino}\0${a.name}`);
      await this.meta.setXAttr(a.ino, a.name, Buffer.from(a.value));
      await this.touchCtime(a.ino);
      req.err(0);
    } catch (e) {
      fail(req, e, `setxattr ${a.ino} ${a.name}`);
    }
  }

  private async xattr(ino: number, name: string): Promise<Buffer | null> {
    const key = `${ino}\0${name}`;
    const hit = this.xattrCache.get(key);
    if (hit && hit.expires > Date.now()) return hit.value;
    const value = await this.meta.getXAttr(ino, name);
    if (this.xattrCache.size > 10_000) this.xattrCache.clear();
    this.xattrCache.set(key, { value, expires: Date.now() + this.attrValid * 1000 });
    return value;
  }

  async getxattr(req: Req<XattrReply>, a: GetxattrArgs): Promise<void> {
    if (a.name === CTIME_XATTR) return req.err(E.ENODATA);
    try {
      const v = await this.xattr(a.ino, a.name);
      if (v === null) return req.err(E.ENODATA);
      if (a.size === 0) return req.xattrSize(v.length);
      if (v.length > a.size) return req.err(E.ERANGE);
      req.buf(v);
    } catch (e) {
      fail(req, e, `getxattr ${a.ino} ${a.name}`);
    }
  }

  async listxattr(req: Req<XattrReply>, a: ListxattrArgs): Promise<void> {
    try {
      const names = (await this.meta.listXAttr(a.ino)).filter((n) => n !== CTIME_XATTR);
      const buf = Buffer.from(names.map((n) => `${n}\0`).join(''));
      if (a.size === 0) return req.xattrSize(buf.length);
      if (buf.length > a.size) return req.err(E.ERANGE);
      req.buf(buf);
    } catch (e) {
      fail(req, e, `listxattr ${a.ino}`);
    }
  }

  async removexattr(req: Req<ErrReply>, a: RemovexattrArgs): Promise<void> {
    if (this.ro(req)) return;
    if (a.name === CTIME_XATTR) return req.err(E.ENODATA);
    try {
      if ((await this.meta.getXAttr(a.ino, a.name)) === null) return req.err(E.ENODATA);
      this.xattrCache.delete(`${a.ino}\0${a.name}`);
      await this.meta.removeXAttr(a.ino, a.name);
      await this.touchCtime(a.ino);
      req.err(0);
    } catch (e) {
      fail(req, e, `removexattr ${a.ino} ${a.name}`);
    }
  }

  /** Permission checks are the kernel's (default_permissions); access only confirms the inode exists. */
  async access(req: Req<ErrReply>, a: AccessArgs): Promise<void> {
    try {
      await this.inode(a.ino);
      req.err(0);
    } catch (e) {
      fail(req, e, `access ${a.ino}`);
    }
  }

  /**
   * Unmount: flush every open file and evict the orphans the kernel will no longer forget, all at once and
   * for at most UNMOUNT_WAIT_MS: an unreachable metanode must not hold an unmount for the whole retry
   * budget. What could not be recorded by then is said, by inode: its data since the last fsync is lost.
   */
  async shutdown(): Promise<void> {
    const handles = [...this.files.values()];
    this.files.clear();
    const unrecorded = new Set<number>();
    const flushes = handles.map(async (h) => {
      unrecorded.add(h.ino);
      try {
        await h.stream.flush();
        unrecorded.delete(h.ino);
      } catch (e) {
        warn('fs', `unmount: inode ${h.ino}: its latest writes could not be recorded (${(e as Error).message})`);
      }
      await h.stream.release().catch(() => undefined);
    });
    const orphans = [...this.orphans];
    this.orphans.clear();
    const unevicted = new Set(orphans);
    const evictions = orphans.map((ino) => this.meta.evictInode(ino).then(() => { unevicted.delete(ino); }, () => undefined));
    if (!(await settledWithin([...flushes, ...evictions], UNMOUNT_WAIT_MS))) {
      if (unrecorded.size > 0) {
        warn('fs', `unmount: the metanode did not answer for ${UNMOUNT_WAIT_MS / 1000} s; writes since the last fsync to inodes `
          + `${[...unrecorded].join(', ')} are not recorded and are lost`);
        // Said here, once: the client's close neither waits for these streams again nor repeats it.
        for (const h of handles) if (unrecorded.has(h.ino)) h.stream.shutdown();
      }
      if (unevicted.size > 0) {
        warn('fs', `unmount: inodes ${[...unevicted].join(', ')} (deleted while open) were not evicted; their space stays in use`);
      }
    }
  }
}

