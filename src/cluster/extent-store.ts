/**
 * Extent files of one data partition on disk: dir/<partition>/<extentId>, plus dir/<partition>/meta.json
 * ({VolName, PartitionID, Hosts, NextExtentId}). Normal extent ids start at 1024 and are never reused:
 * ids are reserved on disk a block at a time (NextExtentId in meta.json is a bound no id handed out has
 * reached; written to a temp file and renamed before any id of the block is handed out), so creating an
 * extent costs no file-system metadata write but once per ID_RESERVE ids; a restart resumes at the bound,
 * skipping what was left of the block. Tiny extents
 * (ids 1..64) are created on first write; their append cursor is the file size rounded up to 4 KiB, so
 * it survives a restart without extra metadata.
 *
 * Deleting a range of a tiny extent (they are shared: only that file's range goes) punches a hole in it
 * (fallocate PUNCH_HOLE | KEEP_SIZE through the addon, as upstream's datanode does), so its blocks go back to
 * the file system while the file keeps its size and with it the append cursor. The hole reaches out to the
 * 4 KiB boundaries around the range (the padding reserveTiny left after it: only whole blocks are freed)
 * where the bytes it takes in are zeros: a key split by an overwrite (metanode insertExtent) can leave a live
 * piece of the same reservation next to a released one, in the same block, and its bytes must stay; a write
 * over such an edge waits for the punch. A file system that cannot punch holes gets the range overwritten
 * with zeros, and the space is not given back.
 *
 * Writes are positional (FileHandle.write at an offset) and land in the page cache before the ack, so
 * acknowledged data survives the death of the process; SyncWrite adds fdatasync.
 *
 * Open files: a process-wide cache of at most MAX_OPEN_EXTENTS handles, least recently used closed first,
 * never one that a read or write is using. Random writes into holes make an extent per write, so one
 * handle per extent for the life of the process would run out of file descriptors. Sizes are tracked in
 * memory (loaded from stat at open) so capacity checks need no syscalls.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { makeDirs } from '../util/dirs.js';
import { warn } from '../util/log.js';
import { cannotPunch, punchHole } from './punch-hole.js';

export const TINY_EXTENT_COUNT = 64;
export const MIN_NORMAL_EXTENT_ID = 1024;
export const EXTENT_SIZE_LIMIT = 128 * 1024 * 1024;
export const TINY_ALIGN = 4096;

export function isTinyExtent(id: number): boolean {
  return id >= 1 && id <= TINY_EXTENT_COUNT;
}

export interface PartitionMeta {
  VolName: string;
  PartitionID: number;
  Hosts: string[];
  NextExtentId: number;
}

interface Extent {
  size: number;
  /** Last write, ms since the epoch (the file's mtime at load): the orphan scrubber's grace starts there. */
  mtimeMs: number;
}

/** One extent as GetAllWatermarks lists it (upstream's storage.ExtentInfo, the fields it fills). */
export interface ExtentListing {
  id: number;
  size: number;
  mtimeMs: number;
}

export const MAX_OPEN_EXTENTS = 512;
/** Normal extent ids reserved on disk at once (upstream's datanode persists its base extent id in steps too). */
const ID_RESERVE = 1024;

interface OpenFile {
  fh: Promise<fsp.FileHandle>;
  users: number;
}

/** Open extent files of this process, in least-recently-used order (Map insertion order). */
class OpenFiles {
  private readonly files = new Map<string, OpenFile>();

  async use<T>(file: string, fn: (fh: fsp.FileHandle) => Promise<T>): Promise<T> {
    let f = this.files.get(file);
    if (f) this.files.delete(file);
    else f = { fh: fsp.open(file, fs.constants.O_RDWR | fs.constants.O_CREAT), users: 0 };
    this.files.set(file, f);
    f.users++;
    this.trim();
    try {
      let fh: fsp.FileHandle;
      try {
        fh = await f.fh;
      } catch (e) {
        if (this.files.get(file) === f) this.files.delete(file); // a failed open is not cached
        throw e;
      }
      return await fn(fh); // a failure in fn leaves the open handle cached (dropping it here leaked the fd)
    } finally {
      f.users--;
    }
  }

  /** Close a file's handle (before it is removed, or when its store closes). */
  async drop(file: string): Promise<void> {
    const f = this.files.get(file);
    if (!f) return;
    this.files.delete(file);
    await f.fh.then((h) => h.close(), () => undefined).catch(() => undefined);
  }

  private trim(): void {
    if (this.files.size <= MAX_OPEN_EXTENTS) return;
    for (const [file, f] of this.files) {
      if (this.files.size <= MAX_OPEN_EXTENTS) break;
      if (f.users > 0) continue;
      this.files.delete(file);
      void f.fh.then((h) => h.close(), () => undefined).catch(() => undefined);
    }
  }
}

const openFiles = new OpenFiles();

interface Span {
  s: number;
  e: number;
  done: Promise<void>;
  end(): void;
}

function span(s: number, e: number): Span {
  let end!: () => void;
  const done = new Promise<void>((r) => { end = r; });
  return { s, e, done, end };
}

function overlapping(set: Set<Span>, s: number, e: number): Span | undefined {
  for (const x of set) if (x.s < e && s < x.e) return x;
  return undefined;
}

/**
 * One tiny extent's writes in flight and the ranges whose edges are being checked and punched (see
 * punchTiny): a write over such a range waits for the punch, and the check waits for the writes already in
 * flight over it, so no write lands between the check that an edge is zeros and the punch that zeroes it.
 */
class EdgeGuard {
  private readonly writes = new Set<Span>();
  private readonly edgeSpans = new Set<Span>();

  async write<T>(s: number, e: number, fn: () => Promise<T>): Promise<T> {
    for (let t = overlapping(this.edgeSpans, s, e); t; t = overlapping(this.edgeSpans, s, e)) await t.done;
    const w = span(s, e);
    this.writes.add(w);
    try {
      return await fn();
    } finally {
      this.writes.delete(w);
      w.end();
    }
  }

  async edges<T>(s: number, e: number, fn: () => Promise<T>): Promise<T> {
    const t = span(s, e);
    this.edgeSpans.add(t); // writes over it wait from now on
    try {
      for (let w = overlapping(this.writes, s, e); w; w = overlapping(this.writes, s, e)) await w.done;
      return await fn();
    } finally {
      this.edgeSpans.delete(t);
      t.end();
    }
  }
}

/** Disks (a store's parent directory) already said to be unable to punch holes. */
const noPunchSaid = new Set<string>();

export class ExtentStore {
  readonly dir: string;
  meta: PartitionMeta;
  private readonly extents = new Map<number, Extent>();
  /** Tiny extents: next free (4 KiB aligned) offset, reserved synchronously before the write. */
  private readonly tinyCursor = new Map<number, number>();
  private readonly tinyGuards = new Map<number, EdgeGuard>();
  /** False once the file system refused to punch a hole: deleted tiny ranges are zeroed from then on. */
  private punching = true;
  private tinyNext = 1;
  private persistChain: Promise<void> = Promise.resolve();
  /** Sum of the extents' sizes, kept as they change (a capacity check on every write must not walk them). */
  private usedBytes = 0;
  /** Ids below this are reserved on disk (meta.json says so). */
  private reservedUntil: number;
  /** The reservation being written, and the bound it will set. */
  private reserving: { bound: number; done: Promise<void> } | null = null;

  private constructor(dir: string, meta: PartitionMeta) {
    this.dir = dir;
    this.meta = meta;
    this.reservedUntil = meta.NextExtentId;
  }

  /** Open (or create) the partition directory and load its extents. */
  static async open(root: string, meta: Omit<PartitionMeta, 'NextExtentId'>, create: boolean): Promise<ExtentStore> {
    const dir = path.join(root, String(meta.PartitionID));
    let m: PartitionMeta;
    try {
      m = JSON.parse(await fsp.readFile(path.join(dir, 'meta.json'), 'utf8')) as PartitionMeta;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || !create) throw e;
      makeDirs(dir);
      m = { ...meta, NextExtentId: MIN_NORMAL_EXTENT_ID };
    }
    const st = new ExtentStore(dir, m);
    for (const name of await fsp.readdir(dir)) {
      if (!/^\d+$/.test(name)) continue;
      const id = Number(name);
      const s = await fsp.stat(path.join(dir, name));
      st.extents.set(id, { size: s.size, mtimeMs: s.mtimeMs });
      st.usedBytes += s.size;
      if (isTinyExtent(id)) st.tinyCursor.set(id, alignUp(s.size));
      else if (id >= st.meta.NextExtentId) st.meta.NextExtentId = id + 1;
    }
    st.reservedUntil = st.meta.NextExtentId;
    // A new partition's meta.json must exist; an existing one's is still right if this write fails (a full disk).
    await st.persist().catch((e: NodeJS.ErrnoException) => {
      if (create || e.code !== 'ENOSPC') throw e;
    });
    return st;
  }

  get used(): number {
    return this.usedBytes;
  }

  private resize(e: Extent, size: number): void {
    this.usedBytes += size - e.size;
    e.size = size;
  }

  get extentCount(): number {
    return this.extents.size;
  }

  has(id: number): boolean {
    return this.extents.has(id);
  }

  sizeOf(id: number): number | undefined {
    return this.extents.get(id)?.size;
  }

  /** The normal extents, for GetAllWatermarks (the orphan scrubber's question). */
  normalExtents(): ExtentListing[] {
    const out: ExtentListing[] = [];
    for (const [id, e] of this.extents) if (!isTinyExtent(id)) out.push({ id, size: e.size, mtimeMs: e.mtimeMs });
    return out;
  }

  /** Leader: a fresh normal extent id, reserved on disk before it is returned. */
  async allocExtentId(): Promise<number> {
    const id = this.meta.NextExtentId++;
    await this.reserveThrough(id);
    return id;
  }

  /** Create an extent file (idempotent). Followers learn ids from the leader and keep NextExtentId past them. */
  async create(id: number): Promise<void> {
    if (!isTinyExtent(id)) {
      if (id >= this.meta.NextExtentId) this.meta.NextExtentId = id + 1;
      await this.reserveThrough(id);
    }
    if (this.extents.has(id)) return;
    this.extents.set(id, { size: 0, mtimeMs: Date.now() });
    try {
      await openFiles.use(this.file(id), async () => undefined);
    } catch (err) {
      this.extents.delete(id);
      throw err;
    }
  }

  /**
   * Leader: reserve room for `len` bytes in a tiny extent (round robin over 1..64), appending at a
   * 4 KiB aligned offset. Throws when every tiny extent is full.
   */
  reserveTiny(len: number): { id: number; offset: number } {
    for (let i = 0; i < TINY_EXTENT_COUNT; i++) {
      const id = this.tinyNext;
      this.tinyNext = (this.tinyNext % TINY_EXTENT_COUNT) + 1;
      const cur = this.tinyCursor.get(id) ?? 0;
      if (cur + len > EXTENT_SIZE_LIMIT) continue;
      this.tinyCursor.set(id, alignUp(cur + len));
      return { id, offset: cur };
    }
    throw new Error('GetAvailableTinyExtent error no available extent');
  }

  /** Bytes a write at [off, off+len) adds to the extent's size. */
  growth(id: number, off: number, len: number): number {
    const cur = this.extents.get(id)?.size ?? 0;
    return Math.max(0, off + len - cur);
  }

  async write(id: number, off: number, data: Buffer, sync: boolean): Promise<void> {
    if (isTinyExtent(id) && !this.extents.has(id)) await this.create(id);
    const e = this.extents.get(id);
    if (!e) throw new ExtentNotExist(id);
    const end = off + data.length;
    const before = e.size;
    e.mtimeMs = Date.now();
    if (end > e.size) this.resize(e, end);
    if (isTinyExtent(id)) this.tinyCursor.set(id, Math.max(this.tinyCursor.get(id) ?? 0, alignUp(end)));
    const io = (): Promise<void> => openFiles.use(this.file(id), async (fh) => {
      let done = 0;
      while (done < data.length) {
        const { bytesWritten } = await fh.write(data, done, data.length - done, off + done);
        done += bytesWritten;
      }
      if (sync) await fh.datasync();
    });
    try {
      await (isTinyExtent(id) ? this.tinyGuard(id).write(off, end, io) : io());
    } catch (err) {
      if (e.size === end && before < end) this.resize(e, Math.max(before, await this.statSize(id)));
      throw err;
    }
  }

  /** Read [off, off+len) into a new buffer; ranges never written read as zeros. */
  async read(id: number, off: number, len: number): Promise<Buffer> {
    const e = this.extents.get(id);
    if (!e) throw new ExtentNotExist(id);
    const buf = Buffer.alloc(len);
    await openFiles.use(this.file(id), async (fh) => {
      let done = 0;
      while (done < len) {
        const { bytesRead } = await fh.read(buf, done, len - done, off + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
    });
    return buf;
  }

  /** Read [off, off+len) into `buf` (a pool buffer for RDMA); ranges never written read as zeros. */
  async readInto(id: number, off: number, len: number, buf: Uint8Array): Promise<void> {
    const e = this.extents.get(id);
    if (!e) throw new ExtentNotExist(id);
    if (buf.length < len) throw new RangeError(`readInto: buffer of ${buf.length} bytes for ${len}`);
    let done = 0;
    await openFiles.use(this.file(id), async (fh) => {
      while (done < len) {
        const { bytesRead } = await fh.read(buf, done, len - done, off + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
    });
    if (done < len) buf.fill(0, done, len);
  }

  /**
   * Normal extent: remove it. Tiny extent: punch a hole over the range, out to the 4 KiB boundaries around it
   * where the bytes up to them are zeros (see the top of this file); the extent keeps its size. Where holes
   * cannot be punched, zero the range.
   */
  async markDelete(id: number, off: number, len: number): Promise<void> {
    const e = this.extents.get(id);
    if (!e) return;
    if (isTinyExtent(id)) {
      if (len <= 0) return;
      if (this.punching) {
        try {
          await this.punchTiny(id, off, len);
          return;
        } catch (err) {
          if (!cannotPunch(err)) throw err;
          this.punching = false;
          const disk = path.dirname(this.dir);
          if (!noPunchSaid.has(disk)) {
            noPunchSaid.add(disk);
            warn('datanode', `${disk}: cannot punch holes (${(err as Error).message}): deleted ranges of tiny extents are zeroed instead, their disk space is not given back`);
          }
        }
      }
      await this.write(id, off, Buffer.alloc(len), false);
      return;
    }
    this.extents.delete(id);
    this.usedBytes -= e.size;
    await openFiles.drop(this.file(id));
    await fsp.rm(this.file(id), { force: true });
  }

  /**
   * A hole over [off, off+len), widened to the 4 KiB blocks around it where the bytes it would take in are
   * zeros (only whole blocks are freed; a block another piece of a split key still uses keeps its bytes).
   */
  private async punchTiny(id: number, off: number, len: number): Promise<void> {
    const end = off + len;
    const lo = alignDown(off), hi = alignUp(end);
    const punch = (): Promise<void> => openFiles.use(this.file(id), async (fh) => {
      const from = lo < off && await isZeros(fh, lo, off - lo) ? lo : off;
      const to = hi > end && await isZeros(fh, end, hi - end) ? hi : end;
      punchHole(fh.fd, from, to - from);
    });
    await (lo < off || hi > end ? this.tinyGuard(id).edges(lo, hi, punch) : punch());
  }

  private tinyGuard(id: number): EdgeGuard {
    let g = this.tinyGuards.get(id);
    if (!g) this.tinyGuards.set(id, (g = new EdgeGuard()));
    return g;
  }

  async close(): Promise<void> {
    await this.persistChain;
    for (const id of this.extents.keys()) await openFiles.drop(this.file(id));
  }

  file(id: number): string {
    return path.join(this.dir, String(id));
  }

  private async statSize(id: number): Promise<number> {
    try {
      return (await fsp.stat(this.file(id))).size;
    } catch {
      return 0;
    }
  }

  /** Id `id` is reserved on disk when this resolves: at once when it lies in the current block. */
  private reserveThrough(id: number): Promise<void> {
    if (id < this.reservedUntil) return Promise.resolve();
    if (this.reserving && id < this.reserving.bound) return this.reserving.done;
    const bound = id + ID_RESERVE;
    const done = this.persist(bound).then(() => {
      this.reservedUntil = Math.max(this.reservedUntil, bound);
    }).finally(() => {
      if (this.reserving?.bound === bound) this.reserving = null;
    });
    this.reserving = { bound, done };
    return done;
  }

  /**
   * meta.json, NextExtentId being the reservation bound. Serialised so an older snapshot never overwrites a
   * newer one.
   */
  private persist(bound = this.reservedUntil): Promise<void> {
    const next = this.persistChain.then(async () => {
      const f = path.join(this.dir, 'meta.json');
      const saved: PartitionMeta = { ...this.meta, NextExtentId: Math.max(bound, this.reservedUntil) };
      await fsp.writeFile(f + '.tmp', JSON.stringify(saved));
      await fsp.rename(f + '.tmp', f);
    });
    this.persistChain = next.catch(() => undefined);
    return next;
  }
}

export class ExtentNotExist extends Error {
  constructor(id: number) {
    super(`extent ${id} does not exist`);
  }
}

/** [off, off+len) of the file reads as zeros (bytes past its end do). */
async function isZeros(fh: fsp.FileHandle, off: number, len: number): Promise<boolean> {
  const buf = Buffer.alloc(len);
  let done = 0;
  while (done < len) {
    const { bytesRead } = await fh.read(buf, done, len - done, off + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  for (let i = 0; i < done; i++) if (buf[i] !== 0) return false;
  return true;
}

function alignDown(n: number): number {
  return Math.floor(n / TINY_ALIGN) * TINY_ALIGN;
}

function alignUp(n: number): number {
  return Math.ceil(n / TINY_ALIGN) * TINY_ALIGN;
}
