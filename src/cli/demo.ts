/**
 * `cubefs-mount demo`: the embedded cluster as a background daemon in DIR (pid in DIR/cluster.pid, log in
 * DIR/cluster.log) and its volume mounted in the background at MNT (log in DIR/mount.log).
 *
 * Idempotent: what is already up is left alone and said so; a pid file whose process is gone (a reboot, a
 * kill) is stale and the cluster is started again, on the ports DIR/cluster.json remembers; a cluster
 * without its mount gets mounted. `demo --stop` unmounts and stops the cluster (data stays in DIR).
 */
import fs from 'node:fs';
import path from 'node:path';
import { MasterClient } from '../master/client.js';
import { mountedAt } from '../fuse/session.js';
import { makeDirs, makeDirsReason } from '../util/dirs.js';
import { CliError, DEFAULT_LOG_DIR, type MountSettings } from './config.js';
import { alive, cmdline, MAIN_JS, spawnDaemon, waitGone } from './daemon.js';
import { runBackground, unmount } from './mount.js';

export const DEMO_DIR = '/var/lib/cubefs-mount/demo';
export const DEMO_MOUNTPOINT = '/mnt/cubefs';

export interface DemoOptions {
  dir: string;
  mountpoint?: string;
  masterPort: number;
  stop?: boolean;
}

interface Layout {
  master: string;
  vol: string;
  owner: string;
}

interface DemoState {
  mountpoint: string;
}

const files = (dir: string) => ({
  pid: path.join(dir, 'cluster.pid'),
  clusterLog: path.join(dir, 'cluster.log'),
  mountLog: path.join(dir, 'mount.log'),
  layout: path.join(dir, 'cluster.json'),
  demo: path.join(dir, 'demo.json'),
});

/** The pid of this DIR's cluster daemon if it is running (a pid file naming another process is stale). */
function clusterPid(dir: string): number | null {
  const f = files(dir);
  let pid: number;
  try {
    pid = Number(fs.readFileSync(f.pid, 'utf8').trim());
  } catch {
    return null;
  }
  if (!Number.isInteger(pid) || pid <= 0 || !alive(pid)) return null;
  const cmd = cmdline(pid);
  return cmd.includes(MAIN_JS) && cmd.includes(' cluster ') && cmd.includes(dir) ? pid : null;
}

function readLayout(dir: string): Layout | null {
  try {
    return JSON.parse(fs.readFileSync(files(dir).layout, 'utf8')) as Layout;
  } catch {
    return null;
  }
}

/** The mount at `mp`: 'cubefs', 'stale' (a FUSE mount whose process is gone), 'other' or 'none'. */
function mountStatus(mp: string): 'cubefs' | 'stale' | 'other' | 'none' {
  try {
    fs.statSync(mp);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOTCONN') return 'stale';
    return 'none';
  }
  const type = mountedAt(fs.realpathSync(mp));
  if (type === null) return 'none';
  return type === 'fuse.cubefs' ? 'cubefs' : 'other';
}

async function masterAnswers(layout: Layout): Promise<boolean> {
  const mc = new MasterClient(layout.master, { timeoutMs: 3000 });
  try {
    await mc.getVolume(layout.vol, layout.owner);
    return true;
  } catch {
    return false;
  } finally {
    mc.close();
  }
}

export async function demo(o: DemoOptions): Promise<void> {
  const dir = path.resolve(o.dir);
  const f = files(dir);
  let saved: DemoState | null = null;
  try {
    saved = JSON.parse(fs.readFileSync(f.demo, 'utf8')) as DemoState;
  } catch { /* first run */ }
  const mp = path.resolve(o.mountpoint ?? saved?.mountpoint ?? DEMO_MOUNTPOINT);
  if (o.stop) return stopDemo(dir, mp);

  try {
    makeDirs(dir, 0o700);
  } catch (e) {
    throw new CliError(`cannot create the demo directory ${dir}: ${makeDirsReason(e)}`);
  }
  const said: string[] = [];
  let pid = clusterPid(dir);
  let layout = readLayout(dir);
  if (pid !== null && layout && (await masterAnswers(layout))) {
    said.push(`the embedded cluster is already running (pid ${pid})`);
  } else {
    if (pid !== null) {
      // Running but not answering: a half-dead daemon. Replace it.
      process.kill(pid, 'SIGTERM');
      await waitGone(pid, 15_000);
    }
    fs.rmSync(f.pid, { force: true });
    const d = await spawnDaemon(['cluster', '--dir', dir, '--master-port', String(o.masterPort)], f.clusterLog, 'the embedded cluster');
    pid = d.pid;
    fs.writeFileSync(f.pid, `${pid}\n`);
    layout = readLayout(dir);
    if (!layout) throw new CliError(`the embedded cluster started but ${f.layout} is missing`);
    said.push(`started the embedded cluster (pid ${pid}, data and logs in ${dir})`);
  }
  fs.writeFileSync(f.demo, JSON.stringify({ mountpoint: mp } satisfies DemoState));

  const status = mountStatus(mp);
  if (status === 'cubefs') {
    said.push(`${mp} is already mounted`);
  } else {
    if (status === 'other') throw new CliError(`${mp} is already a mount of another file system; choose another: cubefs-mount demo --mountpoint DIR`);
    if (status === 'stale') await unmount(mp, { lazy: true, quiet: true });
    try {
      makeDirs(mp);
    } catch (e) {
      throw new CliError(`cannot create the mountpoint ${mp}: ${makeDirsReason(e)}`);
    }
    const s: MountSettings = {
      mountpoint: mp, masters: [layout.master], vol: layout.vol, owner: layout.owner, readOnly: false,
      fuseOptions: [], logDir: DEFAULT_LOG_DIR, logFile: f.mountLog,
      // the embedded datanodes listen for RDMA (when there is a device) on their TCP port numbers
      rdma: 'auto', rdmaPort: 'same',
    };
    await runBackground(s, { quiet: true });
    said.push(`mounted volume "${layout.vol}" at ${mp}`);
  }
  process.stdout.write(
    `${said.join('; ')}\n`
    + `  mountpoint: ${mp}\n  volume:     ${layout.vol} (owner ${layout.owner})\n  master:     ${layout.master}\n`
    + `  data, logs: ${dir} (admin secret: ${path.join(dir, 'secret')})\n`
    + `  try:        echo hello > ${mp}/hello.txt && cat ${mp}/hello.txt\n`
    + `  unmount:    cubefs-mount umount ${mp}\n`
    + `  stop all:   cubefs-mount demo --stop${dir === DEMO_DIR ? '' : ` --dir ${dir}`}\n`,
  );
}

async function stopDemo(dir: string, mp: string): Promise<void> {
  const f = files(dir);
  const said: string[] = [];
  const status = mountStatus(mp);
  if (status === 'cubefs' || status === 'stale') {
    await unmount(mp, { quiet: true, lazy: status === 'stale' });
    said.push(`unmounted ${mp}`);
  }
  const pid = clusterPid(dir);
  if (pid !== null) {
    process.kill(pid, 'SIGTERM');
    if (!(await waitGone(pid, 30_000))) throw new CliError(`the embedded cluster (pid ${pid}) did not stop in 30 s`);
    said.push(`stopped the embedded cluster (pid ${pid}); its data stays in ${dir}`);
  }
  fs.rmSync(f.pid, { force: true });
  process.stdout.write(said.length > 0 ? `${said.join('; ')}\n` : `the demo is not running (nothing mounted at ${mp}, no cluster in ${dir})\n`);
}
