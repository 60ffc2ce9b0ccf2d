/**
 * Mounting from the command line.
 *
 * Foreground (`-f`): this process mounts (mountVolume) and serves until the mount goes away: SIGINT, SIGTERM
 * or SIGHUP unmount it, open files are flushed, the client closes, exit 0; an unmount from outside
 * (`umount MNT`, `cubefs-mount umount MNT`) ends it the same way. Logs go to stderr.
 *
 * Background (the default): the parent checks the settings, starts the foreground mount as a detached child
 * logging to LOGDIR/VOL.log, waits for its word over IPC, prints where the volume is mounted and how to
 * unmount it, and exits 0; or prints the child's one-line failure and exits 1.
 *
 * A serving mount keeps a state file (RUNDIR/<mountpoint>.json: pid, volume, log) so `cubefs-mount umount`
 * can wait for the daemon to finish after the kernel let go.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import createDebug from 'debug';
import { mountVolume, type Mount } from '../fs/mount.js';
import { mountedAt } from '../fuse/session.js';
import { logger } from '../util/log.js';
import { makeDirs } from '../util/dirs.js';
import { CliError, debugNamespaces, logFileOf, OWNER_ENV, settingsToArgv, type MountSettings } from './config.js';
import { alive, hasParentChannel, notifyParent, spawnDaemon, waitGone } from './daemon.js';

const log = logger('cli');
const run = promisify(execFile);

/** Where serving mounts leave their state files. */
export function runDir(): string {
  if (process.env.CUBEFS_MOUNT_RUN_DIR) return process.env.CUBEFS_MOUNT_RUN_DIR;
  return process.getuid?.() === 0 ? '/run/cubefs-mount' : path.join(os.tmpdir(), `cubefs-mount-${process.getuid?.() ?? 'user'}`);
}

function stateFile(mountpoint: string): string {
  return path.join(runDir(), `${encodeURIComponent(mountpoint)}.json`);
}

export interface MountState {
  pid: number;
  mountpoint: string;
  vol: string;
  masters: string[];
  log: string | null;
}

export function readState(mountpoint: string): MountState | null {
  try {
    const st = JSON.parse(fs.readFileSync(stateFile(mountpoint), 'utf8')) as MountState;
    return alive(st.pid) ? st : null;
  } catch {
    return null;
  }
}

/** Turns on DEBUG namespaces for a config logLevel when the environment did not choose. */
export function applyLogLevel(s: MountSettings): void {
  if (process.env.DEBUG !== undefined || s.logLevel === undefined) return;
  const ns = debugNamespaces(s.logLevel);
  if (ns) createDebug.enable(ns);
}

/** One line, whatever the error carried. */
export function oneLine(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  return msg.replace(/\s*\n\s*/g, ' ').trim();
}

function stamp(msg: string): string {
  return `${new Date().toISOString()} cubefs-mount[${process.pid}] ${msg}\n`;
}

function mountedMessage(s: MountSettings, pid: number, logFile: string | null): string {
  return `mounted CubeFS volume "${s.vol}" (master ${s.masters.join(',')}) at ${s.mountpoint}\n`
    + `  process: ${pid}${logFile ? `, log: ${logFile}` : ''}\n`
    + `  unmount: cubefs-mount umount ${s.mountpoint}   (or: umount ${s.mountpoint})\n`;
}

/**
 * Mounts in this process and serves until the mount ends. With an IPC parent (background mode) the parent
 * hears "ready" or the failure; otherwise the result is printed. Resolves to the exit status.
 */
export async function runForeground(s: MountSettings): Promise<number> {
  applyLogLevel(s);
  const background = hasParentChannel();
  const logFile = background ? logFileOf(s) : null;
  let m: Mount;
  try {
    m = await mountVolume({
      masters: s.masters, vol: s.vol, owner: s.owner, mountpoint: s.mountpoint,
      readOnly: s.readOnly, fuseOptions: s.fuseOptions, handleSignals: false,
      ...(s.attrValid !== undefined ? { attrValid: s.attrValid } : {}),
      ...(s.lookupValid !== undefined ? { lookupValid: s.lookupValid } : {}),
      ...(s.fsyncOnClose !== undefined ? { fsyncOnClose: s.fsyncOnClose } : {}),
      ...(s.writecache !== undefined ? { writebackCache: s.writecache } : {}),
      ...(s.writeBehind !== undefined ? { writeBehind: s.writeBehind } : {}),
      ...(s.followerRead !== undefined ? { followerRead: s.followerRead } : {}),
      ...(s.nearRead !== undefined ? { nearRead: s.nearRead } : {}),
      ...(s.flushInterval !== undefined ? { flushIntervalMs: s.flushInterval * 1000 } : {}),
      rdma: s.rdma ?? 'auto',
      ...(s.rdmaPort !== undefined ? { rdmaPort: s.rdmaPort } : {}),
      ...(s.rdmaPoolMB !== undefined ? { rdmaPoolMB: s.rdmaPoolMB } : {}),
      onWarning: (msg: string) => process.stderr.write(stamp(msg)),
    });
  } catch (e) {
    const msg = oneLine(e);
    process.stderr.write(stamp(`mount failed: ${msg}`));
    await notifyParent({ ready: false, message: msg });
    return 1;
  }
  const mp = m.session.mountpoint;
  const st = stateFile(mp);
  try {
    makeDirs(runDir());
    const state: MountState = { pid: process.pid, mountpoint: mp, vol: s.vol, masters: s.masters, log: logFile };
    fs.writeFileSync(st, JSON.stringify(state));
  } catch (e) {
    log('state file %s: %s', st, (e as Error).message);
  }
  let signalled: NodeJS.Signals | null = null;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (signalled) return;
    signalled = sig;
    process.stderr.write(stamp(`${sig}: unmounting ${mp}`));
    void m.unmount().catch((e: Error) => process.stderr.write(stamp(`unmount: ${oneLine(e)}`)));
  };
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const sig of signals) process.on(sig, onSignal);

  process.stderr.write(stamp(`mounted volume ${s.vol} (master ${s.masters.join(',')}) at ${mp}`));
  if (background) await notifyParent({ ready: true, pid: process.pid, mountpoint: mp, log: logFile });
  else process.stdout.write(mountedMessage({ ...s, mountpoint: mp }, process.pid, null) + '  serving in the foreground: Ctrl-C unmounts\n');

  await m.closed;
  for (const sig of signals) process.off(sig, onSignal);
  try {
    const cur = JSON.parse(fs.readFileSync(st, 'utf8')) as MountState;
    if (cur.pid === process.pid) fs.rmSync(st, { force: true });
  } catch { /* already gone */ }
  process.stderr.write(stamp(`unmounted ${mp}${signalled ? ` (${signalled})` : ''}`));
  return 0;
}

/** Starts the foreground mount as a detached child and reports its outcome. Resolves to the child's pid. */
export async function runBackground(s: MountSettings, opts: { quiet?: boolean } = {}): Promise<number> {
  // The mountpoint errors a user makes most are cheap to catch here, before a process starts.
  checkMountpointShape(s.mountpoint);
  const logFile = logFileOf(s);
  const d = await spawnDaemon([...settingsToArgv(s), '--foreground'], logFile, `the mount of ${s.vol} at ${s.mountpoint}`,
    undefined, { [OWNER_ENV]: s.owner });
  const mp = typeof d.message.mountpoint === 'string' ? d.message.mountpoint : s.mountpoint;
  if (!opts.quiet) process.stdout.write(mountedMessage({ ...s, mountpoint: mp }, d.pid, logFile));
  return d.pid;
}

function checkMountpointShape(mp: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(mp);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new CliError(`mountpoint ${mp} does not exist (create it: mkdir -p ${mp})`);
    if (code === 'ENOTDIR') throw new CliError(`mountpoint ${mp} is not a directory`);
    if (code === 'ENOTCONN') throw new CliError(`mountpoint ${mp} is a stale FUSE mount (its process is gone): run umount -l ${mp}`);
    throw new CliError(`mountpoint ${mp}: ${oneLine(e)}`);
  }
  if (!st.isDirectory()) throw new CliError(`mountpoint ${mp} is not a directory`);
  const type = mountedAt(fs.realpathSync(mp));
  if (type !== null) throw new CliError(`mountpoint ${mp} is busy: already a mount (${type}); unmount it first`);
}

/** `cubefs-mount umount MNT`: unmounts and waits for the serving process to finish. */
export async function unmount(target: string, opts: { lazy?: boolean; quiet?: boolean } = {}): Promise<void> {
  const mp = path.resolve(target);
  let real = mp;
  try {
    real = fs.realpathSync(mp);
  } catch { /* a stale mount cannot be resolved: use the path as given */ }
  const type = mountedAt(real);
  if (type === null) throw new CliError(`${mp} is not mounted`);
  if (!type.startsWith('fuse')) throw new CliError(`${mp} is a ${type} mount, not CubeFS: use umount`);
  const state = readState(real);
  const attempts: [string, string[]][] = process.getuid?.() === 0
    ? [['umount', [...(opts.lazy ? ['-l'] : []), real]], ['fusermount3', ['-u', ...(opts.lazy ? ['-z'] : []), real]]]
    : [['fusermount3', ['-u', ...(opts.lazy ? ['-z'] : []), real]], ['umount', [...(opts.lazy ? ['-l'] : []), real]]];
  let lastErr = '';
  let done = false;
  for (const [cmd, args] of attempts) {
    try {
      await run(cmd, args);
      done = true;
      break;
    } catch (e) {
      const err = e as NodeJS.ErrnoException & { stderr?: string };
      if (err.code === 'ENOENT') continue;
      lastErr = (err.stderr ?? err.message).trim();
      if (/busy/i.test(lastErr)) {
        throw new CliError(`${mp} is busy (a process has a file or its cwd there; see: fuser -vm ${mp}); close it, or unmount lazily: cubefs-mount umount --lazy ${mp}`);
      }
    }
  }
  if (!done) throw new CliError(`cannot unmount ${mp}: ${oneLine(lastErr) || 'neither umount nor fusermount3 is installed'}`);
  if (state && !(await waitGone(state.pid, 30_000))) {
    throw new CliError(`unmounted ${mp}, but its process ${state.pid} has not exited after 30 s`);
  }
  if (!opts.quiet) process.stdout.write(`unmounted ${mp}\n`);
}
