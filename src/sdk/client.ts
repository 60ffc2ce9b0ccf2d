/**
 * The CubeFS SDK for programs that want files without FUSE.
 *
 * One CubeFSClient talks to one volume: a Volume (the master's views, refreshed), a MetaClient (inodes
 * and dentries) and a DataClient (extents). Paths are resolved component by component with Lookup.
 * Open files hold their inode: unlinking an open file removes its name at once, and the inode is evicted
 * when the last handle closes (as a local file system does).
 */
import { constants as os } from 'node:os';
import { DataClient, type FileStream } from '../data/index.js';
import { MasterClient } from '../master/client.js';
import { Volume } from '../master/volume.js';
import { MetaClient } from '../meta/client.js';
import { hasCtimeFlag, withCtimeFlag } from '../meta/ctime.js';
import { fromRfc3339, goModeToPosix, isGoDir, isGoSymlink, posixToGoMode, S_IFDIR, S_IFLNK, S_IFREG, type InodeInfo, type VolStat } from '../proto/index.js';
import type { Pool } from '../pool/index.js';
import { RdmaPath, type RdmaMode } from '../data/rdma.js';
import { ConnPool } from '../transport/tcp.js';
import { CubeFSError, ErrorCode, errnoName } from '../util/errors.js';

const E = os.errno;
export const ROOT_INO = 1;

export interface ClientOptions {
  /** "host:port" or several, comma-separated or as a list. */
  masters: string | string[];
  vol: string;
  owner: string;
  /** Deadline for each request to any node, ms. */
  timeoutMs?: number;
  /** How long a data read or write keeps retrying (other hosts, other partitions) before it fails, ms (default 60 s). */
  retryBudgetMs?: number;
  /** Period of the master view refresh, ms. */
  refreshMs?: number;
  /** Connections kept per metanode (requests share them); datanode connections are pooled apart, one user each. */
  connsPerNode?: number;
  uid?: number;
  gid?: number;
  /**
   * Data path to the datanodes (docs/rdma.md): 'off' (default) TCP; 'auto' RDMA where a device exists and a
   * datanode answers on its RDMA port, else TCP (said once per datanode); 'on' RDMA required (an error
   * without a device, at connect). Metadata and CreateExtent always go over TCP.
   */
  rdma?: RdmaMode;
  /** The datanodes' RDMA port (default 17360), or 'same': their TCP port number (the embedded cluster). */
  rdmaPort?: number | 'same';
  /** Registered pool for payloads (a mount passes the FUSE session's); default: one of rdmaPoolMB MiB. */
  rdmaPool?: Pool;
  rdmaPoolMB?: number;
  /** Where transport notes go ("no RDMA device: using TCP", ...); default the debug log. */
  onWarning?: (msg: string) => void;
  /**
   * Read from any replica with StreamFollowerRead (upstream's followerRead; also on when the volume has
   * FollowerRead). Default: reads go to each partition's raft leader.
   */
  followerRead?: boolean;
  /** With follower read, the nearest replica first (upstream's nearRead). */
  nearRead?: boolean;
  /** Extent keys of a file being written are recorded at least this often, ms (default 2000; 0: at flush only). */
  flushIntervalMs?: number;
}

export interface Stat {
  ino: number;
  /** POSIX st_mode. */
  mode: number;
  nlink: number;
  size: number;
  uid: number;
  gid: number;
  atime: number;
  mtime: number;
  ctime: number;
  isFile(): boolean;
  isDirectory(): boolean;
  isSymbolicLink(): boolean;
}

export interface DirEntry {
  name: string;
  ino: number;
  /** POSIX file type bits (S_IFMT part). */
  type: number;
}

export function fsError(errno: number, syscall: string, path: string): CubeFSError {
  return new CubeFSError(ErrorCode.Result, `${errnoName(errno) ?? `errno ${errno}`}: ${syscall} '${path}'`, { errno });
}

export function toStat(info: InodeInfo, sizeOverride?: number): Stat {
  const mode = goModeToPosix(info.mode);
  const fmt = mode & 0o170000;
  return {
    ino: info.ino,
    mode,
    nlink: info.nlink,
    size: sizeOverride ?? info.sz,
    uid: info.uid,
    gid: info.gid,
    atime: fromRfc3339(info.at),
    mtime: fromRfc3339(info.mt),
    ctime: fromRfc3339(info.ct),
    isFile: () => fmt === S_IFREG,
    isDirectory: () => fmt === S_IFDIR,
    isSymbolicLink: () => fmt === S_IFLNK,
  };
}

/** open(2)-style flags understood by open(). */
export const O = {
  RDONLY: 0, WRONLY: 1, RDWR: 2, CREAT: 0o100, EXCL: 0o200, TRUNC: 0o1000, APPEND: 0o2000, SYNC: 0o4010000,
} as const;

function parseFlags(flags: string | number): number {
  if (typeof flags === 'number') return flags;
  const table: Record<string, number> = {
    r: O.RDONLY, 'r+': O.RDWR, w: O.WRONLY | O.CREAT | O.TRUNC, 'w+': O.RDWR | O.CREAT | O.TRUNC,
    wx: O.WRONLY | O.CREAT | O.TRUNC | O.EXCL, a: O.WRONLY | O.CREAT | O.APPEND, 'a+': O.RDWR | O.CREAT | O.APPEND,
  };
  const f = table[flags];
  if (f === undefined) throw new CubeFSError(ErrorCode.Invalid, `unknown open flags "${flags}"`, { errno: E.EINVAL });
  return f;
}

export class CubeFSClient {
  readonly volume: Volume;
  readonly meta: MetaClient;
  readonly data: DataClient;
  private readonly pool: ConnPool;
  private readonly uid: number;
  private readonly gid: number;
  /** Open handles per inode, for deferred eviction of unlinked files. */
  private readonly openCount = new Map<number, number>();
  /** Inodes whose last name went away while open. */
  private readonly orphans = new Set<number>();
  private closed = false;

  private constructor(volume: Volume, opts: ClientOptions, rdma: RdmaPath | null) {
    this.volume = volume;
    this.pool = new ConnPool(opts.connsPerNode ?? 4);
    const timeoutMs = opts.timeoutMs ?? 10_000;
    this.meta = new MetaClient({
      vol: volume.name, source: volume, pool: this.pool, timeoutMs, transactions: volume.txRename,
      ...(opts.retryBudgetMs !== undefined ? { retryBudgetMs: opts.retryBudgetMs } : {}),
    });
    this.data = new DataClient({
      source: volume, meta: this.meta, timeoutMs, rdma, ...(opts.retryBudgetMs !== undefined ? { retryBudgetMs: opts.retryBudgetMs } : {}),
      followerRead: (opts.followerRead ?? false) || volume.followerRead, nearRead: opts.nearRead ?? false,
      ...(opts.flushIntervalMs !== undefined ? { flushIntervalMs: opts.flushIntervalMs } : {}),
    });
    this.uid = opts.uid ?? 0;
    this.gid = opts.gid ?? 0;
  }

  /** Connect to a volume: validates the master, volume and owner before returning. */
  static async connect(opts: ClientOptions): Promise<CubeFSClient> {
    const rdma = RdmaPath.create({
      mode: opts.rdma ?? 'off',
      ...(opts.rdmaPort !== undefined ? { port: opts.rdmaPort } : {}),
      ...(opts.rdmaPool ? { pool: opts.rdmaPool } : {}),
      ...(opts.rdmaPoolMB ? { poolMB: opts.rdmaPoolMB } : {}),
      ...(opts.onWarning ? { onWarning: opts.onWarning } : {}),
    });
    try {
      const master = new MasterClient(opts.masters, { timeoutMs: opts.timeoutMs ?? 10_000 });
      const volume = await Volume.open(master, opts.vol, opts.owner, opts.refreshMs === undefined ? {} : { refreshMs: opts.refreshMs });
      return new CubeFSClient(volume, opts, rdma);
    } catch (e) {
      rdma?.close();
      throw e;
    }
  }

  /** Flushes what is open (see DataClient.close: `waitMs` bounds it), then closes everything. */
  async close(opts: { waitMs?: number } = {}): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.data.close(opts);
    this.meta.close();
    this.volume.close();
    this.pool.close();
  }

  // ---- paths ----

  private split(path: string): string[] {
    if (!path.startsWith('/')) throw fsError(E.EINVAL, 'resolve', path);
    return path.split('/').filter((c) => c.length > 0 && c !== '.');
  }

  /** Inode number of a path (symlinks are not followed). */
  async resolve(path: string): Promise<number> {
    let ino = ROOT_INO;
    for (const name of this.split(path)) {
      if (name === '..') throw fsError(E.EINVAL, 'resolve', path);
      try {
        ino = (await this.meta.lookup(ino, name)).ino;
      } catch (e) {
        if ((e as CubeFSError).errno === E.ENOENT) throw fsError(E.ENOENT, 'lookup', path);
        throw e;
      }
    }
    return ino;
  }

  /** Parent inode and the last component. */
  private async parentOf(path: string): Promise<{ pino: number; name: string }> {
    const parts = this.split(path);
    const name = parts.pop();
    if (!name) throw fsError(E.EINVAL, 'parent', path);
    let pino = ROOT_INO;
    for (const c of parts) pino = (await this.meta.lookup(pino, c).catch((e: CubeFSError) => {
      throw e.errno === E.ENOENT ? fsError(E.ENOENT, 'lookup', path) : e;
    })).ino;
    return { pino, name };
  }

  // ---- metadata ----

  async stat(path: string): Promise<Stat> {
    return this.statIno(await this.resolve(path));
  }

  async statIno(ino: number): Promise<Stat> {
    const info = await this.meta.inodeGet(ino);
    const stream = this.data.peek(ino);
    return toStat(info, stream ? Math.max(stream.size, info.sz) : undefined);
  }

  async readdir(path: string): Promise<DirEntry[]> {
    const ino = await this.resolve(path);
    const info = await this.meta.inodeGet(ino);
    if (!isGoDir(info.mode)) throw fsError(E.ENOTDIR, 'scandir', path);
    const list = await this.meta.readdir(ino);
    return list.map((d) => ({ name: d.name, ino: d.ino, type: goModeToPosix(d.type) & 0o170000 }));
  }

  async mkdir(path: string, mode = 0o755): Promise<Stat> {
    const { pino, name } = await this.parentOf(path);
    const info = await this.meta.create(pino, name, posixToGoMode(S_IFDIR | (mode & 0o7777)), this.uid, this.gid);
    return toStat(info);
  }

  async rmdir(path: string): Promise<void> {
    const { pino, name } = await this.parentOf(path);
    const { ino, mode } = await this.meta.lookup(pino, name);
    if (!isGoDir(mode)) throw fsError(E.ENOTDIR, 'rmdir', path);
    const after = await this.meta.unlink(pino, name, true);
    if (after) await this.maybeEvict(ino, after.nlink);
  }

  async unlink(path: string): Promise<void> {
    const { pino, name } = await this.parentOf(path);
    const { ino, mode } = await this.meta.lookup(pino, name);
    if (isGoDir(mode)) throw fsError(E.EISDIR, 'unlink', path);
    const after = await this.meta.unlink(pino, name, false);
    if (after) await this.maybeEvict(ino, after.nlink);
  }

  async rename(from: string, to: string): Promise<void> {
    const src = await this.parentOf(from);
    const dst = await this.parentOf(to);
    const { overwritten } = await this.meta.rename(src.pino, src.name, dst.pino, dst.name);
    if (overwritten) await this.maybeEvict(overwritten.ino, overwritten.nlink);
  }

  async link(existing: string, newPath: string): Promise<Stat> {
    const ino = await this.resolve(existing);
    const { pino, name } = await this.parentOf(newPath);
    return toStat(await this.meta.link(pino, name, ino));
  }

  async symlink(target: string, path: string): Promise<Stat> {
    const { pino, name } = await this.parentOf(path);
    const info = await this.meta.create(pino, name, posixToGoMode(S_IFLNK | 0o777), this.uid, this.gid, Buffer.from(target));
    return toStat(info);
  }

  async readlink(path: string): Promise<string> {
    const info = await this.meta.inodeGet(await this.resolve(path));
    if (!isGoSymlink(info.mode)) throw fsError(E.EINVAL, 'readlink', path);
    return Buffer.from(info.tgt ?? '', 'base64').toString();
  }

  async chmod(path: string, mode: number): Promise<void> {
    const ino = await this.resolve(path);
    const info = await this.meta.inodeGet(ino);
    const fmt = goModeToPosix(info.mode) & 0o170000;
    const next = posixToGoMode(fmt | (mode & 0o7777));
    // A Setattr mode is the whole word: keep the mount's ctime flag (meta/ctime.ts).
    await this.meta.setattr(ino, { mode: hasCtimeFlag(info.mode) ? withCtimeFlag(next) : next });
  }

  async chown(path: string, uid: number, gid: number): Promise<void> {
    await this.meta.setattr(await this.resolve(path), { uid, gid });
  }

  async utimes(path: string, atime: number, mtime: number): Promise<void> {
    await this.meta.setattr(await this.resolve(path), { atime: Math.floor(atime), mtime: Math.floor(mtime) });
  }

  async truncate(path: string, size: number): Promise<void> {
    await this.truncateIno(await this.resolve(path), size);
  }

  async truncateIno(ino: number, size: number): Promise<void> {
    await this.data.truncate(ino, size);
  }

  async setxattr(path: string, key: string, value: Buffer | string): Promise<void> {
    await this.meta.setXAttr(await this.resolve(path), key, Buffer.from(value));
  }

  async getxattr(path: string, key: string): Promise<Buffer> {
    const v = await this.meta.getXAttr(await this.resolve(path), key);
    if (v === null) throw fsError(E.ENODATA, 'getxattr', path);
    return v;
  }

  async listxattr(path: string): Promise<string[]> {
    return this.meta.listXAttr(await this.resolve(path));
  }

  async removexattr(path: string, key: string): Promise<void> {
    await this.meta.removeXAttr(await this.resolve(path), key);
  }

  async statfs(): Promise<VolStat> {
    return this.volume.stat();
  }

  // ---- files ----

  async open(path: string, flags: string | number = 'r', mode = 0o644): Promise<FileHandle> {
    const f = parseFlags(flags);
    const { pino, name } = await this.parentOf(path);
    let ino: number;
    let created = false;
    try {
      const hit = await this.meta.lookup(pino, name);
      if (f & O.CREAT && f & O.EXCL) throw fsError(E.EEXIST, 'open', path);
      if (isGoDir(hit.mode) && (f & 3) !== O.RDONLY) throw fsError(E.EISDIR, 'open', path);
      ino = hit.ino;
    } catch (e) {
      if ((e as CubeFSError).errno !== E.ENOENT || !(f & O.CREAT)) {
        throw (e as CubeFSError).errno === E.ENOENT ? fsError(E.ENOENT, 'open', path) : e;
      }
      const info = await this.meta.create(pino, name, posixToGoMode(S_IFREG | (mode & 0o7777)), this.uid, this.gid);
      ino = info.ino;
      created = true;
    }
    if (!created && f & O.TRUNC && (f & 3) !== O.RDONLY) await this.truncateIno(ino, 0);
    return this.openIno(ino, f);
  }

  /** A handle on an inode already known (the FUSE layer opens by inode). */
  openIno(ino: number, flags: number = O.RDWR): FileHandle {
    this.openCount.set(ino, (this.openCount.get(ino) ?? 0) + 1);
    return new FileHandle(this, ino, this.data.open(ino), flags);
  }

  /** @internal called by FileHandle.close */
  async released(ino: number): Promise<void> {
    const n = (this.openCount.get(ino) ?? 1) - 1;
    if (n > 0) {
      this.openCount.set(ino, n);
      return;
    }
    this.openCount.delete(ino);
    if (this.orphans.delete(ino)) await this.meta.evictInode(ino);
  }

  /** Evict an inode whose link count reached 0, now or when its last handle closes. */
  private async maybeEvict(ino: number, nlink: number): Promise<void> {
    if (nlink > 0) return;
    if (this.openCount.has(ino)) this.orphans.add(ino);
    else await this.meta.evictInode(ino);
  }

  async readFile(path: string): Promise<Buffer> {
    const h = await this.open(path, 'r');
    try {
      const st = await h.stat();
      return await h.read(0, st.size);
    } finally {
      await h.close();
    }
  }

  async writeFile(path: string, data: Buffer | string, mode = 0o644): Promise<void> {
    const h = await this.open(path, 'w', mode);
    try {
      await h.write(Buffer.from(data), 0);
    } finally {
      await h.close();
    }
  }
}

export class FileHandle {
  private closed = false;

  constructor(private readonly client: CubeFSClient, readonly ino: number, private readonly stream: FileStream, readonly flags: number) {}

  private check(write: boolean): void {
    if (this.closed) throw new CubeFSError(ErrorCode.Closed, `file handle of inode ${this.ino} is closed`, { errno: E.EBADF });
    const acc = this.flags & 3;
    if (write ? acc === O.RDONLY : acc === O.WRONLY) throw new CubeFSError(ErrorCode.Invalid, 'bad file descriptor for this operation', { errno: E.EBADF });
  }

  async read(position: number, length: number): Promise<Buffer> {
    this.check(false);
    return this.stream.read(position, length);
  }

  /** Writes at position (or at the end with O_APPEND). Returns the bytes written. */
  async write(data: Buffer, position: number): Promise<number> {
    this.check(true);
    if (this.flags & O.APPEND) {
      await this.stream.load();
      position = this.stream.size;
    }
    await this.stream.write(position, data, { sync: (this.flags & O.SYNC) === O.SYNC });
    return data.length;
  }

  async stat(): Promise<Stat> {
    return this.client.statIno(this.ino);
  }

  async truncate(size: number): Promise<void> {
    this.check(true);
    await this.client.truncateIno(this.ino, size);
  }

  async sync(): Promise<void> {
    await this.stream.flush();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.stream.release();
    } finally {
      await this.client.released(this.ino);
    }
  }
}
