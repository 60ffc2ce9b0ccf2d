/**
 * The embedded metanode: one process hosting every meta partition of the embedded cluster, speaking
 * upstream's metanode protocol (JSON bodies in packets, upstream reply shapes and result codes).
 *
 * Requests are handled one at a time against the in-memory state (handlers are synchronous up to the
 * commit), so each mutation is atomic; its effects are logged before the reply (see meta-store.ts).
 * Transactions (rename through TxCreate / TxDeleteDentry / TxCreateDentry / TxUpdateDentry / TxCommit)
 * stage dentry changes and lock their keys; TxCommit applies all staged changes, across partitions, in
 * one log record. Staged transactions are not durable: a restart rolls them back, as a TM would after
 * its timeout.
 *
 * Space: extents no inode refers to any more (an evicted inode's, a truncated or overwritten range's) go to
 * the partition's garbage and are deleted on the datanodes a little later (reclaimer.ts).
 *
 * Where upstream's metanode does something surprising, this one does the same, so the client is tested
 * against it: reading an inode (InodeGet, BatchInodeGet, ExtentsList) sets its atime to now (upstream's
 * getInode, "nothing is depending on atime"), so an atime set in the past does not survive the next
 * stat; a Truncate of an inode that never had an extent recorded changes nothing and answers Ok (upstream
 * keeps no extent list until the first extent is added, and ExtentsTruncate does nothing without one).
 * Each meta partition has one member, this metanode, which leads it: upstream's non-leader cases (the
 * request proxied to the leader, or Again "no leader") do not arise; a partition it does not host is
 * answered Err, as upstream's current metanode does.
 *
 * Valid replies: Ok with upstream's body; NotExist (unknown partition, inode, dentry or transaction),
 * Exist, NotEmpty, ArgMismatch (malformed body, wrong types), InodeFull, ConflictExtents, TxConflict.
 */
import { Op } from '../proto/opcode.js';
import { Result } from '../proto/result.js';
import { newReply, type Packet } from '../proto/packet.js';
import { GO_ZERO_TIME, toRfc3339, type ExtentKey } from '../proto/types.js';
import { GoMode, isGoDir, isGoRegular } from '../proto/mode.js';
import { PacketServer } from '../transport/server.js';
import { splitAddr } from '../transport/tcp.js';
import { logger } from '../util/log.js';
import { garbageKey, MetaPartition, MetaStore, StoreFull, type Effect, type InodeRec } from './meta-store.js';
import { ExtentReclaimer, overlapsInExtent, releasedExtents } from './reclaimer.js';
import { withExtent } from './extent-keys.js';
import { isTinyExtent } from './extent-store.js';
import type { DataPartitionView } from '../proto/types.js';

const log = logger('metanode');

export interface MetaNodeOptions {
  dir: string;
  /** "host:port"; default "127.0.0.1:0". */
  listen?: string;
  /** How long a released extent waits before the datanodes delete it (default 10 s). */
  reclaimDelayMs?: number;
  /**
   * The log can take no more changes (a failed fdatasync): what is on disk is not known, so a node process
   * exits for its launcher to restart it, and the restart replays what the disk has. Default: keep serving
   * reads, refuse changes.
   */
  onBrokenLog?: (why: Error) => void;
}

/** A reply with a result code other than Ok. */
class Reject extends Error {
  constructor(readonly rc: number, message: string) {
    super(message);
  }
}

type Body = Record<string, unknown>;

/**
 * One request's changes. The inodes it edits are copies (edit(): one copy per inode for the whole request),
 * published by the effects it pushes; the live state changes only when MetaStore.commit has those effects
 * in the log (write-ahead). A request that fails, or whose log record cannot be written, changes nothing.
 */
class Changes {
  readonly effects: Effect[] = [];
  private readonly drafts = new Map<string, InodeRec>();

  push(...e: Effect[]): void {
    this.effects.push(...e);
  }

  /** A copy of inode `ino` of `p` to change, or undefined when there is none. */
  edit(p: MetaPartition, ino: number): InodeRec | undefined {
    const key = `${p.id}/${ino}`;
    let d = this.drafts.get(key);
    if (!d) {
      const live = p.inodes.get(ino);
      if (!live) return undefined;
      d = { ...live, eks: [...live.eks], xattrs: { ...live.xattrs } };
      this.drafts.set(key, d);
    }
    return d;
  }
}

interface StagedOp {
  kind: 'create' | 'delete' | 'update';
  p: number;
  pino: number;
  name: string;
  ino: number;
  type: number;
}

interface TxState {
  id: string;
  tmId: number;
  info: Body;
  deadline: number;
  ops: StagedOp[];
}

const now = (): number => Math.floor(Date.now() / 1000);
const TX_COMMIT = 1;

export class MetaNode {
  private readonly store: MetaStore;
  private readonly server: PacketServer;
  readonly reclaimer: ExtentReclaimer;
  private readonly listenAddr: string;
  private readonly onBrokenLog: ((why: Error) => void) | undefined;
  private address = '';
  private running = false;
  private readonly txs = new Map<string, TxState>();
  /** Dentry key (`pino/name`) -> id of the transaction holding it. */
  private readonly locks = new Map<string, string>();
  private txSeq = Date.now();

  constructor(opts: MetaNodeOptions) {
    this.store = new MetaStore({ dir: opts.dir });
    this.listenAddr = opts.listen ?? '127.0.0.1:0';
    this.onBrokenLog = opts.onBrokenLog;
    this.server = new PacketServer('metanode', (req) => this.handle(req));
    this.reclaimer = new ExtentReclaimer(this.store, opts.reclaimDelayMs !== undefined ? { delayMs: opts.reclaimDelayMs } : {});
  }

  get addr(): string {
    return this.address;
  }

  async start(): Promise<string> {
    if (this.running) return this.address;
    this.store.open();
    const { host, port } = this.listenAddr.endsWith(':0')
      ? { host: this.listenAddr.slice(0, -2), port: 0 }
      : splitAddr(this.listenAddr);
    this.address = await this.server.listen(host, port);
    this.running = true;
    this.reclaimer.start();
    log('listening on %s, %d partitions', this.address, this.store.partitions.size);
    return this.address;
  }

  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    await this.server.close();
    await this.reclaimer.stop();
    await this.store.close();
  }

  private async handle(req: Packet): Promise<Packet> {
    try {
      const out = this.dispatch(req);
      if (out.effects.length) await this.store.commit(out.effects);
      const data = out.body === undefined ? undefined : Buffer.from(JSON.stringify(out.body));
      return newReply(req, Result.Ok, data);
    } catch (e) {
      if (e instanceof Reject) return newReply(req, e.rc, Buffer.from(e.message));
      // No room for the log record: this request fails, nothing changed (write-ahead), the next may succeed.
      if (e instanceof StoreFull) return newReply(req, Result.NoSpace, Buffer.from(e.message));
      if (this.store.broken) this.onBrokenLog?.(this.store.broken);
      log('op 0x%s failed: %s', req.opcode.toString(16), (e as Error).stack);
      return newReply(req, Result.Err, Buffer.from((e as Error).message));
    }
  }

  private dispatch(req: Packet): { body?: unknown; effects: Effect[] } {
    const fx = new Changes();
    const out = this.route(req, fx);
    return { ...(out === undefined ? {} : { body: out }), effects: fx.effects };
  }

  /** The request's reply body (undefined: none); its changes go to `fx`. */
  private route(req: Packet, fx: Changes): unknown {
    const op = req.opcode;
    const b = parseBody(req.data);
    if (op === Op.MetaNodeHeartbeat) return this.heartbeat(b);
    if (op === 0x40) return this.createPartition(b, fx);
    if (op === Op.TxCommit || op === Op.TxRollback) return this.txApply(req, b, fx);
    const p = this.store.partitions.get(req.partitionId);
    if (!p) throw new Reject(Result.Err, `meta partition ${req.partitionId} is not hosted on this metanode`);
    switch (op) {
      case Op.MetaCreateInode: return this.createInode(p, b, fx);
      case Op.MetaUnlinkInode: return this.unlinkInode(p, b, fx);
      case Op.MetaEvictInode: this.evictInode(p, b, fx); return undefined;
      case Op.MetaLinkInode: return this.linkInode(p, b, fx);
      case Op.MetaCreateDentry: this.createDentry(p, b, fx); return undefined;
      case Op.MetaDeleteDentry: return this.deleteDentry(p, b, fx);
      case Op.MetaUpdateDentry: return this.updateDentry(p, b, fx);
      case Op.MetaLookup: return this.lookup(p, b);
      case Op.MetaReadDir: return { children: p.dir(num(b, 'pino'), false)?.list('', 0) ?? [] };
      case Op.MetaReadDirLimit: {
        const d = p.dir(num(b, 'pino'), false);
        return { children: d?.list(str(b, 'marker', ''), num(b, 'limit', 0)) ?? [] };
      }
      case Op.MetaInodeGet: return { info: inodeInfo(this.read(p, num(b, 'ino'))) };
      case Op.MetaBatchInodeGet: {
        const inos = b.inos;
        if (!Array.isArray(inos)) throw new Reject(Result.ArgMismatch, 'inos must be an array');
        const infos = [];
        for (const x of inos) {
          const r = typeof x === 'number' ? p.inodes.get(x) : undefined;
          if (r) infos.push(inodeInfo(touched(r)));
        }
        return { infos };
      }
      case Op.MetaSetattr: this.setattr(p, b, fx); return undefined;
      case Op.MetaTruncate: this.truncate(p, b, fx); return undefined;
      case Op.MetaSetXAttr: {
        const r = this.edit(p, num(b, 'ino'), fx);
        r.xattrs[str(b, 'key')] = str(b, 'val', '');
        fx.push({ k: 'I', p: p.id, v: r });
        return undefined;
      }
      case Op.MetaGetXAttr: {
        const r = this.inode(p, num(b, 'ino'));
        const key = str(b, 'key');
        return { vol: p.vol, pid: p.id, ino: r.ino, key, val: r.xattrs[key] ?? '' };
      }
      case Op.MetaListXAttr: {
        const r = this.inode(p, num(b, 'ino'));
        return { vol: p.vol, pid: p.id, ino: r.ino, xattrs: Object.keys(r.xattrs) };
      }
      case Op.MetaRemoveXAttr: {
        const key = str(b, 'key');
        if (key in this.inode(p, num(b, 'ino')).xattrs) {
          const r = this.edit(p, num(b, 'ino'), fx);
          delete r.xattrs[key];
          fx.push({ k: 'I', p: p.id, v: r });
        }
        return undefined;
      }
      case Op.MetaExtentsList: {
        const r = this.read(p, num(b, 'ino'));
        return { gen: r.gen, sz: r.sz, eks: r.eks.length ? r.eks.map(wireEk) : null, layer: null, Status: 0, leaseExpireTime: 0 };
      }
      case Op.MetaExtentAddWithCheck: this.addExtent(p, b, true, fx); return undefined;
      case Op.MetaExtentsAdd: this.addExtent(p, b, false, fx); return undefined;
      case Op.MetaGetUniqID: {
        const n = num(b, 'num', 1);
        if (n < 1) throw new Reject(Result.ArgMismatch, 'num must be at least 1');
        fx.push({ k: 'C', p: p.id, cursor: p.cursor, uniq: p.uniq + n });
        return { start: p.uniq + 1 };
      }
      case Op.MetaRenewalForbiddenMigration: return undefined;
      case Op.MetaTxCreate: return this.txCreate(p, b);
      case Op.MetaTxCreateDentry: return this.txDentry(p, b, 'create');
      case Op.MetaTxDeleteDentry: return this.txDentry(p, b, 'delete');
      case Op.MetaTxUpdateDentry: return this.txDentry(p, b, 'update');
      default:
        throw new Reject(Result.ArgMismatch, `opcode 0x${op.toString(16)} is not served by this metanode`);
    }
  }

  // --- admin ---

  private createPartition(b: Body, fx: Changes): undefined {
    const id = num(b, 'PartitionID');
    const start = num(b, 'Start');
    const end = num(b, 'End');
    const vol = str(b, 'VolName');
    const members = Array.isArray(b.Members) ? b.Members.map(String) : [];
    if (end <= start) throw new Reject(Result.ArgMismatch, `bad range [${start}, ${end}]`);
    const have = this.store.partitions.get(id);
    if (have) {
      if (have.vol !== vol || have.start !== start) throw new Reject(Result.Exist, `meta partition ${id} exists with another volume or range`);
      return undefined;
    }
    fx.push({ k: 'P', id, vol, start, end, members });
    if (start === 0) {
      const t = now();
      fx.push({ k: 'I', p: id, v: newInode(1, GoMode.Dir + 0o777, 0, 0, null, t) });
      fx.push({ k: 'C', p: id, cursor: 1, uniq: 0 });
    }
    return undefined;
  }

  /** The master's heartbeat: answers partition stats; takes the data partitions it sends (for the reclaimer). */
  private heartbeat(b: Body): unknown {
    const dps = b.DataPartitions;
    if (dps && typeof dps === 'object' && !Array.isArray(dps)) {
      for (const [vol, views] of Object.entries(dps as Record<string, unknown>)) {
        if (Array.isArray(views)) this.reclaimer.setViews(vol, views as DataPartitionView[]);
      }
    }
    const mpIds = b.MetaPartitionIds;
    if (mpIds && typeof mpIds === 'object' && !Array.isArray(mpIds)) {
      for (const [vol, ids] of Object.entries(mpIds as Record<string, unknown>)) {
        if (Array.isArray(ids)) this.reclaimer.setMetaPartitions(vol, ids.map(Number));
      }
    }
    const Partitions = [];
    for (const p of this.store.partitions.values()) {
      let used = 0;
      for (const r of p.inodes.values()) if (isGoRegular(r.mode)) used += r.sz;
      Partitions.push({ PartitionID: p.id, InodeCount: p.inodes.size, DentryCount: p.dentryCount, MaxInodeID: p.cursor, UsedSize: used });
    }
    return { Partitions };
  }

  // --- inodes ---

  private inode(p: MetaPartition, ino: number): InodeRec {
    const r = p.inodes.get(ino);
    if (!r) throw new Reject(Result.NotExist, `inode ${ino} not found in meta partition ${p.id}`);
    return r;
  }

  /** A copy of the inode for `fx` to change (Changes.edit), or NotExist. */
  private edit(p: MetaPartition, ino: number, fx: Changes): InodeRec {
    const r = fx.edit(p, ino);
    if (!r) throw new Reject(Result.NotExist, `inode ${ino} not found in meta partition ${p.id}`);
    return r;
  }

  /** An inode being read: its atime becomes now, in memory, as upstream's getInode does (not logged). */
  private read(p: MetaPartition, ino: number): InodeRec {
    return touched(this.inode(p, ino));
  }

  private createInode(p: MetaPartition, b: Body, fx: Changes): unknown {
    const mode = num(b, 'mode');
    const tgt = b.tgt === null || b.tgt === undefined ? null : str(b, 'tgt');
    if (p.full) throw new Reject(Result.InodeFull, `meta partition ${p.id} has no free inode numbers`);
    const ino = p.cursor + 1;
    const r = newInode(ino, mode, num(b, 'uid', 0), num(b, 'gid', 0), tgt, now());
    fx.push({ k: 'I', p: p.id, v: r }, { k: 'C', p: p.id, cursor: ino, uniq: p.uniq });
    return { info: inodeInfo(r) };
  }

  private unlinkInode(p: MetaPartition, b: Body, fx: Changes): unknown {
    const r = this.edit(p, num(b, 'ino'), fx);
    const uid = num(b, 'uid', 0);
    if (uid !== 0 && p.seenUniq.has(uid)) return { info: inodeInfo(r) };
    if (isGoDir(r.mode)) {
      r.nlink = r.nlink - 1 < 2 ? 0 : r.nlink - 1;
    } else if (r.nlink > 0) {
      r.nlink--;
      // Upstream: a file whose last link goes joins the free list, its atime the delay-delete clock.
      if (r.nlink === 0) r.at = now();
    }
    fx.push({ k: 'I', p: p.id, v: r });
    if (uid !== 0) fx.push({ k: 'U', p: p.id, id: uid });
    return { info: inodeInfo(r) };
  }

  private evictInode(p: MetaPartition, b: Body, fx: Changes): void {
    const r = this.inode(p, num(b, 'ino'));
    if (r.nlink === 0) {
      fx.push({ k: 'i', p: p.id, ino: r.ino });
      this.release(p, r.eks, [], fx);
    }
  }

  /**
   * Extents `before` names and `after` does not go to the garbage. `added` (a key just recorded) takes its
   * extent back out of it: a writer may record a key of an extent another client's truncate released.
   */
  private release(p: MetaPartition, before: ExtentKey[], after: ExtentKey[], fx: Changes, added?: ExtentKey): void {
    const gone = releasedExtents(before, after);
    if (gone.length > 0) fx.push({ k: 'G', p: p.id, eks: gone });
    if (!added) return;
    // Any partition of the volume: the orphan scrubber files what it finds under one of them.
    for (const q of this.store.partitions.values()) {
      if (q.vol !== p.vol || q.garbage.size === 0) continue;
      const back: ExtentKey[] = [];
      if (isTinyExtent(added.ExtentId)) {
        for (const g of q.garbage.values()) if (overlapsInExtent(g, added)) back.push(g);
      } else {
        const whole = q.garbage.get(garbageKey({ ...added, ExtentOffset: 0, Size: 0 }));
        if (whole) back.push(whole);
      }
      if (back.length > 0) fx.push({ k: 'g', p: q.id, eks: back });
    }
  }

  private linkInode(p: MetaPartition, b: Body, fx: Changes): unknown {
    const r = this.edit(p, num(b, 'ino'), fx);
    // A retried LinkInode (its reply was lost) carries the same uniqID and must not count twice.
    const uid = num(b, 'uniqID', 0);
    if (uid !== 0 && p.seenUniq.has(uid)) return { info: inodeInfo(r) };
    if (r.nlink === 0) throw new Reject(Result.NotExist, `inode ${r.ino} is unlinked`);
    r.nlink++;
    fx.push({ k: 'I', p: p.id, v: r });
    if (uid !== 0) fx.push({ k: 'U', p: p.id, id: uid });
    return { info: inodeInfo(r) };
  }

  private setattr(p: MetaPartition, b: Body, fx: Changes): void {
    const r = this.edit(p, num(b, 'ino'), fx);
    const valid = num(b, 'valid', 0);
    // Upstream's Inode.SetAttr: the mode word is replaced whole (type bits too); no time but the given ones.
    if (valid & 1) r.mode = num(b, 'mode');
    if (valid & 2) r.uid = num(b, 'uid');
    if (valid & 4) r.gid = num(b, 'gid');
    if (valid & 8) r.mt = int(b, 'mt');
    if (valid & 16) r.at = int(b, 'at');
    fx.push({ k: 'I', p: p.id, v: r });
  }

  private truncate(p: MetaPartition, b: Body, fx: Changes): void {
    const r = this.edit(p, num(b, 'ino'), fx);
    if (!isGoRegular(r.mode)) throw new Reject(Result.ArgMismatch, `inode ${r.ino} is not a regular file`);
    const sz = num(b, 'sz');
    // Upstream's size is a uint64; this metanode keeps JavaScript numbers, exact below 2^53.
    if (!Number.isSafeInteger(sz)) throw new Reject(Result.ArgMismatch, `size ${sz} is not below 2^53`);
    // Upstream: no extent list yet (nothing ever recorded), so ExtentsTruncate leaves size and times alone.
    if (!hasExtentList(r)) return;
    const eks: ExtentKey[] = [];
    for (const k of r.eks) {
      if (k.FileOffset >= sz) continue;
      if (k.FileOffset + k.Size > sz) eks.push({ ...k, Size: sz - k.FileOffset });
      else eks.push(k);
    }
    this.release(p, r.eks, eks, fx);
    r.eks = eks;
    r.sz = sz;
    r.gen++;
    r.mt = now();
    fx.push({ k: 'I', p: p.id, v: r });
  }

  private addExtent(p: MetaPartition, b: Body, check: boolean, fx: Changes): void {
    const r = this.edit(p, num(b, 'ino'), fx);
    const ek = parseEk(b.ek);
    const dek = check && Array.isArray(b.dek) ? b.dek.map(parseEk) : [];
    if (ek.Size <= 0) throw new Reject(Result.ArgMismatch, 'extent key size must be positive');
    const { eks, removed, clipped } = withExtent(r.eks, ek);
    if (eks !== r.eks) {
      if (dek.length > 0) {
        const match = removed.length === dek.length && removed.every((k, i) => {
          const d = dek[i]!;
          return k.PartitionId === d.PartitionId && k.ExtentId === d.ExtentId && k.ExtentOffset === d.ExtentOffset;
        });
        if (!match) throw new Reject(Result.ConflictExtents, `inode ${r.ino}: discarded extents do not match the stored ones`);
      }
      // Only the keys it touched can lose anything: a normal extent no key names any more, a tiny range.
      this.release(p, [...removed, ...clipped], eks, fx, ek);
      r.eks = eks;
    }
    r.sz = Math.max(r.sz, ek.FileOffset + ek.Size);
    r.extentList = true;
    r.gen++;
    r.mt = now();
    // Logged as the key added, not the whole list: a file of many extents costs the same per write.
    fx.push({ k: 'X', p: p.id, v: r, ek });
  }

  // --- dentries ---

  private parentDir(p: MetaPartition, pino: number): InodeRec {
    const par = p.inodes.get(pino);
    if (!par || par.nlink === 0) throw new Reject(Result.NotExist, `parent inode ${pino} not found in meta partition ${p.id}`);
    if (!isGoDir(par.mode)) throw new Reject(Result.ArgMismatch, `parent inode ${pino} is not a directory`);
    return par;
  }

  private checkUnlocked(pino: number, name: string): void {
    const id = this.locks.get(lockKey(pino, name));
    if (id === undefined) return;
    const tx = this.txs.get(id);
    if (tx && tx.deadline > Date.now()) throw new Reject(Result.TxConflict, `dentry ${pino}/${name} is held by transaction ${id}`);
    if (tx) this.dropTx(tx);
    else this.locks.delete(lockKey(pino, name));
  }

  private createDentry(p: MetaPartition, b: Body, fx: Changes): void {
    const pino = num(b, 'pino');
    const name = dentryName(b);
    const ino = num(b, 'ino');
    const type = num(b, 'mode');
    this.parentDir(p, pino);
    this.checkUnlocked(pino, name);
    const have = p.dir(pino, false)?.get(name);
    if (have) {
      if (have.ino === ino) return;
      throw new Reject(Result.Exist, `dentry ${pino}/${name} exists`);
    }
    this.putDentry(p, this.edit(p, pino, fx), pino, name, ino, type, fx);
  }

  private putDentry(p: MetaPartition, par: InodeRec, pino: number, name: string, ino: number, type: number, fx: Changes): void {
    par.nlink++;
    par.mt = now();
    fx.push({ k: 'D', p: p.id, pino, name, ino, type }, { k: 'I', p: p.id, v: par });
  }

  /** `touch`: the parent's mtime moves (DeleteDentry); a TxDeleteDentry leaves it, as upstream's. */
  private dropDentry(p: MetaPartition, pino: number, name: string, fx: Changes, touch = true): void {
    fx.push({ k: 'd', p: p.id, pino, name });
    const par = fx.edit(p, pino);
    if (par) {
      if (par.nlink > 2) par.nlink--;
      if (touch) par.mt = now();
      fx.push({ k: 'I', p: p.id, v: par });
    }
  }

  private deleteDentry(p: MetaPartition, b: Body, fx: Changes): unknown {
    const pino = num(b, 'pino');
    const name = str(b, 'name');
    const have = p.dir(pino, false)?.get(name);
    if (!have) throw new Reject(Result.NotExist, `dentry ${pino}/${name} not found`);
    this.checkUnlocked(pino, name);
    this.dropDentry(p, pino, name, fx);
    return { ino: have.ino };
  }

  private updateDentry(p: MetaPartition, b: Body, fx: Changes): unknown {
    const pino = num(b, 'pino');
    const name = str(b, 'name');
    const ino = num(b, 'ino');
    const have = p.dir(pino, false)?.get(name);
    if (!have) throw new Reject(Result.NotExist, `dentry ${pino}/${name} not found`);
    this.checkUnlocked(pino, name);
    // Upstream's fsmUpdateDentry swaps the inode and leaves the parent alone.
    fx.push({ k: 'D', p: p.id, pino, name, ino, type: have.type });
    return { ino: have.ino };
  }

  private lookup(p: MetaPartition, b: Body): unknown {
    const pino = num(b, 'pino');
    const name = str(b, 'name');
    const d = p.dir(pino, false)?.get(name);
    if (!d) throw new Reject(Result.NotExist, `dentry ${pino}/${name} not found`);
    return { ino: d.ino, mode: d.type, seq: 0, layerInfo: null };
  }

  // --- transactions ---

  private txCreate(p: MetaPartition, b: Body): unknown {
    const info = b.tx;
    if (!info || typeof info !== 'object' || Array.isArray(info)) throw new Reject(Result.ArgMismatch, 'tx must be an object');
    const tx = info as Body;
    const id = `${p.id}_${++this.txSeq}`;
    const created = now();
    const timeoutMin = typeof tx.Timeout === 'number' && tx.Timeout > 0 ? tx.Timeout : 1;
    const out: Body = { ...tx, TxID: id, TmID: p.id, CreateTime: created, Timeout: timeoutMin, State: 1 };
    const dentries = (tx.TxDentryInfos ?? {}) as Record<string, Body>;
    const dOut: Record<string, Body> = {};
    for (const [k, v] of Object.entries(dentries)) dOut[k] = { ...v, TxID: id, CreateTime: created, Timeout: timeoutMin };
    out.TxDentryInfos = dOut;
    const inodes = (tx.TxInodeInfos ?? {}) as Record<string, Body>;
    const iOut: Record<string, Body> = {};
    for (const [k, v] of Object.entries(inodes)) iOut[k] = { ...v, TxID: id, CreateTime: created, Timeout: timeoutMin };
    out.TxInodeInfos = iOut;
    this.txs.set(id, { id, tmId: p.id, info: out, deadline: Date.now() + timeoutMin * 60_000, ops: [] });
    return { tx: out };
  }

  private liveTx(b: Body): TxState {
    const info = b.tx as Body | undefined;
    const id = info && typeof info === 'object' ? info.TxID : undefined;
    if (typeof id !== 'string' || id === '') throw new Reject(Result.ArgMismatch, 'tx.TxID missing');
    const tx = this.txs.get(id);
    if (!tx) throw new Reject(Result.NotExist, `transaction ${id} not found`);
    if (tx.deadline <= Date.now()) {
      this.dropTx(tx);
      throw new Reject(Result.NotExist, `transaction ${id} expired`);
    }
    return tx;
  }

  private txDentry(p: MetaPartition, b: Body, kind: StagedOp['kind']): unknown {
    const tx = this.liveTx(b);
    const pino = num(b, 'pino');
    const name = dentryName(b);
    const key = lockKey(pino, name);
    const holder = this.locks.get(key);
    if (holder !== undefined && holder !== tx.id) this.checkUnlocked(pino, name);
    const have = p.dir(pino, false)?.get(name);
    let reply: unknown;
    let op: StagedOp;
    if (kind === 'create') {
      this.parentDir(p, pino);
      if (have || tx.ops.some((o) => o.kind === 'create' && o.pino === pino && o.name === name)) {
        throw new Reject(Result.Exist, `dentry ${pino}/${name} exists`);
      }
      op = { kind, p: p.id, pino, name, ino: num(b, 'ino'), type: num(b, 'mode') };
      reply = { tx: tx.info };
    } else {
      if (!have) throw new Reject(Result.NotExist, `dentry ${pino}/${name} not found`);
      const want = kind === 'delete' ? num(b, 'ino', 0) : num(b, 'oldIno', 0);
      if (want !== 0 && want !== have.ino) throw new Reject(Result.NotExist, `dentry ${pino}/${name} points at ${have.ino}, not ${want}`);
      op = { kind, p: p.id, pino, name, ino: kind === 'delete' ? have.ino : num(b, 'ino'), type: have.type };
      reply = { ino: have.ino };
    }
    tx.ops.push(op);
    this.locks.set(key, tx.id);
    return reply;
  }

  private txApply(req: Packet, b: Body, fx: Changes): unknown {
    const id = str(b, 'tx');
    const type = num(b, 'type', TX_COMMIT);
    const tx = this.txs.get(id);
    if (!tx) throw new Reject(Result.NotExist, `transaction ${id} not found`);
    const commit = req.opcode === Op.TxCommit && type === TX_COMMIT;
    if (commit && tx.deadline <= Date.now()) {
      this.dropTx(tx);
      throw new Reject(Result.NotExist, `transaction ${id} expired`);
    }
    if (commit) {
      for (const o of tx.ops) {
        const p = this.store.partitions.get(o.p);
        if (!p) continue;
        if (o.kind === 'delete') {
          this.dropDentry(p, o.pino, o.name, fx, false);
        } else if (o.kind === 'update') {
          fx.push({ k: 'D', p: p.id, pino: o.pino, name: o.name, ino: o.ino, type: o.type });
        } else {
          const par = fx.edit(p, o.pino);
          if (!par) throw new Reject(Result.NotExist, `parent inode ${o.pino} vanished`);
          this.putDentry(p, par, o.pino, o.name, o.ino, o.type, fx);
        }
      }
    }
    this.dropTx(tx);
    return { tx: id, tmid: tx.tmId, type };
  }

  private dropTx(tx: TxState): void {
    this.txs.delete(tx.id);
    for (const o of tx.ops) {
      const k = lockKey(o.pino, o.name);
      if (this.locks.get(k) === tx.id) this.locks.delete(k);
    }
  }
}

// --- helpers ---

function parseBody(data: Buffer): Body {
  if (data.length === 0) return {};
  let v: unknown;
  try {
    v = JSON.parse(data.toString('utf8'));
  } catch (e) {
    throw new Reject(Result.ArgMismatch, `malformed JSON request: ${(e as Error).message}`);
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Reject(Result.ArgMismatch, 'request body must be a JSON object');
  return v as Body;
}

function num(b: Body, key: string, dflt?: number): number {
  const v = b[key];
  if (v === undefined || v === null) {
    if (dflt !== undefined) return dflt;
    throw new Reject(Result.ArgMismatch, `request lacks "${key}"`);
  }
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || Math.floor(v) !== v) {
    throw new Reject(Result.ArgMismatch, `"${key}" must be a non-negative integer`);
  }
  return v;
}

/** A signed integer field (upstream's int64 times: before 1970 is negative). */
function int(b: Body, key: string): number {
  const v = b[key];
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw new Reject(Result.ArgMismatch, `"${key}" must be an integer`);
  return v;
}

function str(b: Body, key: string, dflt?: string): string {
  const v = b[key];
  if (v === undefined || v === null) {
    if (dflt !== undefined) return dflt;
    throw new Reject(Result.ArgMismatch, `request lacks "${key}"`);
  }
  if (typeof v !== 'string') throw new Reject(Result.ArgMismatch, `"${key}" must be a string`);
  return v;
}

function dentryName(b: Body): string {
  const name = str(b, 'name');
  if (name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0') || Buffer.byteLength(name) > 255) {
    throw new Reject(Result.ArgMismatch, `bad dentry name ${JSON.stringify(name)}`);
  }
  return name;
}

/** The inode has had an extent recorded (upstream creates its extent list then). Older logs: any extent. */
function hasExtentList(r: InodeRec): boolean {
  return r.extentList === true || r.eks.length > 0;
}

/** atime := max(atime, now): what upstream's metanode does to every inode it reads. */
function touched(r: InodeRec): InodeRec {
  const t = now();
  if (t > r.at) r.at = t;
  return r;
}

function lockKey(pino: number, name: string): string {
  return `${pino}/${name}`;
}

function parseEk(v: unknown): ExtentKey {
  if (!v || typeof v !== 'object') throw new Reject(Result.ArgMismatch, 'extent key must be an object');
  const o = v as Body;
  return {
    FileOffset: num(o, 'FileOffset'),
    PartitionId: num(o, 'PartitionId'),
    ExtentId: num(o, 'ExtentId'),
    ExtentOffset: num(o, 'ExtentOffset', 0),
    Size: num(o, 'Size'),
    CRC: num(o, 'CRC', 0),
  };
}

function wireEk(k: ExtentKey): ExtentKey {
  return { FileOffset: k.FileOffset, PartitionId: k.PartitionId, ExtentId: k.ExtentId, ExtentOffset: k.ExtentOffset, Size: k.Size, CRC: k.CRC, SnapInfo: null };
}

function newInode(ino: number, mode: number, uid: number, gid: number, tgt: string | null, t: number): InodeRec {
  const dir = isGoDir(mode);
  return {
    ino, mode, uid, gid, tgt,
    nlink: dir ? 2 : 1,
    sz: tgt ? Buffer.from(tgt, 'base64').length : 0,
    gen: 1, mt: t, ct: t, at: t, eks: [], xattrs: {},
  };
}

/** InodeInfo as upstream marshals it. */
function inodeInfo(r: InodeRec): Body {
  return {
    ino: r.ino, mode: r.mode, nlink: r.nlink, sz: r.sz, uid: r.uid, gid: r.gid, gen: r.gen,
    mt: toRfc3339(r.mt), ct: toRfc3339(r.ct), at: toRfc3339(r.at), tgt: r.tgt,
    qifs: null, seq: 0, pat: GO_ZERO_TIME, storageClass: 1, leaseExpireTime: 0, forbiddenLc: false,
    migrationStorageClass: 0, hasMigrationEk: false, mekExpiredTime: '1970-01-01T00:00:00Z', eks: null,
  };
}
