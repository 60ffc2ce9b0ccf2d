/**
 * Test support for real programs on a real mount: an embedded cluster whose nodes are child processes, the
 * volume mounted by a separate fixture process (test/posix/fixtures/mount.ts: mountVolume, "ready" on stdout,
 * unmount on SIGTERM), and a tmpfs to compare with. The test process never serves FUSE requests, so it may use
 * synchronous fs calls and child_process on the mount without deadlocking.
 *
 * Teardown (one function, in order): every mount fixture gets SIGTERM (then SIGKILL), whatever is still
 * mounted goes with `umount -l`, the tmpfs is unmounted, the cluster stops, the temp dir is removed.
 */
import { spawn, spawnSync, type ChildProcess, type SpawnSyncOptions } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Test } from 'tap';
import { EmbeddedCluster } from '../../src/cluster/launcher.js';
import { mountedAt } from '../../src/fuse/session.js';
import { until } from './wait.js';

export const MiB = 1 << 20;
const FIXTURE = new URL('../posix/fixtures/mount.js', import.meta.url).pathname;
/** The repository root (dist/test/support -> ../../..). */
export const REPO = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..', '..');

/** The environment for child processes: without tap's NODE_OPTIONS hooks (they listen for SIGTERM). */
export function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = { ...process.env, ...extra };
  delete env.NODE_OPTIONS;
  return env;
}

export interface RunResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a program to its end (synchronously: the mount is served by other processes). */
export function run(cmd: string, args: string[], opts: SpawnSyncOptions = {}): RunResult {
  const r = spawnSync(cmd, args, { maxBuffer: 256 * MiB, encoding: 'utf8', env: childEnv(), timeout: 300_000, ...opts });
  if (r.error) throw r.error;
  return { status: r.status, signal: r.signal, stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? '') };
}

/** Runs a program and asserts it exited 0 (the message carries its stderr when not). Returns stdout. */
export function ok(t: Test, cmd: string, args: string[], msg: string, opts: SpawnSyncOptions = {}): string {
  const r = run(cmd, args, opts);
  t.equal(r.status, 0, msg, r.status === 0 ? {} : { stderr: r.stderr.slice(-3000), stdout: r.stdout.slice(-2000) });
  return r.stdout;
}

/** Runs a shell command line (bash -c) and asserts it exited 0. */
export function sh(t: Test, script: string, msg: string, opts: SpawnSyncOptions = {}): string {
  return ok(t, 'bash', ['-euo', 'pipefail', '-c', script], msg, opts);
}

/** The argv prefix that runs a program as nobody (uid/gid 65534, no supplementary groups). */
export const AS_NOBODY = ['setpriv', '--reuid', '65534', '--regid', '65534', '--clear-groups'];

export interface MountProc {
  mnt: string;
  child: ChildProcess;
  /** The fixture's stdout and stderr so far. */
  output(): string;
  /** SIGTERM: the fixture unmounts (lazily if busy) and exits. Resolves with its exit code. */
  stop(): Promise<number | null>;
}

export interface PosixEnv {
  /** A temp dir (mode 0755 so nobody can reach the mounts inside it). */
  dir: string;
  cluster: EmbeddedCluster;
  /** The CubeFS mount. */
  mnt: string;
  cube: MountProc;
  /** A tmpfs mounted beside it. */
  tmp: string;
  /**
   * Mounts the volume once more (another fixture process) at `mnt`, with `env` for the fixture (e.g.
   * CUBEFS_TEST_RETRY_MS); the caller stops it (teardown does too).
   */
  mount(mnt: string, env?: Record<string, string>): Promise<MountProc>;
  /** Starts a mount fixture that is expected to fail; resolves with its output and exit code. */
  mountFails(mnt: string): Promise<{ code: number | null; output: string }>;
}

/** Mount points below `dir`, deepest first (from /proc/mounts). */
function mountsUnder(dir: string): string[] {
  return fs.readFileSync('/proc/mounts', 'utf8').split('\n').map((l) => l.split(' ')[1] ?? '')
    .map((m) => m.replace(/\\040/g, ' ')).filter((m) => m.startsWith(dir + '/'))
    .sort((a, b) => b.length - a.length);
}

function exited(c: ChildProcess): boolean {
  return c.exitCode !== null || c.signalCode !== null;
}

function spawnMount(cluster: EmbeddedCluster, mnt: string, env: Record<string, string> = {}): { child: ChildProcess; output: () => string } {
  const child = spawn(process.execPath, [FIXTURE, mnt, cluster.masterAddr, cluster.vol, cluster.owner], {
    stdio: ['ignore', 'pipe', 'pipe'], env: childEnv(env),
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr!.on('data', (d: Buffer) => { out = (out + d.toString()).slice(-20000); });
  return { child, output: () => out };
}

async function stopMount(p: MountProc): Promise<number | null> {
  const c = p.child;
  if (!exited(c)) {
    const done = new Promise<void>((r) => c.once('exit', () => r()));
    c.kill('SIGTERM');
    const t = setTimeout(() => c.kill('SIGKILL'), 30_000);
    await done;
    clearTimeout(t);
  }
  // Only a fixture that mounted may unmount: a failed second mount must leave the first one alone.
  if (p.output().includes('ready') && mountedAt(p.mnt) !== null) spawnSync('umount', ['-l', p.mnt]);
  return c.exitCode;
}

/** Cluster (child processes) + mount (fixture process) + tmpfs, all under one temp dir, torn down in order. */
export async function posixEnv(t: Test, opts: {
  tmpfsMiB?: number;
  /** Runs before the cluster starts, with its directory (e.g. to put a node's directory on a small tmpfs). */
  prepareCluster?: (clusterDir: string) => void;
} = {}): Promise<PosixEnv> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cubefs-posix-'));
  fs.chmodSync(dir, 0o755);
  const mounts: MountProc[] = [];
  let cluster: EmbeddedCluster | null = null;
  const tmp = path.join(dir, 'tmpfs');
  const mnt = path.join(dir, 'mnt');
  t.teardown(async () => {
    for (const m of mounts) await stopMount(m);
    if (mountedAt(tmp) !== null) spawnSync('umount', ['-l', tmp]);
    await cluster?.stop();
    // Whatever prepareCluster mounted under the dir, deepest first.
    for (const m of mountsUnder(dir)) spawnSync('umount', ['-l', m]);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  fs.mkdirSync(tmp);
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${opts.tmpfsMiB ?? 1024}m,mode=0755`, 'tmpfs', tmp], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`mount -t tmpfs failed: ${r.stderr}`);

  opts.prepareCluster?.(path.join(dir, 'cluster'));
  cluster = await EmbeddedCluster.start({ dir: path.join(dir, 'cluster'), masterPort: 0, heartbeatMs: 500 });
  const c = cluster;

  const mount = async (at: string, env: Record<string, string> = {}): Promise<MountProc> => {
    fs.mkdirSync(at, { recursive: true });
    const { child, output } = spawnMount(c, at, env);
    const m: MountProc = { mnt: at, child, output, stop: () => stopMount(m) };
    mounts.push(m);
    const ready = await until(() => output().includes('ready') || exited(child), 60_000);
    if (!ready || !output().includes('ready')) throw new Error(`the mount fixture did not mount ${at}: ${output()}`);
    return m;
  };
  const mountFails = async (at: string): Promise<{ code: number | null; output: string }> => {
    const { child, output } = spawnMount(c, at);
    const m: MountProc = { mnt: at, child, output, stop: () => stopMount(m) };
    mounts.push(m);
    await until(() => exited(child), 60_000);
    if (!exited(child)) await m.stop();
    return { code: child.exitCode, output: output() };
  };
  const cube = await mount(mnt);
  return { dir, cluster: c, mnt, cube, tmp, mount, mountFails };
}
