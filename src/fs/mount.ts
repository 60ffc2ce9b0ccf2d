/**
 * Mount a CubeFS volume: connect the SDK (validates master, volume and owner first), build the file system,
 * mount it on our libfuse 3 session. The returned Mount ends when the session ends, from either side
 * (our unmount(), `umount MNT`, a signal), after flushing open files and closing the client.
 */
import { CubeFSClient } from '../sdk/client.js';
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
}

export interface Mount {
  readonly session: FuseSession;
  readonly client: CubeFSClient;
  readonly fs: CubeFileSystem;
  /** Settles when the mount is gone and the client closed. */
  readonly closed: Promise<void>;
  unmount(): Promise<void>;
}

export async function mountVolume(cfg: MountConfig): Promise<Mount> {
  const client = await CubeFSClient.connect({
    masters: cfg.masters, vol: cfg.vol, owner: cfg.owner, ...(cfg.timeoutMs ? { timeoutMs: cfg.timeoutMs } : {}),
  });
  const fs = new CubeFileSystem(client, cfg);
  const options = ['default_permissions', 'auto_unmount'];
  if (cfg.allowOther ?? true) options.push('allow_other');
  if (cfg.readOnly) options.push('ro');
  options.push(...(cfg.fuseOptions ?? []));
  let session: FuseSession;
  try {
    session = await FuseSession.mount(cfg.mountpoint, fs, {
      fsname: cfg.fsname ?? `cubefs-${cfg.vol}`, subtype: 'cubefs', options,
      ...(cfg.workers ? { workers: cfg.workers } : {}),
      // The session's own handler would re-raise the signal before our cleanup (flush, close) has run.
      handleSignals: false,
    });
  } catch (e) {
    await client.close();
    throw e;
  }
  const closed = new Promise<void>((resolve) => {
    session.once('unmounted', () => {
      void fs.shutdown()
        .catch((e: Error) => log('shutdown: %s', e.message))
        .then(() => client.close())
        .then(resolve, resolve);
    });
  });
  log('mounted volume %s at %s', cfg.vol, session.mountpoint);
  const unmount = async (): Promise<void> => {
    await session.unmount();
    await closed;
  };
  if (cfg.handleSignals ?? true) endOnSignals(unmount, closed);
  return { session, client, fs, closed, unmount };
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
