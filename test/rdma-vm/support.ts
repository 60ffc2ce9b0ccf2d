/**
 * For the VM's FUSE tests and bench/rdma-vm.ts: mount the volume in a child process (fixtures/mount-rdma.ts)
 * with a given data path, and stop it, collecting its final counters.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import readline from 'node:readline';
import type { DataTransportStats } from '../../src/data/rdma.js';
import type { PoolStats } from '../../src/pool/index.js';

const FIXTURE = new URL('./fixtures/mount-rdma.js', import.meta.url).pathname;

export interface MountEnd {
  stats: DataTransportStats;
  pool: PoolStats | null;
  warnings: string[];
}

export interface RdmaMount {
  mnt: string;
  child: ChildProcess;
  /** SIGTERM; resolves with the fixture's final line. */
  stop(): Promise<MountEnd>;
}

/**
 * Runs a program without blocking this process (the cluster may live in it: a spawnSync would stall the
 * very nodes the mount talks to).
 */
export function runAsync(cmd: string, args: string[], timeoutMs = 300_000): Promise<{ status: number; out: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const status = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
      resolve({ status, out: `${stdout}\n${stderr}` });
    });
  });
}

export async function mountRdma(mnt: string, masters: string, vol: string, owner: string, rdma: 'auto' | 'on' | 'off', poolMB = 64): Promise<RdmaMount> {
  fs.mkdirSync(mnt, { recursive: true });
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  const child = spawn(process.execPath, [FIXTURE, mnt, masters, vol, owner, rdma, String(poolMB)], { stdio: ['ignore', 'pipe', 'inherit'], env });
  const lines: string[] = [];
  let waiter: ((l: string) => void) | null = null;
  readline.createInterface({ input: child.stdout! }).on('line', (l) => {
    lines.push(l);
    waiter?.(l);
  });
  const next = (pred: (l: string) => boolean, what: string): Promise<string> => new Promise((resolve, reject) => {
    const hit = lines.find(pred);
    if (hit) return resolve(hit);
    // 'close' (stdio closed) rather than 'exit': the last lines may still be in the pipe at 'exit'.
    const onExit = (): void => {
      const late = lines.find(pred);
      if (late) resolve(late);
      else reject(new Error(`mount fixture exited before ${what}: ${lines.join(' | ')}`));
    };
    child.once('close', onExit);
    waiter = (l) => {
      if (!pred(l)) return;
      child.off('close', onExit);
      waiter = null;
      resolve(l);
    };
  });
  const first = await next((l) => l === 'ready' || l.startsWith('error'), 'ready');
  if (first !== 'ready') throw new Error(`mount failed: ${first}`);
  return {
    mnt, child,
    stop: async () => {
      const end = next((l) => l.startsWith('{'), 'its final line');
      child.kill('SIGTERM');
      return JSON.parse(await end) as MountEnd;
    },
  };
}
