/**
 * MetaClient: upstream CubeFS's metanode protocol (sdk/meta), request shapes as upstream sends them.
 *
 * Routing: an inode's partition is the one with Start <= ino <= End (an End at or past 2^53 is
 * unbounded: 2^63-1 does not survive JSON.parse). Dentries live with their parent inode.
 * Retry: a request goes to the partition's LeaderAddr; on a network error, a timeout, Again or Err it
 * walks the Members with a growing sleep (50 ms doubling, capped at 1 s), refreshes the partition views
 * once after the first full walk, and gives up when its retry budget is spent. Other result codes are
 * final and become CubeFSError.fromResult (errno from src/proto's table).
 * Composite ops (create, link, unlink, rename) follow upstream's sequences and roll back on failure.
 *
 * Ownership: the client owns its ConnPool unless one was handed in; close() is idempotent.
 */
import { constants as osc } from 'node:os';
import { Op, opName } from '../proto/opcode.js';
import { Result } from '../proto/result.js';
import { newPacket } from '../proto/packet.js';
import { isGoDir } from '../proto/mode.js';
import { AttrValid, PartitionStatus, type Dentry, type ExtentKey, type InodeInfo, type MetaPartitionView } from '../proto/types.js';
import { ConnPool } from '../transport/tcp.js';
import { nextReqId } from '../transport/reqid.js';
import { CubeFSError, ErrorCode, errnoName, sleep } from '../util/errors.js';
import { logger, warn } from '../util/log.js';

const log = logger('meta');
const E = osc.errno;

export interface MetaPartitionSource {
  metaPartitions(): MetaPartitionView[];
  refresh(): Promise<void>;
}

export interface MetaClientOptions {
  vol: string;
  source: MetaPartitionSource;
  pool?: ConnPool;
  /** Deadline of one request on the wire; default 10 s. */
  timeoutMs?: number;
  /** The volume's EnableTransactionV1 includes "rename": rename through upstream's tx ops. */
  transactions?: boolean;
  /**
   * Total time spent retrying one request across members, and waiting for a meta partition to come back
   * for a create; default 60 s (a metanode restart or a leader election fits in it).
   */
  retryBudgetMs?: number;
}

export const UNBOUNDED_END = 2 ** 53;
const READDIR_LIMIT = 1024;
const UNIQ_BATCH = 5000;
const BATCH_GET_MAX = 1024;
const TX_TYPE_RENAME = 4;
const TX_APPLY_COMMIT = 1;
const TX_APPLY_ROLLBACK = 2;
const TX_TIMEOUT_MIN = 1;
const STORAGE_CLASS_REPLICA = 1;
/** How long an UnlinkInode whose name is already gone is tried again (deferUnlink). */
const DEFERRED_UNLINK_MS = 60 * 60_000;

type Body = Record<string, unknown>;

function posixError(errno: number, what: string): CubeFSError {
  return new CubeFSError(ErrorCode.Result, `${what}: ${errnoName(errno) ?? `errno ${errno}`}`, { errno });
}

/** An Ok reply's JSON, or {} when the reply carries none. */
function parseReply(data: Buffer, what: string): Body {
  if (data.length === 0) return {};
  try {
    const v = JSON.parse(data.toString('utf8')) as unknown;
    return v && typeof v === 'object' ? (v as Body) : {};
  } catch (e) {
    throw new CubeFSError(ErrorCode.BadPacket, `${what}: malformed JSON reply: ${(e as Error).message}`);
  }
}

function retryableFailure(e: unknown): boolean {
  if (!(e instanceof CubeFSError)) return false;
  if (e.code === ErrorCode.Network || e.code === ErrorCode.Timeout) return true;
  return e.code === ErrorCode.Result && (e.result === Result.Again || e.result === Result.Err);
}

/** An outcome nobody can tell: EIO, whatever the underlying error's errno. */
function asEio(e: unknown, what: string): CubeFSError {
  return new CubeFSError(ErrorCode.Network, `${what}: ${(e as Error).message}`, { errno: E.EIO, cause: e });
}

function withSnapInfo(ek: ExtentKey): ExtentKey {
  return {
    FileOffset: ek.FileOffset, PartitionId: ek.PartitionId, ExtentId: ek.ExtentId, ExtentOffset: ek.ExtentOffset,
    Size: ek.Size, CRC: ek.CRC, SnapInfo: ek.SnapInfo ?? { VerSeq: 0, IsSplit: false, ModGen: 0 },
  };
}

export class MetaClient {
  private readonly vol: string;
  private readonly source: MetaPartitionSource;
  private readonly pool: ConnPool;
  private readonly ownPool: boolean;
  private readonly timeoutMs: number;
  private readonly retryBudgetMs: number;
  private readonly transactions: boolean;
  private rr = 0;
  private closed = false;
  /** Hears of an inode whose UnlinkInode went through later (deferUnlink); the file system evicts it. */
  onDeferredUnlink: ((info: InodeInfo) => void) | null = null;
  /** Per partition, unique ids fetched in a batch and not yet used: [next, end). */
  private readonly uniq = new Map<number, { next: number; end: number }>();

  constructor(opts: MetaClientOptions) {
    this.vol = opts.vol;
    this.source = opts.source;
    this.pool = opts.pool ?? new ConnPool();
    this.ownPool = opts.pool === undefined;
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    this.retryBudgetMs = opts.retryBudgetMs ?? 60_000;
    this.transactions = opts.transactions ?? false;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.ownPool) this.pool.close();
  }

  // --- routing and sending ---

  private findPartition(ino: number): MetaPartitionView | undefined {
    return this.source.metaPartitions().find((p) => p.Start <= ino && (p.End >= UNBOUNDED_END || ino <= p.End));
  }

  private async partitionOf(ino: number): Promise<MetaPartitionView> {
    let mp = this.findPartition(ino);
    if (!mp) {
      await this.source.refresh();
      mp = this.findPartition(ino);
    }
    if (!mp) throw new CubeFSError(ErrorCode.NoPartition, `no meta partition holds inode ${ino}`, { errno: E.ENOENT });
    return mp;
  }

  private partitionById(id: number): MetaPartitionView | undefined {
    return this.source.metaPartitions().find((p) => p.PartitionID === id);
  }

  /**
   * One request to a partition, with leader retry. `withVol` false for bodies upstream sends without
   * vol and pid (TxCommit / TxRollback carry a TxApplyRequest only).
   */
  private async send(mp: MetaPartitionView, op: Op, fields: Body, what: string, withVol = true): Promise<Body> {
    if (this.closed) throw new CubeFSError(ErrorCode.Closed, `${what}: meta client is closed`);
    const body = withVol ? { vol: this.vol, pid: mp.PartitionID, ...fields } : fields;
    const data = Buffer.from(JSON.stringify(body));
    const deadline = Date.now() + this.retryBudgetMs;
    let view = mp;
    let refreshed = false;
    let delay = 50;
    let lastErr: unknown;
    for (;;) {
      const addrs = [view.LeaderAddr, ...view.Members.filter((a) => a !== view.LeaderAddr)].filter((a) => !!a);
      if (addrs.length === 0) throw new CubeFSError(ErrorCode.NoPartition, `${what}: meta partition ${view.PartitionID} has no address`);
      for (const addr of addrs) {
        if (this.closed) throw new CubeFSError(ErrorCode.Closed, `${what}: meta client is closed`);
        try {
          return await this.sendOnce(addr, view.PartitionID, op, data, what);
        } catch (e) {
          if (!retryableFailure(e)) throw e;
          lastErr = e;
          log('%s to %s: %s; trying the next member', what, addr, (e as Error).message);
          if (Date.now() + delay > deadline) throw lastErr;
          await sleep(delay);
          delay = Math.min(delay * 2, 1000);
        }
      }
      if (!refreshed) {
        warn('meta', `meta partition ${view.PartitionID} (${addrs.join(', ')}) does not answer (${(lastErr as Error).message}); `
          + `requests wait for it up to ${Math.round(this.retryBudgetMs / 1000)} s`, { key: 'meta-unreachable' });
        refreshed = true;
        try {
          await this.source.refresh();
          view = this.partitionById(view.PartitionID) ?? view;
        } catch (e) {
          log('%s: refreshing partition views failed: %s', what, (e as Error).message);
        }
      }
      if (Date.now() >= deadline) throw lastErr;
    }
  }

  private async sendOnce(addr: string, pid: number, op: Op, data: Buffer, what: string): Promise<Body> {
    const req = newPacket({ opcode: op, partitionId: pid, reqId: nextReqId(), data });
    const reply = await this.pool.request(addr, req, { timeoutMs: this.timeoutMs });
    if (reply.opcode !== op) {
      throw new CubeFSError(ErrorCode.BadPacket, `${what}: reply opcode ${opName(reply.opcode)} does not match ${opName(op)}`, { retryable: true });
    }
    if (reply.resultCode !== Result.Ok) {
      const rc = reply.resultCode;
      throw CubeFSError.fromResult(rc, what, reply.data.toString('utf8') || undefined, rc === Result.Again || rc === Result.Err);
    }
    return parseReply(reply.data, what);
  }

  // --- inodes ---

  /**
   * The read-write partitions to create in. None read-write because every one is ReadOnly (full) is
   * ENOSPC; none because some are Unavailable (a metanode down, as the master sees it) is an outage, not a
   * full volume: wait for one to come back, refreshing the views, and give EIO when the budget is spent.
   */
  private async writablePartitions(): Promise<MetaPartitionView[]> {
    const deadline = Date.now() + this.retryBudgetMs;
    let delay = 200;
    for (let first = true; ; first = false) {
      const all = this.source.metaPartitions();
      const rw = all.filter((p) => p.Status === PartitionStatus.ReadWrite);
      if (rw.length > 0) return rw;
      if (!first) {
        if (all.length > 0 && all.every((p) => p.Status === PartitionStatus.ReadOnly)) {
          throw new CubeFSError(ErrorCode.NoPartition, 'createInode: every meta partition is read-only (full)', { errno: E.ENOSPC });
        }
        if (Date.now() + delay > deadline) {
          throw new CubeFSError(ErrorCode.NoPartition,
            `createInode: no meta partition has been writable for ${Math.round(this.retryBudgetMs / 1000)} s (metanodes unavailable)`, { errno: E.EIO });
        }
        if (this.closed) throw new CubeFSError(ErrorCode.Closed, 'createInode: meta client is closed');
        warn('meta', 'no meta partition is writable now (metanode unavailable?); creates wait for one', { key: 'meta-unavailable' });
        await sleep(delay);
        delay = Math.min(delay * 2, 2000);
      }
      try {
        await this.source.refresh();
      } catch (e) {
        log('createInode: refreshing partition views failed: %s', (e as Error).message);
      }
    }
  }

  /** Picks a read-write partition round-robin; on InodeFull tries the next one. */
  async createInode(mode: number, uid: number, gid: number, target?: Buffer): Promise<InodeInfo> {
    const rw = await this.writablePartitions();
    const first = this.rr++ % rw.length;
    let lastErr: unknown;
    for (let i = 0; i < rw.length; i++) {
      const mp = rw[(first + i) % rw.length]!;
      try {
        const r = await this.send(mp, Op.MetaCreateInode, {
          mode, uid, gid, tgt: target ? target.toString('base64') : null, fullPaths: [], storageType: STORAGE_CLASS_REPLICA,
        }, `createInode mode=${mode}`);
        return r.info as InodeInfo;
      } catch (e) {
        if (!(e instanceof CubeFSError) || e.result !== Result.InodeFull) throw e;
        lastErr = e;
      }
    }
    throw lastErr;
  }

  /** A unique id of ino's partition, from a batch fetched with GetUniqID as upstream does. */
  private async nextUniq(mp: MetaPartitionView): Promise<number> {
    let u = this.uniq.get(mp.PartitionID);
    if (!u || u.next >= u.end) {
      const start = await this.getUniqIdOf(mp, UNIQ_BATCH);
      u = { next: start, end: start + UNIQ_BATCH };
      this.uniq.set(mp.PartitionID, u);
    }
    return u.next++;
  }

  private async getUniqIdOf(mp: MetaPartitionView, num: number): Promise<number> {
    const r = await this.send(mp, Op.MetaGetUniqID, { num }, `getUniqId num=${num}`);
    return Number(r.start);
  }

  async getUniqId(ino: number, num = 1): Promise<number> {
    return this.getUniqIdOf(await this.partitionOf(ino), num);
  }

  /** `uid`: the unique id of an earlier attempt, so the metanode applies it at most once. */
  async unlinkInode(ino: number, uid?: number): Promise<InodeInfo> {
    const mp = await this.partitionOf(ino);
    uid ??= await this.nextUniq(mp);
    const r = await this.send(mp, Op.MetaUnlinkInode, { ino, uid, ver: 0, denVer: 0, fullPaths: [] }, `unlinkInode ino=${ino}`);
    return r.info as InodeInfo;
  }

  /**
   * An UnlinkInode that failed after its name was deleted: the name is gone, so the unlink happened as far
   * as the application can tell; the link count still has to come down, or the inode (and its data) stays
   * forever. Tried again in the background with the same unique id (applied once), for up to an hour;
   * onDeferredUnlink hears of the inode once it went through (the file system evicts it when unused).
   */
  private deferUnlink(ino: number, uid: number, why: unknown): void {
    warn('meta', `inode ${ino}: its name is deleted but its link count could not be lowered (${(why as Error).message}); trying again in the background`,
      { key: 'meta-deferred-unlink' });
    const giveUp = Date.now() + DEFERRED_UNLINK_MS;
    const attempt = (delay: number): void => {
      const timer = setTimeout(() => {
        if (this.closed) return;
        this.unlinkInode(ino, uid).then((info) => this.onDeferredUnlink?.(info), (e: unknown) => {
          if (e instanceof CubeFSError && e.result === Result.NotExist) return;
          if (Date.now() > giveUp) {
            warn('meta', `inode ${ino}: gave up lowering its link count (${(e as Error).message}); it keeps its space`);
            return;
          }
          attempt(Math.min(delay * 2, 30_000));
        });
      }, delay);
      timer.unref();
    };
    attempt(1000);
  }

  async evictInode(ino: number): Promise<void> {
    await this.send(await this.partitionOf(ino), Op.MetaEvictInode, { ino, fullPaths: [] }, `evictInode ino=${ino}`);
  }

  async inodeGet(ino: number): Promise<InodeInfo> {
    const r = await this.send(await this.partitionOf(ino), Op.MetaInodeGet, { ino, seq: 0, verAll: false, inner: false }, `inodeGet ino=${ino}`);
    return r.info as InodeInfo;
  }

  /** Grouped by partition, in parallel; inodes that do not exist are left out. */
  async batchInodeGet(inos: number[]): Promise<InodeInfo[]> {
    const groups = new Map<number, { mp: MetaPartitionView; inos: number[] }>();
    for (const ino of inos) {
      const mp = await this.partitionOf(ino);
      let g = groups.get(mp.PartitionID);
      if (!g) groups.set(mp.PartitionID, (g = { mp, inos: [] }));
      g.inos.push(ino);
    }
    const jobs: Promise<InodeInfo[]>[] = [];
    for (const g of groups.values()) {
      for (let i = 0; i < g.inos.length; i += BATCH_GET_MAX) {
        const chunk = g.inos.slice(i, i + BATCH_GET_MAX);
        jobs.push(this.send(g.mp, Op.MetaBatchInodeGet, { inos: chunk, seq: 0, inner: false }, `batchInodeGet n=${chunk.length}`)
          .then((r) => (Array.isArray(r.infos) ? (r.infos as InodeInfo[]) : [])));
      }
    }
    return (await Promise.all(jobs)).flat();
  }

  async setattr(ino: number, a: { mode?: number; uid?: number; gid?: number; mtime?: number; atime?: number }): Promise<void> {
    let valid = 0;
    if (a.mode !== undefined) valid |= AttrValid.Mode;
    if (a.uid !== undefined) valid |= AttrValid.Uid;
    if (a.gid !== undefined) valid |= AttrValid.Gid;
    if (a.mtime !== undefined) valid |= AttrValid.ModifyTime;
    if (a.atime !== undefined) valid |= AttrValid.AccessTime;
    await this.send(await this.partitionOf(ino), Op.MetaSetattr, {
      ino, mode: a.mode ?? 0, uid: a.uid ?? 0, gid: a.gid ?? 0,
      mt: Math.floor(a.mtime ?? 0), at: Math.floor(a.atime ?? 0), valid, seq: 0,
    }, `setattr ino=${ino} valid=${valid}`);
  }

  async linkInode(ino: number): Promise<InodeInfo> {
    const mp = await this.partitionOf(ino);
    const uniqID = await this.nextUniq(mp);
    const r = await this.send(mp, Op.MetaLinkInode, { ino, uniqID, fullPaths: [] }, `linkInode ino=${ino}`);
    return r.info as InodeInfo;
  }

  async truncate(ino: number, size: number): Promise<void> {
    await this.send(await this.partitionOf(ino), Op.MetaTruncate, { ino, sz: size, fullPaths: [] }, `truncate ino=${ino} sz=${size}`);
  }

  // --- xattrs (values travel as JSON strings, as upstream's Go string fields) ---

  /**
   * Upstream carries xattr values as JSON strings, so bytes that are not UTF-8 would come back altered
   * (U+FFFD). Such values are refused with EINVAL instead of being stored wrong.
   */
  async setXAttr(ino: number, key: string, value: Buffer): Promise<void> {
    if (!Buffer.from(value.toString('utf8'), 'utf8').equals(value)) {
      throw new CubeFSError(ErrorCode.Invalid, `setXAttr ino=${ino} key=${key}: the value is not UTF-8 text, which CubeFS cannot store unchanged`, { errno: E.EINVAL });
    }
    await this.send(await this.partitionOf(ino), Op.MetaSetXAttr, { ino, key, val: value.toString('utf8') }, `setXAttr ino=${ino} key=${key}`);
  }

  /** null when the attribute is absent (upstream answers Ok with an empty value). */
  async getXAttr(ino: number, key: string): Promise<Buffer | null> {
    const mp = await this.partitionOf(ino);
    const r = await this.send(mp, Op.MetaGetXAttr, { ino, key, seq: 0 }, `getXAttr ino=${ino} key=${key}`);
    const val = typeof r.val === 'string' ? r.val : '';
    if (val === '') {
      const names = await this.listXAttr(ino);
      if (!names.includes(key)) return null;
    }
    return Buffer.from(val, 'utf8');
  }

  async listXAttr(ino: number): Promise<string[]> {
    const r = await this.send(await this.partitionOf(ino), Op.MetaListXAttr, { ino, seq: 0 }, `listXAttr ino=${ino}`);
    return Array.isArray(r.xattrs) ? (r.xattrs as string[]) : [];
  }

  async removeXAttr(ino: number, key: string): Promise<void> {
    await this.send(await this.partitionOf(ino), Op.MetaRemoveXAttr, { ino, key, seq: 0 }, `removeXAttr ino=${ino} key=${key}`);
  }

  // --- extents ---

  async listExtents(ino: number): Promise<{ gen: number; size: number; extents: ExtentKey[] }> {
    const r = await this.send(await this.partitionOf(ino), Op.MetaExtentsList, {
      ino, seq: 0, verAll: false, isCache: false, forWrite: false, isMigration: false, inner: false,
    }, `listExtents ino=${ino}`);
    return { gen: Number(r.gen ?? 0), size: Number(r.sz ?? 0), extents: Array.isArray(r.eks) ? (r.eks as ExtentKey[]) : [] };
  }

  /** ExtentAddWithCheck (0x3A); a stale view of the file's keys fails with result ConflictExtents (0xF2). */
  async appendExtentKey(ino: number, ek: ExtentKey, discard: ExtentKey[] = []): Promise<void> {
    await this.send(await this.partitionOf(ino), Op.MetaExtentAddWithCheck, {
      ino, ek: withSnapInfo(ek), dek: discard.map(withSnapInfo), seq: 0, IsSplit: false, IsCache: false,
      storageClass: STORAGE_CLASS_REPLICA, IsMigration: false,
    }, `appendExtentKey ino=${ino} off=${ek.FileOffset} size=${ek.Size}`);
  }

  // --- dentries ---

  async createDentry(pino: number, name: string, ino: number, mode: number): Promise<void> {
    await this.send(await this.partitionOf(pino), Op.MetaCreateDentry, { pino, ino, name, mode, fullPaths: [] },
      `createDentry pino=${pino} name=${JSON.stringify(name)} ino=${ino}`);
  }

  async deleteDentry(pino: number, name: string): Promise<number> {
    const r = await this.send(await this.partitionOf(pino), Op.MetaDeleteDentry, {
      pino, name, inodeCreateTime: 0, ver: 0, fullPaths: [],
    }, `deleteDentry pino=${pino} name=${JSON.stringify(name)}`);
    return Number(r.ino);
  }

  async updateDentry(pino: number, name: string, ino: number): Promise<number> {
    const r = await this.send(await this.partitionOf(pino), Op.MetaUpdateDentry, { pino, name, ino, fullPaths: [] },
      `updateDentry pino=${pino} name=${JSON.stringify(name)} ino=${ino}`);
    return Number(r.ino);
  }

  async lookup(pino: number, name: string): Promise<{ ino: number; mode: number }> {
    const r = await this.send(await this.partitionOf(pino), Op.MetaLookup, { pino, name, seq: 0, verAll: false },
      `lookup pino=${pino} name=${JSON.stringify(name)}`);
    return { ino: Number(r.ino), mode: Number(r.mode) };
  }

  /** Children from `marker` (inclusive), at most `limit`. */
  async readdirLimit(pino: number, marker: string, limit: number): Promise<Dentry[]> {
    const r = await this.send(await this.partitionOf(pino), Op.MetaReadDirLimit, { pino, marker, limit, seq: 0, VerOpt: 0 },
      `readdirLimit pino=${pino} marker=${JSON.stringify(marker)}`);
    return Array.isArray(r.children) ? (r.children as Dentry[]) : [];
  }

  /** Every child, page by page; a page's marker entry is not repeated. */
  async readdir(pino: number): Promise<Dentry[]> {
    const out: Dentry[] = [];
    let marker = '';
    for (;;) {
      const page = await this.readdirLimit(pino, marker, READDIR_LIMIT);
      const fresh = marker !== '' && page[0]?.name === marker ? page.slice(1) : page;
      out.push(...fresh);
      if (page.length < READDIR_LIMIT || fresh.length === 0) return out;
      marker = page[page.length - 1]!.name;
    }
  }

  // --- composite ops ---

  /**
   * CreateInode + CreateDentry; a dentry that was not made rolls the inode back (UnlinkInode + EvictInode).
   * A dentry failure is not always "not made": when the retries ran out on a network error or a timeout
   * (or an Exist answers a retry of a request that did land), the name is looked up first, so a dentry
   * that exists is never left pointing at an inode the rollback removed.
   */
  async create(pino: number, name: string, mode: number, uid: number, gid: number, target?: Buffer): Promise<InodeInfo> {
    await this.partitionOf(pino);
    const info = await this.createInode(mode, uid, gid, target);
    try {
      await this.createDentry(pino, name, info.ino, mode);
    } catch (e) {
      const made = await this.dentryOutcome(pino, name, info.ino, e);
      if (made === 'made') return info;
      if (made === 'unknown') throw asEio(e, `create ${pino}/${name}`);
      await this.rollbackInode(info.ino);
      if (e instanceof CubeFSError && e.result === Result.Exist) {
        throw new CubeFSError(ErrorCode.Result, `create ${pino}/${name}: exists`, { errno: E.EEXIST, result: Result.Exist, cause: e });
      }
      throw e;
    }
    return info;
  }

  /**
   * Whether a CreateDentry that failed with `e` made pino/name -> ino after all. A definitive refusal
   * (other than Exist) made nothing; after an unknown outcome or Exist the lookup decides; when the lookup
   * fails too, nobody can tell, and nothing may be rolled back.
   */
  private async dentryOutcome(pino: number, name: string, ino: number, e: unknown): Promise<'made' | 'not made' | 'unknown'> {
    const unsure = retryableFailure(e) || (e instanceof CubeFSError && (e.result === Result.Exist || e.code === ErrorCode.Closed));
    if (!unsure) return 'not made';
    try {
      const d = await this.lookup(pino, name);
      return d.ino === ino ? 'made' : 'not made';
    } catch (e2) {
      if (e2 instanceof CubeFSError && e2.result === Result.NotExist) return 'not made';
      warn('meta', `${pino}/${name}: cannot tell whether its directory entry was made (${(e2 as Error).message}); inode ${ino} is kept`,
        { key: 'meta-dentry-unknown' });
      return 'unknown';
    }
  }

  private async rollbackInode(ino: number): Promise<void> {
    try {
      await this.unlinkInode(ino);
      await this.evictInode(ino);
    } catch (e) {
      log('rollback of inode %d failed: %s', ino, (e as Error).message);
    }
  }

  /** LinkInode + CreateDentry; the link is undone when the dentry was not made (see create). */
  async link(pino: number, name: string, ino: number): Promise<InodeInfo> {
    const info = await this.linkInode(ino);
    try {
      await this.createDentry(pino, name, ino, info.mode);
    } catch (e) {
      const made = await this.dentryOutcome(pino, name, ino, e);
      if (made === 'made') return info;
      if (made === 'unknown') throw asEio(e, `link ${pino}/${name}`);
      try { await this.unlinkInode(ino); } catch (e2) { log('link rollback of %d failed: %s', ino, (e2 as Error).message); }
      throw e;
    }
    return info;
  }

  /**
   * DeleteDentry + UnlinkInode. rmdir of a non-empty directory fails with ENOTEMPTY, of a non-directory
   * with ENOTDIR; unlink of a directory with EISDIR. Returns the inode after unlink (null when it was
   * already gone); the caller evicts when nlink reached 0 and nobody holds it open.
   */
  async unlink(pino: number, name: string, isDir: boolean): Promise<InodeInfo | null> {
    const what = `${isDir ? 'rmdir' : 'unlink'} ${pino}/${name}`;
    const d = await this.lookup(pino, name);
    const dir = isGoDir(d.mode);
    if (isDir && !dir) throw posixError(E.ENOTDIR, what);
    if (!isDir && dir) throw posixError(E.EISDIR, what);
    if (dir) {
      const info = await this.inodeGet(d.ino);
      if (info.nlink > 2) throw posixError(E.ENOTEMPTY, what);
    }
    // The unique id first: once the name is deleted, the UnlinkInode must be one that can be sent again.
    const uid = await this.nextUniq(await this.partitionOf(d.ino));
    const ino = await this.deleteDentry(pino, name);
    try {
      return await this.unlinkInode(ino, ino === d.ino ? uid : undefined);
    } catch (e) {
      if (e instanceof CubeFSError && e.result === Result.NotExist) return null;
      if (ino !== d.ino) throw e;
      this.deferUnlink(ino, uid, e);
      return null;
    }
  }

  /**
   * Rename with POSIX checks (ENOENT, ENOTDIR, EISDIR, ENOTEMPTY). Without transactions: LinkInode src,
   * CreateDentry (UpdateDentry over an existing dst), DeleteDentry src, UnlinkInode src. With them:
   * TxCreate at the dst parent's partition, TxDeleteDentry + TxCreateDentry/TxUpdateDentry, TxCommit.
   * An overwritten inode gets UnlinkInode and is returned; the caller evicts it.
   */
  async rename(srcPino: number, srcName: string, dstPino: number, dstName: string): Promise<{ ino: number; overwritten: InodeInfo | null }> {
    const what = `rename ${srcPino}/${srcName} -> ${dstPino}/${dstName}`;
    const src = await this.lookup(srcPino, srcName);
    let dst: { ino: number; mode: number } | null = null;
    try {
      dst = await this.lookup(dstPino, dstName);
    } catch (e) {
      if (!(e instanceof CubeFSError && e.result === Result.NotExist)) throw e;
    }
    if (dst && dst.ino === src.ino) return { ino: src.ino, overwritten: null };
    if (dst) {
      const srcDir = isGoDir(src.mode), dstDir = isGoDir(dst.mode);
      if (srcDir && !dstDir) throw posixError(E.ENOTDIR, what);
      if (!srcDir && dstDir) throw posixError(E.EISDIR, what);
      if (dstDir && (await this.inodeGet(dst.ino)).nlink > 2) throw posixError(E.ENOTEMPTY, what);
    }
    if (this.transactions) await this.txRename(src, srcPino, srcName, dst, dstPino, dstName, what);
    else await this.plainRename(src, srcPino, srcName, dst, dstPino, dstName);
    // The parents whose mtime upstream's metanode leaves behind: UpdateDentry (a name replaced) and the tx
    // ops TxDeleteDentry / TxUpdateDentry touch no parent; DeleteDentry and (Tx)CreateDentry do.
    const stale = new Set<number>();
    if (this.transactions) stale.add(srcPino);
    if (dst && (this.transactions || dstPino !== srcPino)) stale.add(dstPino);
    await this.touchMtime([...stale]);
    if (!dst) return { ino: src.ino, overwritten: null };
    try {
      return { ino: src.ino, overwritten: await this.unlinkInode(dst.ino) };
    } catch (e) {
      if (e instanceof CubeFSError && e.result === Result.NotExist) return { ino: src.ino, overwritten: null };
      throw e;
    }
  }

  /** Parent directories' mtime to now (Setattr ModifyTime), best effort: the operation itself is done. */
  private async touchMtime(inos: number[]): Promise<void> {
    const mtime = Math.floor(Date.now() / 1000);
    await Promise.all(inos.map((ino) => this.setattr(ino, { mtime }).catch((e: Error) => log('mtime of directory %d not set: %s', ino, e.message))));
  }

  private async plainRename(src: { ino: number; mode: number }, srcPino: number, srcName: string,
    dst: { ino: number } | null, dstPino: number, dstName: string): Promise<void> {
    await this.linkInode(src.ino);
    try {
      if (dst) await this.updateDentry(dstPino, dstName, src.ino);
      else await this.createDentry(dstPino, dstName, src.ino, src.mode);
    } catch (e) {
      try { await this.unlinkInode(src.ino); } catch (e2) { log('rename rollback failed: %s', (e2 as Error).message); }
      throw e;
    }
    try {
      await this.deleteDentry(srcPino, srcName);
    } catch (e) {
      try {
        if (dst) await this.updateDentry(dstPino, dstName, dst.ino);
        else await this.deleteDentry(dstPino, dstName);
        await this.unlinkInode(src.ino);
      } catch (e2) {
        log('rename rollback failed: %s', (e2 as Error).message);
      }
      throw e;
    }
    await this.unlinkInode(src.ino);
  }

  private async txRename(src: { ino: number; mode: number }, srcPino: number, srcName: string,
    dst: { ino: number } | null, dstPino: number, dstName: string, what: string): Promise<void> {
    const srcMp = await this.partitionOf(srcPino);
    const dstMp = await this.partitionOf(dstPino);
    const dentryInfo = (mp: MetaPartitionView, pino: number, name: string): Body => ({
      ParentId: pino, Name: name, MpMembers: mp.Members.join(','), TxID: '', MpID: mp.PartitionID, CreateTime: 0, Timeout: 0,
    });
    const tx0: Body = {
      TxID: '', TxType: TX_TYPE_RENAME, TmID: dstMp.PartitionID, CreateTime: 0, Timeout: TX_TIMEOUT_MIN, State: 0, DoneTime: 0,
      RMFinish: false, TxInodeInfos: {},
      TxDentryInfos: {
        [`${srcPino}_${srcName}`]: dentryInfo(srcMp, srcPino, srcName),
        [`${dstPino}_${dstName}`]: dentryInfo(dstMp, dstPino, dstName),
      },
      LastCheckTime: 0,
    };
    const created = await this.send(dstMp, Op.MetaTxCreate, { tx: tx0 }, `${what}: txCreate`);
    const tx = (created.tx ?? null) as Body | null;
    if (!tx || typeof tx.TxID !== 'string' || tx.TxID === '') {
      throw new CubeFSError(ErrorCode.BadPacket, `${what}: TxCreate reply carries no transaction id`);
    }
    const txId = tx.TxID;
    const tmMp = this.partitionById(Number(tx.TmID)) ?? dstMp;
    try {
      const del = this.send(srcMp, Op.MetaTxDeleteDentry, { pino: srcPino, name: srcName, ino: src.ino, tx, fullPaths: [] }, `${what}: txDeleteDentry`);
      const add = dst
        ? this.send(dstMp, Op.MetaTxUpdateDentry, { pino: dstPino, name: dstName, ino: src.ino, oldIno: dst.ino, tx, fullPaths: [] }, `${what}: txUpdateDentry`)
        : this.send(dstMp, Op.MetaTxCreateDentry, { pino: dstPino, ino: src.ino, name: dstName, mode: src.mode, qids: [], tx, fullPaths: [] }, `${what}: txCreateDentry`);
      const [a, b] = await Promise.allSettled([del, add]);
      if (a.status === 'rejected') throw a.reason;
      if (b.status === 'rejected') throw b.reason;
    } catch (e) {
      try {
        await this.send(tmMp, Op.TxRollback, { tx: txId, tmid: tmMp.PartitionID, type: TX_APPLY_ROLLBACK }, `${what}: txRollback`, false);
      } catch (e2) {
        log('%s: rollback failed: %s', what, (e2 as Error).message);
      }
      throw e;
    }
    await this.send(tmMp, Op.TxCommit, { tx: txId, tmid: tmMp.PartitionID, type: TX_APPLY_COMMIT }, `${what}: txCommit`, false);
  }
}
