/**
 * The three things measured: the mount (embedded cluster + mountVolume, each in child processes), B0 (a
 * tmpfs) and B1 (the null FUSE file system on our binding, in a child process). Children write their
 * output to log files in the run's temp dir and say they are ready through a JSON file, so nothing here
 * depends on this process's event loop while fio runs synchronously.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { mountedAt } from '../src/fuse/session.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));

export type TargetId = 'mount' | 'b0' | 'b1';
export const TARGET_IDS: TargetId[] = ['mount', 'b0', 'b1'];
export const TARGET_NAMES: Record<TargetId, string> = { mount: 'mount', b0: 'B0 tmpfs', b1: 'B1 nullfs' };

export interface Target {
  id: TargetId;
  /** Where the workloads put their files (null when the target failed to come up). */
  dir: string | null;
  error?: string;
  info: Record<string, unknown>;
  /** Seconds it took to come up. */
  setupSeconds?: number;
  stop(): Promise<void>;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function tail(file: string, n = 1500): string {
  try {
    const s = fs.readFileSync(file, 'utf8');
    return s.slice(-n).trim();
  } catch {
    return '';
  }
}

interface Child {
  proc: ChildProcess;
  log: string;
  exited: () => boolean;
}

function spawnChild(script: string, args: string[], log: string, detached = false): Child {
  const fd = fs.openSync(log, 'a');
  const proc = spawn(process.execPath, [path.join(HERE, script), ...args], {
    stdio: ['ignore', fd, fd], detached, env: process.env,
  });
  fs.closeSync(fd);
  let done = false;
  proc.on('exit', () => { done = true; });
  proc.on('error', () => { done = true; });
  return { proc, log, exited: () => done || proc.exitCode !== null || proc.signalCode !== null };
}

/** Waits for the child's ready file (JSON); fails with the log's tail if the child exits first. */
async function waitReady(c: Child, file: string, what: string, timeoutMs: number): Promise<Record<string, unknown>> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (fs.existsSync(file)) return JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
    if (c.exited()) throw new Error(`${what} exited before it was ready: ${tail(c.log) || '(no output)'}`);
    if (Date.now() > end) throw new Error(`${what} not ready after ${timeoutMs / 1000} s: ${tail(c.log) || '(no output)'}`);
    await sleep(100);
  }
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves when the process is gone. */
async function terminate(c: Child, graceMs: number): Promise<void> {
  if (c.exited()) return;
  c.proc.kill('SIGTERM');
  const end = Date.now() + graceMs;
  while (!c.exited() && Date.now() < end) await sleep(100);
  if (!c.exited()) {
    c.proc.kill('SIGKILL');
    while (!c.exited()) await sleep(50);
  }
}

/** Last resort for a mount whose daemon did not take it down. */
function forceUnmount(mnt: string): void {
  if (mountedAt(mnt) !== null) spawnSync('umount', ['-l', mnt], { stdio: 'ignore' });
}

async function fuseChild(id: TargetId, work: string, args: string[], started: number, extraInfo: Record<string, unknown>,
  onStop: () => Promise<void> = async () => undefined, name: string = id): Promise<Target> {
  const mnt = path.join(work, `mnt-${name}`);
  fs.mkdirSync(mnt, { recursive: true });
  const ready = path.join(work, `${name}-ready.json`);
  const stats = path.join(work, `${name}-stats.json`);
  const c = spawnChild('mount-main.js', [...args, '--mnt', mnt, '--ready', ready, '--stats', stats], path.join(work, `${name}.log`));
  const t: Target = {
    id, dir: null, info: { ...extraInfo, mountpoint: mnt, log: c.log },
    async stop() {
      await terminate(c, 30000);
      forceUnmount(mnt);
      if (fs.existsSync(stats)) t.info.stats = JSON.parse(fs.readFileSync(stats, 'utf8'));
      await onStop();
    },
  };
  try {
    const r = await waitReady(c, ready, `${TARGET_NAMES[id]} mount process`, 60000);
    t.info.conn = r.conn;
    t.info.pid = r.pid;
    t.dir = mnt;
    t.setupSeconds = (Date.now() - started) / 1000;
  } catch (e) {
    t.error = (e as Error).message;
  }
  return t;
}

export interface ClusterHandle {
  info: Record<string, unknown>;
  stop(): Promise<void>;
  /** Leave it running (--keep): detach from it. */
  release(): void;
}

async function startCluster(work: string, keep: boolean): Promise<ClusterHandle> {
  const dir = path.join(work, 'cluster');
  const ready = path.join(work, 'cluster-ready.json');
  const args = ['--dir', dir, '--ready', ready, ...(keep ? ['--keep'] : [])];
  // Its own process group: a Ctrl-C in the terminal reaches us, and we decide (--keep leaves it up).
  const c = spawnChild('cluster-main.js', args, path.join(work, 'cluster.log'), true);
  try {
    const info = await waitReady(c, ready, 'embedded cluster', 120000);
    return {
      info: { ...info, log: c.log },
      stop: () => terminate(c, 20000),
      release: () => { c.proc.unref(); },
    };
  } catch (e) {
    await terminate(c, 5000);
    throw e;
  }
}

/** The mount under test: the embedded cluster, then mountVolume in another child. */
export async function startMount(work: string, keep: boolean): Promise<{ target: Target; cluster: ClusterHandle | null }> {
  const started = Date.now();
  let cluster: ClusterHandle;
  try {
    cluster = await startCluster(work, keep);
  } catch (e) {
    return {
      cluster: null,
      target: { id: 'mount', dir: null, error: `cluster: ${(e as Error).message}`, info: {}, stop: async () => undefined },
    };
  }
  const i = cluster.info;
  const target = await fuseChild('mount', work,
    ['--kind', 'cubefs', '--masters', String(i.master), '--vol', String(i.vol), '--owner', String(i.owner)],
    started, { cluster: { master: i.master, vol: i.vol, owner: i.owner, dir: i.dir, replicas: 3, transport: 'tcp' } });
  return { target, cluster };
}

/** One more mount of the cluster startMount started (a cold one: nothing cached), in mnt-NAME. */
export async function mountAgain(work: string, cluster: ClusterHandle, name: string): Promise<Target> {
  const i = cluster.info;
  return fuseChild('mount', work, ['--kind', 'cubefs', '--masters', String(i.master), '--vol', String(i.vol), '--owner', String(i.owner)],
    Date.now(), {}, undefined, name);
}

export async function startNull(work: string): Promise<Target> {
  return fuseChild('b1', work, ['--kind', 'null'], Date.now(), { fs: 'nullfs (src/fuse/nullfs.ts)' });
}

export async function startTmpfs(work: string, sizeBytes: number): Promise<Target> {
  const started = Date.now();
  const mnt = path.join(work, 'mnt-b0');
  fs.mkdirSync(mnt, { recursive: true });
  const size = `${Math.ceil(sizeBytes / (1 << 20))}m`;
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0755`, 'cubefs-bench-b0', mnt], { encoding: 'utf8' });
  const t: Target = {
    id: 'b0', dir: null, info: { fs: 'tmpfs', mountpoint: mnt, size },
    async stop() {
      if (mountedAt(mnt) !== null) {
        const u = spawnSync('umount', [mnt], { stdio: 'ignore' });
        if (u.status !== 0) forceUnmount(mnt);
      }
    },
  };
  if (r.status !== 0) t.error = `mount -t tmpfs failed: ${(r.stderr || r.error?.message || `exit ${r.status}`).trim()}`;
  else {
    t.dir = mnt;
    t.setupSeconds = (Date.now() - started) / 1000;
  }
  return t;
}
