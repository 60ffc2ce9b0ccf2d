/**
 * The metanode's state and its durability.
 *
 * State: meta partitions, each with its inodes (by number) and its dentries (per parent, a map plus a
 * name list kept in Go byte order, so ReadDirLimit pages by binary search). Dentries live in the
 * partition that owns their parent inode, as upstream routes them.
 *
 * Durability: every mutation is a list of records ("effects": the new state of each inode or dentry it
 * touched) appended as one JSON line to `meta.log` with fs.writeSync before the reply goes out, then
 * made durable by a group fdatasync that the reply waits for. Start replays `meta.snap` then `meta.log`
 * (a torn last line is ignored); a snapshot (the same record format, one record a line) is written at
 * start and stop when the log is not empty, and at run time when the log passes `compactBytes`.
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
import type { ExtentKey } from '../proto/types.js';
import { CubeFSError, ErrorCode } from '../util/errors.js';

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
  /** Unique ids already applied by UnlinkInode (retries are answered without a second decrement). */
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
  private syncWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  private syncing: Promise<void> | null = null;

  constructor(opts: MetaStoreOptions) {
    this.logPath = path.join(opts.dir, 'meta.log');
    this.snapPath = path.join(opts.dir, 'meta.snap');
    this.compactBytes = opts.compactBytes ?? 64 * 1024 * 1024;
    fs.mkdirSync(opts.dir, { recursive: true });
  }

  /** Replays snapshot and log, then compacts when the log held anything. */
  open(): void {
    this.replayFile(this.snapPath);
    this.replayFile(this.logPath);
    this.fd = fs.openSync(this.logPath, 'a');
    this.logBytes = fs.fstatSync(this.fd).size;
    if (this.logBytes > 0) this.compact();
  }

  /** Appends one mutation's effects (already applied by the caller through apply()). */
  append(effects: Effect[]): void {
    if (effects.length === 0) return;
    if (this.fd === null) throw new CubeFSError(ErrorCode.Closed, 'meta store is closed');
    const line = Buffer.from(JSON.stringify(effects) + '\n');
    let off = 0;
    while (off < line.length) off += fs.writeSync(this.fd, line, off);
    this.logBytes += line.length;
  }

  /** Applies and logs effects in one step; returns when they are on disk. */
  async commit(effects: Effect[]): Promise<void> {
    for (const e of effects) this.apply(e);
    this.append(effects);
    await this.sync();
    if (this.logBytes > this.compactBytes) this.compact();
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

  /** Writes a snapshot of everything, then empties the log. */
  compact(): void {
    const tmp = this.snapPath + '.tmp';
    const fd = fs.openSync(tmp, 'w');
    try {
      let buf: string[] = [];
      let n = 0;
      const flush = (): void => {
        if (buf.length) fs.writeSync(fd, buf.join(''));
        buf = [];
        n = 0;
      };
      const put = (e: Effect): void => {
        buf.push(JSON.stringify([e]) + '\n');
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
    while (this.syncing || this.syncWaiters.length) await (this.syncing ?? this.sync());
    if (this.logBytes > 0) this.compact();
    fs.closeSync(this.fd);
    this.fd = null;
  }

  private part(id: number): MetaPartition {
    const p = this.partitions.get(id);
    if (!p) throw new Error(`meta log names partition ${id} before creating it`);
    return p;
  }

  private replayFile(file: string): void {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw e;
    }
    let start = 0;
    while (start < text.length) {
      const nl = text.indexOf('\n', start);
      if (nl < 0) break; // torn last line: never acknowledged
      const line = text.slice(start, nl);
      start = nl + 1;
      if (!line) continue;
      const effects = JSON.parse(line) as Effect[];
      for (const e of effects) this.apply(e);
    }
  }
}
