/**
 * The client's view of one volume: its meta and data partitions as the master last reported them.
 *
 * open() asks /client/vol first (that checks the owner and that the volume exists), then the partition
 * lists, then /admin/getVol for the transaction mask (a master without it, or refusing it, means no
 * transactions). The view is replaced whole on each refresh, so a caller holding an old array keeps a
 * consistent snapshot. At most one refresh is in flight; concurrent callers share it. A failed refresh
 * keeps the old view. A periodic refresh runs every refreshMs on an unref'd timer until close().
 */
import type { DataPartitionView, MetaPartitionView, VolStat } from '../proto/types.js';
import { CubeFSError, ErrorCode } from '../util/errors.js';
import { logger } from '../util/log.js';
import type { MasterClient } from './client.js';

const log = logger('volume');

export const DEFAULT_REFRESH_MS = 60_000;

export interface VolumeOptions {
  /** Period of the background refresh in ms (default 60 s); 0 turns it off. */
  refreshMs?: number;
}

export class Volume {
  readonly master: MasterClient;
  readonly name: string;
  readonly owner: string;
  /** The volume renames through transactions (EnableTransactionV1 contains "rename"). */
  txRename = false;
  /** The master marks the whole volume read-only. */
  volReadOnly = false;
  /** The volume has follower read on (VolView.FollowerRead): reads may go to any replica. */
  followerRead = false;
  private mps: MetaPartitionView[] = [];
  private dps: DataPartitionView[] = [];
  private inflight: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;

  private constructor(master: MasterClient, name: string, owner: string) {
    this.master = master;
    this.name = name;
    this.owner = owner;
  }

  static async open(master: MasterClient, name: string, owner: string, opts: VolumeOptions = {}): Promise<Volume> {
    const v = new Volume(master, name, owner);
    const view = await master.getVolume(name, owner);
    v.mps = sortMps(view.MetaPartitions);
    v.followerRead = view.FollowerRead === true;
    await v.load();
    try {
      const admin = await master.getVolumeAdmin(name);
      const mask = admin.EnableTransactionV1;
      v.txRename = typeof mask === 'string' && mask.split('|').some((m) => m.trim() === 'rename' || m.trim() === 'all');
    } catch (e) {
      if (e instanceof CubeFSError && e.code === ErrorCode.MasterUnreachable) throw e;
      log('%s: /admin/getVol unavailable (%s): no transactions', name, (e as Error).message);
    }
    const every = opts.refreshMs ?? DEFAULT_REFRESH_MS;
    if (every > 0) {
      v.timer = setInterval(() => {
        v.refresh().catch((e: Error) => log('%s: periodic refresh failed: %s', name, e.message));
      }, every);
      v.timer.unref();
    }
    return v;
  }

  /** Meta partitions sorted by Start. The array is replaced, never mutated, on refresh. */
  metaPartitions(): MetaPartitionView[] {
    return this.mps;
  }

  dataPartitions(): DataPartitionView[] {
    return this.dps;
  }

  /**
   * Fetch the partition lists again. Resolves when the new view is in place; rejects with the master's
   * error (the old view stays). Callers arriving while one is running share it.
   */
  refresh(): Promise<void> {
    if (this.closed) return Promise.reject(new CubeFSError(ErrorCode.Closed, `volume "${this.name}" is closed`));
    if (!this.inflight) {
      this.inflight = this.load().finally(() => {
        this.inflight = null;
      });
    }
    return this.inflight;
  }

  stat(): Promise<VolStat> {
    return this.master.getVolStat(this.name);
  }

  /** Stop the periodic refresh. Idempotent. The master client is the caller's to close. */
  close(): void {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private async load(): Promise<void> {
    const [mps, dpv] = await Promise.all([this.master.getMetaPartitions(this.name), this.master.getDataPartitions(this.name)]);
    this.mps = sortMps(mps);
    this.dps = [...dpv.DataPartitions].sort((a, b) => a.PartitionID - b.PartitionID);
    this.volReadOnly = dpv.VolReadOnly === true;
  }
}

function sortMps(mps: MetaPartitionView[]): MetaPartitionView[] {
  return [...mps].sort((a, b) => a.Start - b.Start);
}
