/**
 * The null file system: baseline B1 (the ceiling of FUSE plus our bridge). A root directory holding
 * `/zero` (a sparse file of a configurable size, 1 TiB by default) and any regular file created beside it:
 * every file reads zeros up to its size and discards what is written (the size grows to the end of the
 * last write). Counters (requests by op, bytes and sizes of reads and writes) are plain fields.
 */
import {
  errno, type Attr, type Entry, type FuseOps, type FuseOpName, type NameArgs, type Req,
  type ErrReply,
} from './types.js';

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const ROOT = 1;
const ZERO_INO = 2;
const O_TRUNC = 0o1000;
const TIMEOUT = 1;

interface Node {
  ino: number;
  name: string;
  mode: number;
  size: number;
  mtimeMs: number;
}

export interface NullFsOptions {
  /** Size of /zero in bytes (default 1 TiB). */
  zeroSize?: number;
}

export interface NullFsCounters {
  requests: Partial<Record<FuseOpName, number>>;
  writes: number;
  reads: number;
  bytesWritten: number;
  bytesRead: number;
  /** Largest single write request seen (bytes): 1 MiB when the negotiation worked. */
  maxWrite: number;
  maxRead: number;
}

export class NullFs {
  readonly counters: NullFsCounters = { requests: {}, writes: 0, reads: 0, bytesWritten: 0, bytesRead: 0, maxWrite: 0, maxRead: 0 };
  private readonly byName = new Map<string, Node>();
  private readonly byIno = new Map<number, Node>();
  private readonly root: Node;
  private nextIno = ZERO_INO;
  private zeros = Buffer.alloc(1 << 20);
  private readonly started = Date.now();

  constructor(opts: NullFsOptions = {}) {
    this.root = { ino: ROOT, name: '', mode: S_IFDIR | 0o755, size: 4096, mtimeMs: this.started };
    this.byIno.set(ROOT, this.root);
    this.add('zero', opts.zeroSize ?? 2 ** 40, 0o644);
  }

  private add(name: string, size: number, perm: number): Node {
    const n: Node = { ino: this.nextIno++, name, mode: S_IFREG | (perm & 0o7777), size, mtimeMs: Date.now() };
    this.byName.set(name, n);
    this.byIno.set(n.ino, n);
    return n;
  }

  private attr(n: Node): Attr {
    const dir = n.ino === ROOT;
    return {
      ino: n.ino, mode: n.mode, nlink: dir ? 2 : 1, uid: 0, gid: 0, size: n.size, blocks: 0, blksize: 1 << 20,
      atimeMs: n.mtimeMs, mtimeMs: n.mtimeMs, ctimeMs: n.mtimeMs,
    };
  }

  private entry(n: Node): Entry {
    return { attr: this.attr(n), attrTimeout: TIMEOUT, entryTimeout: TIMEOUT };
  }

  private count(op: FuseOpName): void {
    this.counters.requests[op] = (this.counters.requests[op] ?? 0) + 1;
  }

  private newFile(req: Req<ErrReply>, a: NameArgs, mode: number): Node | null {
    if (a.parent !== ROOT) { req.err(errno.ENOENT); return null; }
    if ((mode & 0o170000) !== S_IFREG) { req.err(errno.EPERM); return null; }
    if (this.byName.has(a.name)) { req.err(errno.EEXIST); return null; }
    return this.add(a.name, 0, mode);
  }

  /** The ops table. */
  readonly ops: FuseOps = {
    lookup: (req, a) => {
      this.count('lookup');
      const n = a.parent === ROOT ? this.byName.get(a.name) : undefined;
      if (n) req.entry(this.entry(n));
      else req.err(errno.ENOENT);
    },
    forget: (req) => { this.count('forget'); req.none(); },
    forgetMulti: (req) => { this.count('forgetMulti'); req.none(); },
    getattr: (req, a) => {
      this.count('getattr');
      const n = this.byIno.get(a.ino);
      if (n) req.attr(this.attr(n), TIMEOUT);
      else req.err(errno.ENOENT);
    },
    setattr: (req, a) => {
      this.count('setattr');
      const n = this.byIno.get(a.ino);
      if (!n) { req.err(errno.ENOENT); return; }
      if (a.size !== undefined) {
        if (n.ino === ROOT) { req.err(errno.EISDIR); return; }
        n.size = a.size;
      }
      if (a.mode !== undefined) n.mode = (n.mode & 0o170000) | (a.mode & 0o7777);
      n.mtimeMs = a.mtime ?? Date.now();
      req.attr(this.attr(n), TIMEOUT);
    },
    mknod: (req, a) => {
      this.count('mknod');
      const n = this.newFile(req, a, a.mode);
      if (n) req.entry(this.entry(n));
    },
    create: (req, a) => {
      this.count('create');
      const n = this.newFile(req, a, a.mode | S_IFREG);
      if (n) req.create(this.entry(n), { fh: n.ino });
    },
    unlink: (req, a) => {
      this.count('unlink');
      const n = a.parent === ROOT ? this.byName.get(a.name) : undefined;
      if (!n) { req.err(errno.ENOENT); return; }
      if (n.ino === ZERO_INO) { req.err(errno.EPERM); return; }
      this.byName.delete(a.name);
      this.byIno.delete(n.ino);
      req.err(0);
    },
    open: (req, a) => {
      this.count('open');
      const n = this.byIno.get(a.ino);
      if (!n) { req.err(errno.ENOENT); return; }
      if (n.ino === ROOT) { req.err(errno.EISDIR); return; }
      if (a.flags & O_TRUNC) n.size = 0;
      req.open({ fh: n.ino });
    },
    read: (req, a) => {
      this.count('read');
      const n = this.byIno.get(a.ino);
      const len = n ? Math.max(0, Math.min(a.size, n.size - a.offset)) : 0;
      this.counters.reads++;
      this.counters.bytesRead += len;
      if (len > this.counters.maxRead) this.counters.maxRead = len;
      if (len === 0) { req.data(); return; }
      if (len > this.zeros.length) this.zeros = Buffer.alloc(len);
      req.buf(this.zeros.subarray(0, len));
    },
    write: (req, a) => {
      this.count('write');
      const len = a.data.length;
      this.counters.writes++;
      this.counters.bytesWritten += len;
      if (len > this.counters.maxWrite) this.counters.maxWrite = len;
      const n = this.byIno.get(a.ino);
      if (n && a.offset + len > n.size) n.size = a.offset + len;
      req.write(len);
    },
    flush: (req) => { this.count('flush'); req.err(0); },
    release: (req) => { this.count('release'); req.err(0); },
    fsync: (req) => { this.count('fsync'); req.err(0); },
    opendir: (req, a) => {
      this.count('opendir');
      if (a.ino !== ROOT) req.err(errno.ENOTDIR);
      else req.open({ fh: 0 });
    },
    readdir: (req, a) => {
      this.count('readdir');
      if (a.ino !== ROOT) { req.err(errno.ENOTDIR); return; }
      const names: [string, number, number][] = [['.', ROOT, S_IFDIR], ['..', ROOT, S_IFDIR]];
      for (const n of this.byName.values()) names.push([n.name, n.ino, n.mode]);
      for (let i = a.offset; i < names.length; i++) {
        const [name, ino, mode] = names[i]!;
        if (!req.dirAdd(name, ino, mode, i + 1)) break;
      }
      req.dirReply();
    },
    releasedir: (req) => { this.count('releasedir'); req.err(0); },
    fsyncdir: (req) => { this.count('fsyncdir'); req.err(0); },
    statfs: (req) => {
      this.count('statfs');
      const blocks = 2 ** 40 / 4096;
      req.statfs({ bsize: 1 << 20, frsize: 4096, blocks, bfree: blocks, bavail: blocks, files: 1 << 20, ffree: (1 << 20) - this.byIno.size, namemax: 255 });
    },
    access: (req) => { this.count('access'); req.err(0); },
    fallocate: (req, a) => {
      this.count('fallocate');
      const n = this.byIno.get(a.ino);
      if (n && a.mode === 0 && a.offset + a.length > n.size) n.size = a.offset + a.length;
      req.err(0);
    },
  };
}
