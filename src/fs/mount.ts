/**
 * Mount a CubeFS volume: connect the SDK (validates master, volume and owner first), build the file system,
 * mount it on our libfuse 3 session. The returned Mount ends when the session ends, from either side
 * (our unmount(), `umount MNT`, a signal), after flushing open files and closing the client.
 */
import { execFile } from 'node:child_process';
import { CubeFSClient } from '../sdk/client.js';
import type { RdmaMode } from '../data/rdma.js';
import { Pool, type PoolStats } from '../pool/index.js';
import { rdmaDevices } from '../transport/rdma.js';
import { FuseSession } from '../fuse/session.js';
import { logger } from '../util/log.js';
import { CubeFileSystem, type FsOptions } from './filesystem.js';

const log = logger('mount');

export interface MountConfig extends FsOptions {
  masters: string | string[];
  vol: string;
  owner: string;
  mountpoint: string;
  /** Let users other than the mounter in (upstream mounts with allow_other). Default true. */
  allowOther?: boolean;
  /** Further FUSE -o options (noatime, nosuid, ...). */
  fuseOptions?: string[];
  /** Native FUSE worker threads. */
  workers?: number;
  /**
   * Unmount on SIGINT/SIGTERM, flush open files and close the client, then let the signal end the process
   * (default true). A program with its own signal handling passes false and calls unmount().
   */
  handleSignals?: boolean;
  /** The mount's source in /proc/mounts (default "cubefs-VOL"; mount(8) passes the fstab source). */
  fsname?: string;
  /** Request deadline, ms. */
  timeoutMs?: number;
  /** How long a data read or write keeps retrying before the application gets EIO, ms (default 60 s). */
  retryBudgetMs?: number;
  /** Data path to the datanodes: 'auto', 'on' (RDMA required) or 'off' (default): see ClientOptions.rdma. */
  rdma?: RdmaMode;
  /** The datanodes' RDMA port (default 17360) or 'same' (their TCP port number: the embedded cluster). */
  rdmaPort?: number | 'same';
  /**
   * MiB of registered memory (default 256) shared by the FUSE receive buffers and the RDMA payloads, so a
   * write's payload goes to the datanode by descriptor, with no copy. Only when RDMA is used.
   */
  rdmaPoolMB?: number;
  /**
   * FUSE writeback cache (default false): the kernel buffers small writes in the page cache and sends them
   * as large asynchronous WRITEs (up to 1 MiB, several in flight) instead of one replicated write per
   * write(2); close(2), fsync(2), setattr and our unmount still wait for the replicas. Off by default
   * because the kernel then trusts its own i_size and mtime for every cached regular file and ignores
   * getattr's: a file another client (or another mount) grows keeps its old size here until the inode
   * leaves the kernel's cache. Fine for a volume only this mount writes.
   */
  writebackCache?: boolean;
  /**
   * Write-behind (default true): buffered writes of up to 128 KiB are gathered in the client and sent as runs
   * of up to 1 MiB; close, fsync and flush wait for the replicas as always (FileStream). Unlike the
   * writeback cache it keeps other clients' view of size and mtime exact.
   */
  writeBehind?: boolean;
  /** Transport notes ("no RDMA device: using TCP", per-datanode fallbacks); default the debug log. */
  onWarning?: (msg: string) => void;
  /** Reads from any replica (StreamFollowerRead), upstream's followerRead; also on when the volume has it. */
  followerRead?: boolean;
  /** With followerRead, the nearest replica first (upstream's nearRead). */
  nearRead?: boolean;
  /** How often a file being written has its extent keys recorded besides fsync and close, ms (default 2000; 0: never). */
  flushIntervalMs?: number;
}

export interface Mount {
  readonly session: FuseSession;
  readonly client: CubeFSClient;
  readonly fs: CubeFileSystem;
  /** Settles when the mount is gone and the client closed. */
  readonly closed: Promise<void>;
  unmount(): Promise<void>;
  /** The registered pool's counters (null without RDMA); after the end, as they were just before it closed. */
  poolStats(): PoolStats | null;
}

export async function mountVolume(cfg: MountConfig): Promise<Mount> {
  // One registered pool for FUSE receive buffers and RDMA payloads, when RDMA may be used ('on' without a
  // device fails in connect, with the pool closed again).
  const mode = cfg.rdma ?? 'off';
  const pool = mode === 'on' || (mode === 'auto' && rdmaDevices().length > 0)
    ? new Pool({ capacity: (cfg.rdmaPoolMB ?? 256) * 1024 * 1024 })
    : null;
  let client: CubeFSClient;
  try {
    client = await CubeFSClient.connect({
      masters: cfg.masters, vol: cfg.vol, owner: cfg.owner, ...(cfg.timeoutMs ? { timeoutMs: cfg.timeoutMs } : {}),
      ...(cfg.retryBudgetMs ? { retryBudgetMs: cfg.retryBudgetMs } : {}),
      rdma: mode, ...(cfg.rdmaPort !== undefined ? { rdmaPort: cfg.rdmaPort } : {}),
      ...(pool ? { rdmaPool: pool } : {}), ...(cfg.onWarning ? { onWarning: cfg.onWarning } : {}),
      ...(cfg.followerRead !== undefined ? { followerRead: cfg.followerRead } : {}),
      ...(cfg.nearRead !== undefined ? { nearRead: cfg.nearRead } : {}),
      ...(cfg.flushIntervalMs !== undefined ? { flushIntervalMs: cfg.flushIntervalMs } : {}),
    });
  } catch (e) {
    pool?.close();
    throw e;
  }
  // 'auto' may have settled on TCP (no device usable): the pool then only serves FUSE, which is fine.
  const fusePool = client.data.core.rdma ? pool : null;
  const writebackCache = cfg.writebackCache ?? false;
  const fs = new CubeFileSystem(client, { ...cfg, writebackCache });
  const options = ['default_permissions', 'auto_unmount'];
  if (cfg.allowOther ?? true) options.push('allow_other');
  if (cfg.readOnly) options.push('ro');
  options.push(...(cfg.fuseOptions ?? []));
  let session: FuseSession;
  try {
    session = await FuseSession.mount(cfg.mountpoint, fs, {
      fsname: cfg.fsname ?? `cubefs-${cfg.vol}`, subtype: 'cubefs', options,
      ...(cfg.workers ? { workers: cfg.workers } : {}),
      ...(fusePool ? { pool: fusePool } : {}),
      writebackCache,
      // The session's own handler would re-raise the signal before our cleanup (flush, close) has run.
      handleSignals: false,
    });
  } catch (e) {
    await client.close();
    pool?.close();
    throw e;
  }
  let finalStats: PoolStats | null = null;
  const closed = new Promise<void>((resolve) => {
    session.once('unmounted', () => {
      void fs.shutdown()
        .catch((e: Error) => log('shutdown: %s', e.message))
        // shutdown already waited (a bounded time) for the open files: what is left is not waited for again.
        .then(() => client.close({ waitMs: 1000 }))
        .then(() => {
          if (pool) finalStats = pool.stats();
          pool?.close();
        })
        .then(resolve, resolve);
    });
  });
  log('mounted volume %s at %s', cfg.vol, session.mountpoint);
  const unmount = async (): Promise<void> => {
    // With the writeback cache, data written but not yet closed or fsynced may still be dirty pages in the
    // kernel. A plain umount syncs the superblock before it lets go, but ours is lazy when files are open,
    // and once this session closes /dev/fuse those pages are lost: have the kernel write them back first,
    // while we still serve the WRITEs (from another process: syncfs blocks until they are answered).
    if (writebackCache && !session.closed) await syncMount(session.mountpoint);
    await session.unmount();
    await closed;
  };
  if (cfg.handleSignals ?? true) endOnSignals(unmount, closed);
  const poolStats = (): PoolStats | null => finalStats ?? (pool && !pool.closed ? pool.stats() : null);
  return { session, client, fs, closed, unmount, poolStats };
}

/** syncfs(2) on the mount, from a child (`sync -f`): this process must keep answering the WRITEs meanwhile. */
function syncMount(mountpoint: string): Promise<void> {
  return new Promise((resolve) => {
    execFile('sync', ['-f', mountpoint], { timeout: 120_000 }, (e) => {
      if (e) log('sync -f %s before unmount: %s', mountpoint, e.message);
      resolve();
    });
  });
}

/** SIGINT/SIGTERM: unmount and clean up first, then end the process by that signal. */
function endOnSignals(unmount: () => Promise<void>, closed: Promise<void>): void {
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM'];
  const onSignal = (sig: NodeJS.Signals): void => {
    for (const s of signals) process.off(s, onSignal);
    void unmount().finally(() => {
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    });
  };
  for (const s of signals) process.on(s, onSignal);
  void closed.then(() => { for (const s of signals) process.off(s, onSignal); });
}
