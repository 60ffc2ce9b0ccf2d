/**
 * Deleting the extents no inode refers to any more (upstream's metanode does the same from its free list):
 * every released extent (a 'G' record in a meta partition's garbage, see meta-store.ts) is sent as
 * MarkDelete to its data partition's leader, which deletes it on the followers too; once the leader
 * answers Ok (or NotExist: already gone), a 'g' record drops it from the garbage.
 *
 * An extent goes only `delayMs` after this metanode saw it released (after a restart: after it started),
 * so a client still reading through keys it cached a moment ago, or a writer whose extent another client
 * just truncated away, meets the data rather than NotExist; a key recorded again meanwhile takes the
 * extent back out of the garbage (metanode addExtent).
 *
 * Where the data partitions are: the master sends its view with every heartbeat (setViews); a partition
 * not in the view yet waits for the next round.
 *
 * Orphans: a client killed after its data reached the datanodes but before the extent key was recorded
 * leaves an extent no inode names. Every `orphanScanMs` the scrubber asks every replica of each data
 * partition for its normal extents (GetAllWatermarks) and files those no inode and no garbage entry names,
 * and not written for `orphanGraceMs` (a live writer records its keys every few seconds: FileStream's
 * flushInterval), as garbage of the volume, so they go the same way as released extents, after the same
 * delay, and a key recorded meanwhile still takes them back. Only for a volume whose meta partitions are
 * all on this metanode (the embedded cluster): a partial view would call every other partition's extents
 * orphans. Tiny extents are shared and are not scrubbed.
 */
import { ExtentType, newPacket, Op, Result, type DataPartitionView, type ExtentKey } from '../proto/index.js';
import { nextReqId } from '../transport/reqid.js';
import { ConnPool } from '../transport/tcp.js';
import { followerArg, remainingFollowers } from '../data/partitions.js';
import { logger, notice } from '../util/log.js';
import { isTinyExtent } from './extent-store.js';
import { garbageKey, type MetaStore } from './meta-store.js';

const log = logger('metanode:reclaim');

export const DEFAULT_RECLAIM_DELAY_MS = 10_000;
export const DEFAULT_ORPHAN_SCAN_MS = 10 * 60_000;
export const DEFAULT_ORPHAN_GRACE_MS = 30 * 60_000;
/** MarkDeletes in flight at once. */
const CONCURRENCY = 8;

export interface ReclaimerOptions {
  /** How long a released extent waits before it is deleted (default 10 s; env CUBEFS_RECLAIM_DELAY_MS). */
  delayMs?: number;
  /** How often the datanodes are asked for orphaned extents (default 10 min; env CUBEFS_ORPHAN_SCAN_MS; 0: never). */
  orphanScanMs?: number;
  /** An extent written to this recently is never an orphan (default 30 min; env CUBEFS_ORPHAN_GRACE_MS). */
  orphanGraceMs?: number;
}

function envMs(name: string): number | undefined {
  const v = Number(process.env[name]);
  return process.env[name] !== undefined && Number.isFinite(v) && v >= 0 ? v : undefined;
}

export class ExtentReclaimer {
  private readonly delayMs: number;
  private readonly tickMs: number;
  private readonly views = new Map<string, Map<number, DataPartitionView>>();
  /** Each volume's meta partition ids, as the master last said. */
  private readonly metaPartitions = new Map<string, number[]>();
  private readonly orphanScanMs: number;
  private readonly orphanGraceMs: number;
  private scanTimer: NodeJS.Timeout | null = null;
  private scan: Promise<void> | null = null;
  /** Orphaned extents filed as garbage since start. */
  orphans = 0;
  /** garbageKey -> when it may go (ms since epoch), set when first seen. */
  private readonly due = new Map<string, number>();
  private readonly pool = new ConnPool(1, 10_000);
  private timer: NodeJS.Timeout | null = null;
  private round: Promise<void> | null = null;
  /** MarkDeletes answered Ok or NotExist since start. */
  deleted = 0;

  constructor(private readonly store: MetaStore, opts: ReclaimerOptions = {}) {
    const env = Number(process.env.CUBEFS_RECLAIM_DELAY_MS);
    this.delayMs = opts.delayMs ?? (Number.isFinite(env) && env >= 0 ? env : DEFAULT_RECLAIM_DELAY_MS);
    this.tickMs = Math.max(100, Math.min(1_000, this.delayMs));
    this.orphanScanMs = opts.orphanScanMs ?? envMs('CUBEFS_ORPHAN_SCAN_MS') ?? DEFAULT_ORPHAN_SCAN_MS;
    this.orphanGraceMs = opts.orphanGraceMs ?? envMs('CUBEFS_ORPHAN_GRACE_MS') ?? DEFAULT_ORPHAN_GRACE_MS;
  }

  setMetaPartitions(vol: string, ids: number[]): void {
    this.metaPartitions.set(vol, ids);
  }

  /** The master's data partitions of `vol` (from its heartbeat). */
  setViews(vol: string, views: DataPartitionView[]): void {
    this.views.set(vol, new Map(views.map((v) => [v.PartitionID, v])));
  }

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => {
      this.round ??= this.reclaimRound().finally(() => { this.round = null; });
    }, this.tickMs);
    this.timer.unref();
    if (this.orphanScanMs > 0) {
      this.scanTimer = setInterval(() => {
        this.scan ??= this.scanOrphans().then(() => undefined, (e: Error) => log('orphan scan: %s', e.message)).finally(() => { this.scan = null; });
      }, this.orphanScanMs);
      this.scanTimer.unref();
    }
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    if (this.scanTimer) clearInterval(this.scanTimer);
    this.timer = null;
    this.scanTimer = null;
    await Promise.all([this.round, this.scan]);
    this.pool.close();
  }

  /** One look for orphaned normal extents in every volume this metanode holds whole (see the top). */
  async scanOrphans(): Promise<number> {
    let filed = 0;
    for (const [vol, views] of this.views) {
      const ids = this.metaPartitions.get(vol);
      const mine = [...this.store.partitions.values()].filter((p) => p.vol === vol);
      if (!ids || ids.length === 0 || !ids.every((id) => mine.some((p) => p.id === id))) continue;
      // Every replica's list: an extent may be left on a follower alone (its leader's copy deleted, or never
      // made). Its newest write on any replica is what the grace is counted from.
      const listed = new Map<string, { pid: number; id: number; mtimeMs: number }>();
      for (const view of views.values()) {
        for (const host of view.Hosts) {
          try {
            const req = newPacket({ opcode: Op.GetAllWatermarks, partitionId: view.PartitionID, extentType: ExtentType.Normal, reqId: nextReqId() });
            const reply = await this.pool.request(host, req, { timeoutMs: 10_000 });
            if (reply.resultCode !== Result.Ok) throw new Error(`result 0x${reply.resultCode.toString(16)} ${reply.data.toString('utf8')}`);
            const list = JSON.parse(reply.data.toString('utf8')) as { fileId: number; modTime: number }[];
            for (const e of list) {
              const id = Number(e.fileId), mtimeMs = Number(e.modTime) * 1000;
              const key = `${view.PartitionID}/${id}`;
              const had = listed.get(key);
              if (!had || had.mtimeMs < mtimeMs) listed.set(key, { pid: view.PartitionID, id, mtimeMs });
            }
          } catch (e) {
            log('orphan scan: extents of data partition %d on %s: %s', view.PartitionID, host, (e as Error).message);
          }
        }
      }
      // From here to the commit nothing awaits: what is referenced cannot change in between.
      const live = new Set<string>();
      for (const p of mine) {
        for (const r of p.inodes.values()) for (const k of r.eks) live.add(`${k.PartitionId}/${k.ExtentId}`);
        for (const k of p.garbage.values()) live.add(`${k.PartitionId}/${k.ExtentId}`);
      }
      const old = Date.now() - this.orphanGraceMs;
      const found: ExtentKey[] = [...listed.values()]
        .filter((e) => !isTinyExtent(e.id) && e.mtimeMs <= old && !live.has(`${e.pid}/${e.id}`))
        .map((e) => ({ FileOffset: 0, PartitionId: e.pid, ExtentId: e.id, ExtentOffset: 0, Size: 0, CRC: 0 }));
      if (found.length === 0) continue;
      await this.store.commit([{ k: 'G', p: mine[0]!.id, eks: found }]);
      filed += found.length;
      notice('metanode', `volume ${vol}: ${found.length} extents no file refers to (left by a client that stopped before recording them) go back to free space`);
    }
    this.orphans += filed;
    return filed;
  }

  /** One pass over every partition's garbage: delete what is due, record what went. */
  private async reclaimRound(): Promise<void> {
    const now = Date.now();
    const jobs: { p: number; ek: ExtentKey; view: DataPartitionView }[] = [];
    const known = new Set<string>();
    for (const p of this.store.partitions.values()) {
      for (const [key, ek] of p.garbage) {
        known.add(key);
        let due = this.due.get(key);
        if (due === undefined) this.due.set(key, (due = now + this.delayMs));
        if (due > now) continue;
        const view = this.views.get(p.vol)?.get(ek.PartitionId);
        if (view && view.Hosts.length > 0) jobs.push({ p: p.id, ek, view });
      }
    }
    for (const key of this.due.keys()) if (!known.has(key)) this.due.delete(key); // taken back, or gone
    if (jobs.length === 0) return;
    const gone = new Map<number, ExtentKey[]>();
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < jobs.length) {
        const j = jobs[next++]!;
        // recorded again since the round began (addExtent took it back): it stays
        if (!this.store.partitions.get(j.p)?.garbage.has(garbageKey(j.ek))) continue;
        if (await this.markDelete(j.ek, j.view)) {
          const list = gone.get(j.p) ?? [];
          list.push(j.ek);
          gone.set(j.p, list);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(CONCURRENCY, jobs.length) }, worker));
    if (gone.size === 0) return;
    await this.store.commit([...gone].map(([p, eks]) => ({ k: 'g' as const, p, eks })));
    for (const eks of gone.values()) {
      this.deleted += eks.length;
      for (const k of eks) this.due.delete(garbageKey(k));
    }
  }

  /** True when the extent is gone on the partition (Ok, or NotExist); false: try again next round. */
  private async markDelete(ek: ExtentKey, view: DataPartitionView): Promise<boolean> {
    const tiny = isTinyExtent(ek.ExtentId);
    const req = newPacket({
      opcode: Op.MarkDelete, partitionId: ek.PartitionId, extentId: ek.ExtentId, extentOffset: ek.ExtentOffset,
      reqId: nextReqId(), arg: followerArg(view), remainingFollowers: remainingFollowers(view),
      // a tiny extent is shared: only this key's range goes (upstream sends the key as JSON)
      ...(tiny ? { data: Buffer.from(JSON.stringify({ ExtentOffset: ek.ExtentOffset, Size: ek.Size })) } : {}),
    });
    try {
      const reply = await this.pool.request(view.Hosts[0]!, req, { timeoutMs: 10_000 });
      if (reply.resultCode === Result.Ok || reply.resultCode === Result.NotExist) return true;
      log('MarkDelete of extent %d/%d on %s: result 0x%s %s', ek.PartitionId, ek.ExtentId, view.Hosts[0], reply.resultCode.toString(16), reply.data.toString('utf8'));
    } catch (e) {
      log('MarkDelete of extent %d/%d on %s: %s', ek.PartitionId, ek.ExtentId, view.Hosts[0], (e as Error).message);
    }
    return false;
  }
}

/**
 * The extents `before` refers to and `after` does not: each normal extent no key of `after` names (one key
 * for the whole extent), and each range of a tiny extent that a key of `before` covers and no key of `after`
 * does (tiny extents are shared between files, so only ranges go: a key cut by a truncate gives back its
 * tail, a key split by a write over its middle gives back the middle).
 */
export function releasedExtents(before: ExtentKey[], after: ExtentKey[]): ExtentKey[] {
  if (before.length === 0) return [];
  const live = new Set<string>();
  const tinyLive = new Map<string, { s: number; e: number }[]>();
  for (const a of after) {
    const id = `${a.PartitionId}/${a.ExtentId}`;
    if (!isTinyExtent(a.ExtentId)) live.add(id);
    else {
      let l = tinyLive.get(id);
      if (!l) tinyLive.set(id, (l = []));
      l.push({ s: a.ExtentOffset, e: a.ExtentOffset + a.Size });
    }
  }
  const out: ExtentKey[] = [];
  const seen = new Set<string>();
  for (const k of before) {
    const id = `${k.PartitionId}/${k.ExtentId}`;
    if (isTinyExtent(k.ExtentId)) {
      for (const r of uncovered(k.ExtentOffset, k.ExtentOffset + k.Size, tinyLive.get(id) ?? [])) {
        out.push({ ...k, FileOffset: 0, ExtentOffset: r.s, Size: r.e - r.s });
      }
    } else if (!live.has(id) && !seen.has(id)) {
      seen.add(id);
      out.push({ ...k, FileOffset: 0, ExtentOffset: 0, Size: 0 });
    }
  }
  return out;
}

/** The parts of [s, e) that none of `ranges` covers, in order. */
function uncovered(s: number, e: number, ranges: { s: number; e: number }[]): { s: number; e: number }[] {
  const over = ranges.filter((r) => r.s < e && s < r.e).sort((a, b) => a.s - b.s);
  const out: { s: number; e: number }[] = [];
  let at = s;
  for (const r of over) {
    if (r.s > at) out.push({ s: at, e: r.s });
    at = Math.max(at, r.e);
  }
  if (at < e) out.push({ s: at, e });
  return out;
}

/** Both keys name bytes of the same extent that overlap. */
export function overlapsInExtent(a: ExtentKey, b: ExtentKey): boolean {
  return a.PartitionId === b.PartitionId && a.ExtentId === b.ExtentId &&
    a.ExtentOffset < b.ExtentOffset + b.Size && b.ExtentOffset < a.ExtentOffset + a.Size;
}
