/**
 * Background processes: the parent starts this same program detached (its own session, cwd /, stdout and
 * stderr appended to a log file) with an IPC channel, and waits for one message: {ready: true, ...} when the
 * child is serving, {ready: false, message} when it failed. The child then drops the channel and lives on.
 * A child that exits without a word is reported with the tail of its log.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CliError } from './config.js';
import { fsReason, isNotWritable, makeDirs, makeDirsReason } from '../util/dirs.js';

export const MAIN_JS = path.join(path.dirname(fileURLToPath(import.meta.url)), 'main.js');

export type ReadyMessage = { ready: true; pid: number; [k: string]: unknown } | { ready: false; message: string };

/** In a child started by spawnDaemon: tell the parent how it went, then let go of the channel. */
export function notifyParent(msg: ReadyMessage): Promise<void> {
  return new Promise((resolve) => {
    if (!process.send || !process.connected) return resolve();
    process.send(msg, () => {
      if (process.connected) process.disconnect();
      resolve();
    });
  });
}

export function hasParentChannel(): boolean {
  return typeof process.send === 'function' && process.connected;
}

export interface Daemon {
  pid: number;
  message: Record<string, unknown>;
}

/**
 * Starts `node main.js ...args` detached (its environment: ours and `env`), logging to `logFile` (its directory
 * created), and resolves when it says it is ready; rejects with its one-line failure otherwise. `what` names
 * it in messages.
 */
export async function spawnDaemon(args: string[], logFile: string, what: string, timeoutMs = 120_000, env: NodeJS.ProcessEnv = {}): Promise<Daemon> {
  const logDir = path.dirname(logFile);
  try {
    makeDirs(logDir);
  } catch (e) {
    throw new CliError(`cannot create the log directory ${logDir}: ${makeDirsReason(e)}`);
  }
  let fd: number;
  try {
    fd = fs.openSync(logFile, 'a', 0o640);
  } catch (e) {
    if (isNotWritable(e)) {
      // The directory, unless the file itself is what refuses (EROFS is the whole file system's).
      const what = (e as NodeJS.ErrnoException).code !== 'EROFS' && fs.existsSync(logFile) ? `log file ${logFile}` : `log directory ${logDir}`;
      throw new CliError(`${what} is not writable (${fsReason(e)})`);
    }
    throw new CliError(`cannot open the log file ${logFile}: ${fsReason(e)}`);
  }
  const start = fs.fstatSync(fd).size;
  const child = spawn(process.execPath, [MAIN_JS, ...args], {
    detached: true, cwd: '/', stdio: ['ignore', fd, fd, 'ipc'], env: { ...process.env, ...env },
  });
  fs.closeSync(fd);
  const logSince = (): string => {
    try {
      const b = fs.readFileSync(logFile);
      return b.subarray(start).toString().trimEnd().split('\n').slice(-5).join(' | ');
    } catch {
      return '';
    }
  };
  try {
    const message = await new Promise<ReadyMessage>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGTERM');
        reject(new CliError(`${what} did not report ready in ${timeoutMs / 1000} s (log: ${logFile})`));
      }, timeoutMs);
      child.once('message', (m) => {
        clearTimeout(timer);
        resolve(m as ReadyMessage);
      });
      child.once('error', (e) => {
        clearTimeout(timer);
        reject(new CliError(`cannot start ${what}: ${e.message}`));
      });
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        // A last message may still be in the pipe: give it a moment to win.
        setTimeout(() => {
          const last = logSince();
          reject(new CliError(`${what} exited (${signal ?? `status ${code}`}) before it was ready${last ? `: ${last}` : ''} (log: ${logFile})`));
        }, 200);
      });
    });
    if (!message.ready) throw new CliError(message.message);
    return { pid: child.pid!, message };
  } finally {
    child.removeAllListeners('exit');
    if (child.connected) child.disconnect();
    child.unref();
  }
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The command line of a process, or '' when it is gone. */
export function cmdline(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
  } catch {
    return '';
  }
}

/** Waits (polling) until `pid` is gone; false if it is still there after `ms`. */
export async function waitGone(pid: number, ms: number): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end;) {
    if (!alive(pid)) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return !alive(pid);
}
