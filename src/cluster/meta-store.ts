/**
 * The metanode's state and its durability.
 *
 * State: meta partitions, each with its inodes (by number) and its dentries (per parent, a map plus a
 * name list kept in Go byte order, so ReadDirLimit pages by binary search). Dentries live in the
 * partition that owns their parent inode, as upstream routes them.
 *
 * Durability, write-ahead: a mutation's effects (the new state of each inode or dentry it touched; for an
 * added extent key, the inode without its list and the key, so a file of many extents costs the same per
 * write) go to `meta.log` as one record, `CRC32-hex JSON\n`, with fs.writeSync BEFORE they are applied to the
 * state, then a group fdatasync that the reply waits for. A record that cannot be written whole (the disk is
 * full, an I/O error) is cut off the log again (ftruncate to where it began) and the mutation fails with
 * StoreFull (the metanode answers that request NoSpace) or the error: nothing changes, and later mutations go
 * on once there is room. A failed fdatasync leaves it unknown what is on disk: the store turns read-only (`broken`) and says
 * so; a restart replays what the disk has.
 * Start replays `meta.snap` then `meta.log`. A torn record at the end of the log (a crash or a full disk in
 * mid-write: no newline, or a CRC that does not match) is cut off, with a warning; a damaged record with good
 * ones after it is not a torn tail, and start refuses, naming the file and the offset. (Records from before
 * CRCs, a bare JSON line, are read as they are.) A snapshot (the same record format, one record a line) is
 * written at start and stop when the log is not empty, and at run time when the log passes `compactBytes`;
 * one that cannot be written (no space) is skipped, with a warning, and the log is kept as it is: the metanode
 * starts and runs on a full disk, answering NoSpace to what would need room.
 * Replay and live mutation share applyEffect(), so what is replayed is what was served.
 *
 * Garbage: extents no inode refers to any more (evicted inodes, truncated or overwritten ranges) are kept
 * per partition ('G' records) until the metanode has had the datanodes delete them ('g' records), so a
 * restart in between still deletes them.
 *
 * Ownership: MetaStore owns the log file descriptor; close() is idempotent.
 */
import fs from 'node:fs';
import path from 'node:path';
import { crc32 } from '../proto/crc32.js';
import { withExtent } from './extent-keys.js';
import type { ExtentKey } from '../proto/types.js';
import { CubeFSError, ErrorCode } from '../util/errors.js';
import { makeDirs } from '../util/dirs.js';
import { warn } from '../util/log.js';

export interface InodeRec {
  ino: number;
  mode: number;
  nlink: number;
  sz: number;
  uid: number;
  gid: number;
  gen: number;
  mt: number;
  ct: number;
  at: number;
  /** Symlink target, base64, or null. */
  tgt: string | null;
  eks: ExtentKey[];
  /** An extent has been recorded at least once (upstream's inode has an extent list only from then on). */
  extentList?: boolean;
  /** xattr name -> value (the JSON string upstream carries). */
  xattrs: Record<string, string>;
}

export interface DentryRec {
  ino: number;
  type: number;
}

/** Go compares strings bytewise (UTF-8); JS compares UTF-16 units. They differ only past U+D7FF. */
export function cmpName(a: string, b: string): number {
  if (!/[\ud800-\uffff]/.test(a) && !/[\ud800-\uffff]/.test(b)) return a < b ? -1 : a > b ? 1 : 0;
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

/** The children of one directory. */
export class DirIndex {
  readonly map = new Map<string, DentryRec>();
  private readonly names: string[] = [];

  get size(): number {
    return this.map.size;
  }

  get(name: string): DentryRec | undefined {
    return this.map.get(name);
  }

  set(name: string, d: DentryRec): void {
    if (!this.map.has(name)) {
      const last = this.names[this.names.length - 1];
      if (last === undefined || cmpName(last, name) < 0) this.names.push(name);
      else this.names.splice(this.lowerBound(name), 0, name);
    }
    this.map.set(name, d);
  }

  delete(name: string): boolean {
    if (!this.map.delete(name)) return false;
    const i = this.lowerBound(name);
    if (this.names[i] === name) this.names.splice(i, 1);
    return true;
  }

  /** Children from `marker` (inclusive) on, at most `limit` (0: all). */
  list(marker: string, limit: number): { name: string; ino: number; type: number }[] {
    const start = marker === '' ? 0 : this.lowerBound(marker);
    const end = limit > 0 ? Math.min(this.names.length, start + limit) : this.names.length;
    const out: { name: string; ino: number; type: number }[] = [];
    for (let i = start; i < end; i++) {
      const name = this.names[i]!;
      const d = this.map.get(name)!;
      out.push({ name, ino: d.ino, type: d.type });
    }
    return out;
  }

  private lowerBound(name: string): number {
    let lo = 0, hi = this.names.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (cmpName(this.names[mid]!, name) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

/** Ends at or past 2^53 cannot be told apart after JSON.parse: treat them as unbounded. */
export const UNBOUNDED_END = 2 ** 53;

export class MetaPartition {
  readonly inodes = new Map<number, InodeRec>();
  readonly dirs = new Map<number, DirIndex>();
  /** Highest inode number handed out. */
  cursor: number;
  /** Last unique id handed out by GetUniqID. */
  uniq = 0;
  /** Unique ids already applied by UnlinkInode and LinkInode (a retry is answered without counting twice). */
  readonly seenUniq = new Set<number>();
  dentryCount = 0;
  /** Extents waiting to be deleted on the datanodes (see garbageKey), in the order they were released. */
  readonly garbage = new Map<string, ExtentKey>();

  constructor(readonly id: number, readonly vol: string, readonly start: number, readonly end: number, readonly members: string[]) {
    this.cursor = start;
  }

  contains(ino: number): boolean {
    return ino >= this.start && (this.end >= UNBOUNDED_END || ino <= this.end);
  }

  get full(): boolean {
    return this.end < UNBOUNDED_END && this.cursor >= this.end;
  }

  dir(pino: number, create: boolean): DirIndex | undefined {
    let d = this.dirs.get(pino);
    if (!d && create) this.dirs.set(pino, (d = new DirIndex()));
    return d;
  }
}

export type Effect =
  | { k: 'P'; id: number; vol: string; start: number; end: number; members: string[] }
  | { k: 'I'; p: number; v: InodeRec }
  /** Inode `v` after MetaExtentsAdd recorded `ek`: logged without v.eks, replayed as withExtent(eks before, ek). */
  | { k: 'X'; p: number; v: InodeRec; ek: ExtentKey }
  | { k: 'i'; p: number; ino: number }
  | { k: 'D'; p: number; pino: number; name: string; ino: number; type: number }
  | { k: 'd'; p: number; pino: number; name: string }
  | { k: 'C'; p: number; cursor: number; uniq: number }
  | { k: 'U'; p: number; id: number }
  | { k: 'G'; p: number; eks: ExtentKey[] }
  | { k: 'g'; p: number; eks: ExtentKey[] };

/** A released extent's identity: a whole normal extent, or one range of a tiny extent. */
export function garbageKey(k: ExtentKey): string {
  return `${k.PartitionId}/${k.ExtentId}/${k.ExtentOffset}/${k.Size}`;
}

const SEEN_UNIQ_MAX = 100_000;

/** The log record of a mutation could not be written for lack of space; nothing changed. */
export class StoreFull extends Error {}

/** A record as it is written: CRC-32 of the JSON in hex, a space, the JSON, a newline. */
function record(effects: Effect[]): Buffer {
  const json = JSON.stringify(effects.some((e) => e.k === 'X')
    ? effects.map((e) => (e.k === 'X' ? { ...e, v: { ...e.v, eks: undefined } } : e)) : effects);
  return Buffer.from(`${crc32(Buffer.from(json)).toString(16).padStart(8, '0')} ${json}\n`);
}

/** The effects of one record line (without its newline), or null when the line is damaged. */
function parseRecord(line: string): Effect[] | null {
  try {
    if (line.startsWith('[')) return JSON.parse(line) as Effect[]; // written before records had CRCs
    const sp = line.indexOf(' ');
    if (sp !== 8) return null;
    const json = line.slice(9);
    if (parseInt(line.slice(0, 8), 16) !== crc32(Buffer.from(json))) return null;
    return JSON.parse(json) as Effect[];
  } catch {
    return null;
  }
}

export interface MetaStoreOptions {
  dir: string;
  /** Compact the log into a snapshot when it grows past this many bytes at run time. */
  compactBytes?: number;
}

export class MetaStore {
  readonly partitions = new Map<number, MetaPartition>();
  private readonly logPath: string;
  private readonly snapPath: string;
  private fd: number | null = null;
  private logBytes = 0;
  private readonly compactBytes: number;
  /** The log size at which a compaction is tried next (pushed further when one fails for lack of space). */
  private compactAt: number;
  private syncWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  private syncing: Promise<void> | null = null;
  /** Why the store takes no more mutations (a failed fdatasync, a record that could not be cut off). */
  broken: Error | null = null;

  constructor(opts: MetaStoreOptions) {
    this.logPath = path.join(opts.dir, 'meta.log');
    this.snapPath = path.join(opts.dir, 'meta.snap');
    this.compactBytes = opts.compactBytes ?? 64 * 1024 * 1024;
    this.compactAt = this.compactBytes;
    makeDirs(opts.dir);
  }

  /** Replays snapshot and log (cutting a torn tail off the log), then compacts when the log held anything. */
  open(): void {
    this.replayFile(this.snapPath, false);
    this.replayFile(this.logPath, true);
    this.fd = fs.openSync(this.logPath, 'a');
    this.logBytes = fs.fstatSync(this.fd).size;
    if (this.logBytes > 0) this.tryCompact();
  }

  /**
   * Writes one mutation's record to the log (not yet applied, not yet durable). On failure the log is as it
   * was: StoreFull for lack of space, else the error.
   */
  append(effects: Effect[]): void {
    if (effects.length === 0) return;
    if (this.fd === null) throw new CubeFSError(ErrorCode.Closed, 'meta store is closed');
    if (this.broken) throw new CubeFSError(ErrorCode.Invalid, `meta store takes no changes: ${this.broken.message}`);
    const line = record(effects);
    const at = this.logBytes;
    try {
      let off = 0;
      while (off < line.length) off += fs.writeSync(this.fd, line, off);
    } catch (e) {
      try {
        fs.ftruncateSync(this.fd, at);
      } catch (e2) {
        this.broken = new Error(`a record that could not be written is left in ${this.logPath} (${(e2 as Error).message})`);
        warn('metanode', `${this.broken.message}: taking no more changes until a restart cuts it off`);
      }
      if ((e as NodeJS.ErrnoException).code === 'ENOSPC') {
        warn('metanode', `no space for the log (${this.logPath}): changes are refused with NoSpace until there is room; reads go on`, { key: 'meta-log-enospc' });
        throw new StoreFull(`metanode disk full: no room for the log record (${(e as Error).message})`);
      }
      throw e;
    }
    this.logBytes += line.length;
  }

  /** Logs effects, applies them, and returns when they are on disk (write-ahead: see the header). */
  async commit(effects: Effect[]): Promise<void> {
    if (effects.length === 0) return;
    this.append(effects);
    for (const e of effects) this.apply(e);
    await this.sync();
    if (this.logBytes > this.compactAt) this.tryCompact();
  }

  /** Group fdatasync: every caller waiting when a round starts is released by that round. */
  sync(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.syncWaiters.push({ resolve, reject });
      this.kick();
    });
  }

  private kick(): void {
    if (this.syncing || this.syncWaiters.length === 0 || this.fd === null) return;
    const batch = this.syncWaiters;
    this.syncWaiters = [];
    const fd = this.fd;
    this.syncing = new Promise<void>((done) => {
      fs.fdatasync(fd, (err) => {
        if (err && !this.broken) {
          this.broken = new Error(`fdatasync of ${this.logPath} failed (${err.message}): what is on disk is not known`);
          warn('metanode', `${this.broken.message}; taking no more changes: restart the metanode to replay what the disk has`);
        }
        for (const w of batch) {
          if (err) w.reject(new CubeFSError(ErrorCode.Invalid, `meta log fdatasync: ${err.message}`));
          else w.resolve();
        }
        this.syncing = null;
        done();
        this.kick();
      });
    });
  }

  apply(e: Effect): void {
    switch (e.k) {
      case 'P':
        if (!this.partitions.has(e.id)) this.partitions.set(e.id, new MetaPartition(e.id, e.vol, e.start, e.end, e.members));
        return;
      case 'C': {
        const p = this.part(e.p);
        p.cursor = Math.max(p.cursor, e.cursor);
        p.uniq = Math.max(p.uniq, e.uniq);
        return;
      }
      case 'U': {
        const p = this.part(e.p);
        p.seenUniq.add(e.id);
        if (p.seenUniq.size > SEEN_UNIQ_MAX) p.seenUniq.delete(p.seenUniq.values().next().value as number);
        return;
      }
      case 'I': {
        const p = this.part(e.p);
        p.inodes.set(e.v.ino, e.v);
        if (e.v.ino > p.cursor && p.contains(e.v.ino)) p.cursor = e.v.ino;
        return;
      }
      case 'X': {
        const p = this.part(e.p);
        // Live: the metanode's edited inode, list and all. Replayed: the list from the one before, plus ek.
        p.inodes.set(e.v.ino, e.v.eks ? e.v : { ...e.v, eks: withExtent(p.inodes.get(e.v.ino)?.eks ?? [], e.ek).eks });
        return;
      }
      case 'i':
        this.part(e.p).inodes.delete(e.ino);
        return;
      case 'G': {
        const g = this.part(e.p).garbage;
        for (const k of e.eks) g.set(garbageKey(k), k);
        return;
      }
      case 'g': {
        const g = this.part(e.p).garbage;
        for (const k of e.eks) g.delete(garbageKey(k));
        return;
      }
      case 'D': {
        const p = this.part(e.p);
        const d = p.dir(e.pino, true)!;
        if (!d.get(e.name)) p.dentryCount++;
        d.set(e.name, { ino: e.ino, type: e.type });
        return;
      }
      case 'd': {
        const p = this.part(e.p);
        const d = p.dir(e.pino, false);
        if (d?.delete(e.name)) {
          p.dentryCount--;
          if (d.size === 0) p.dirs.delete(e.pino);
        }
        return;
      }
    }
  }

  /** compact(), or when that fails (no space): keep the log as it is, try again after it grew further. */
  private tryCompact(): void {
    try {
      this.compact();
      this.compactAt = this.compactBytes;
    } catch (e) {
      this.compactAt = this.logBytes + this.compactBytes;
      warn('metanode', `no snapshot written (${(e as Error).message}): the log (${this.logBytes} bytes) is kept and replayed as it is`, { key: 'meta-compact' });
    }
  }

  /** Writes a snapshot of everything, then empties the log. On failure nothing changed (the temp file goes). */
  compact(): void {
    const tmp = this.snapPath + '.tmp';
    try {
      const fd = fs.openSync(tmp, 'w');
      try {
        let buf: Buffer[] = [];
        let n = 0;
        const flush = (): void => {
          if (buf.length) {
            const b = Buffer.concat(buf);
            let off = 0;
            while (off < b.length) off += fs.writeSync(fd, b, off);
          }
          buf = [];
          n = 0;
        };
        const put = (e: Effect): void => {
          buf.push(record([e]));
          if (++n >= 4096) flush();
        };
        for (const p of this.partitions.values()) {
          put({ k: 'P', id: p.id, vol: p.vol, start: p.start, end: p.end, members: p.members });
          put({ k: 'C', p: p.id, cursor: p.cursor, uniq: p.uniq });
          for (const id of p.seenUniq) put({ k: 'U', p: p.id, id });
          for (const v of p.inodes.values()) put({ k: 'I', p: p.id, v });
          for (const [pino, d] of p.dirs) for (const [name, r] of d.map) put({ k: 'D', p: p.id, pino, name, ino: r.ino, type: r.type });
          if (p.garbage.size > 0) put({ k: 'G', p: p.id, eks: [...p.garbage.values()] });
        }
        flush();
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      fs.renameSync(tmp, this.snapPath);
    } catch (e) {
      fs.rmSync(tmp, { force: true });
      throw e;
    }
    const dfd = fs.openSync(path.dirname(this.snapPath), 'r');
    try { fs.fsyncSync(dfd); } finally { fs.closeSync(dfd); }
    if (this.fd !== null) {
      fs.ftruncateSync(this.fd, 0);
      fs.fsyncSync(this.fd);
    } else {
      fs.writeFileSync(this.logPath, '');
    }
    this.logBytes = 0;
  }

  async close(): Promise<void> {
    if (this.fd === null) return;
    while (this.syncing || this.syncWaiters.length) await (this.syncing ?? this.sync()).catch(() => undefined);
    if (this.logBytes > 0 && !this.broken) this.tryCompact();
    fs.closeSync(this.fd);
    this.fd = null;
  }

  private part(id: number): MetaPartition {
    const p = this.partitions.get(id);
    if (!p) throw new Error(`meta log names partition ${id} before creating it`);
    return p;
  }

  /**
   * Applies every record of `file`. `cutTornTail` (the log): a damaged or unfinished last record is cut off
   * the file, with a warning; anywhere else a damaged record stops the start with an error that says where.
   */
  private replayFile(file: string, cutTornTail: boolean): void {
    let buf: Buffer;
    try {
      buf = fs.readFileSync(file);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw e;
    }
    let start = 0;
    let line = 0;
    while (start < buf.length) {
      const nl = buf.indexOf(0x0a, start);
      line++;
      const end = nl < 0 ? buf.length : nl;
      const effects = nl < 0 ? null : parseRecord(buf.toString('utf8', start, end));
      if (effects === null) {
        const rest = buf.length - start;
        const last = nl < 0 || buf.indexOf(0x0a, nl + 1) < 0 && nl + 1 >= buf.length;
        if (cutTornTail && last) {
          fs.truncateSync(file, start);
          warn('metanode', `${file}: cut off a torn record of ${rest} bytes at offset ${start} (line ${line}): a write that never finished (a crash or a full disk); it was never acknowledged`);
          return;
        }
        throw new Error(`${file}: record ${line} at offset ${start} is damaged (${nl < 0 ? 'unfinished' : 'bad CRC or JSON'}) and ${last ? 'the file is a snapshot' : 'good records follow it'}: refusing to start on a damaged log; move the file aside to start without it`);
      }
      for (const e of effects) this.apply(e);
      start = nl + 1;
    }
  }
}
