/**
 * Test support for the command line: run bin/cubefs-mount as a user would (a child process, without tap's
 * NODE_OPTIONS hooks, which listen for SIGTERM themselves), scratch dirs whose mounts are always undone.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Test } from 'tap';
import { mountedAt } from '../../src/fuse/session.js';
export { until } from '../support/wait.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const BIN = path.join(ROOT, 'bin/cubefs-mount');

export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  delete env.NODE_OPTIONS;
  delete env.DEBUG;
  return env;
}

/** Runs a command to its end. */
export function run(cmd: string, args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: childEnv(env) });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

export const cli = (args: string[], env: Record<string, string> = {}): Promise<Run> => run(BIN, args, env);

/** Starts the CLI and leaves it running (foreground mounts). */
export function start(t: Test, args: string[]): { child: ChildProcess; out: () => string; err: () => string; exited: Promise<number | null> } {
  const child = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], env: childEnv() });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); });
  return { child, out: () => out, err: () => err, exited };
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** A temp dir with `mnt` (empty) and `log` in it; in teardown, whatever is mounted at mnt goes first. */
export function scratch(t: Test): { dir: string; mnt: string; logDir: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cubefs-cli-'));
  const mnt = path.join(dir, 'mnt');
  const logDir = path.join(dir, 'log');
  fs.mkdirSync(mnt);
  t.teardown(() => {
    unmountIfMounted(mnt);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { dir, mnt, logDir };
}

export function unmountIfMounted(mnt: string): void {
  for (let i = 0; i < 3 && mountedAt(mnt) !== null; i++) spawnSync('umount', ['-l', mnt]);
}

/** The pid the background mount printed ("process: N"). */
export function pidOf(stdout: string): number {
  const m = /process: (\d+)/.exec(stdout);
  return m ? Number(m[1]) : -1;
}
