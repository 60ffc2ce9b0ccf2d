/**
 * `mkdir -p` that fails at once with the real reason. Node's own (fs.mkdir with recursive, Node 20) spins
 * forever when a parent exists but answers ENOENT for the child (/proc, /sys: `--log-dir /proc/x` hung), and
 * reports a read-only or full parent as ENOENT, not EROFS or ENOSPC.
 */
import fs from 'node:fs';
import path from 'node:path';

/** An fs error with its errno code kept, so callers can tell EROFS from EACCES. */
function fsError(code: string, message: string, cause?: unknown): NodeJS.ErrnoException {
  const e: NodeJS.ErrnoException = new Error(message, cause === undefined ? undefined : { cause });
  e.code = code;
  return e;
}

/**
 * Creates `dir` and its missing parents; `mode` applies to `dir` itself (parents get the default, as
 * mkdir -p -m). An existing directory (or a symlink to one) is fine.
 */
export function makeDirs(dir: string, mode = 0o777): void {
  const target = path.resolve(dir);
  const missing: string[] = [];
  // Walk up to the first component that exists, without creating anything.
  for (let p = target; ; p = path.dirname(p)) {
    let st: fs.Stats;
    try {
      st = fs.statSync(p);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' && fs.lstatSync(p, { throwIfNoEntry: false })?.isSymbolicLink()) {
        throw fsError('ENOENT', `${p} is a symbolic link to nothing`, e);
      }
      // ENOTDIR: a file on the way, said by the walk's next step ("... is not a directory").
      if ((code !== 'ENOENT' && code !== 'ENOTDIR') || path.dirname(p) === p) throw e;
      missing.push(p);
      continue;
    }
    if (!st.isDirectory()) throw fsError('ENOTDIR', `${p} is not a directory`);
    break;
  }
  for (const p of missing.reverse()) {
    try {
      fs.mkdirSync(p, p === target ? mode : 0o777);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EEXIST' && fs.statSync(p, { throwIfNoEntry: false })?.isDirectory()) continue; // made meanwhile
      // Its parent exists (we just saw or made it): ENOENT here is final, /proc and /sys say so.
      if (code === 'ENOENT') throw fsError('ENOENT', `${path.dirname(p)} cannot hold new directories (ENOENT)`, e);
      throw e;
    }
  }
}

/** "EROFS: read-only file system" from a Node fs error (its ", mkdir '/x'" tail dropped); else the message. */
export function fsReason(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  return msg.replace(/, \w+ '.*'$/, '');
}

/** Why makeDirs failed, for a message: "/x is not writable (EROFS: read-only file system)" names where. */
export function makeDirsReason(e: unknown): string {
  const where = (e as NodeJS.ErrnoException).path;
  return isNotWritable(e) && where ? `${path.dirname(where)} is not writable (${fsReason(e)})` : fsReason(e);
}

/** Whether an fs error means "this place cannot be written" (as opposed to "it is not there"). */
export function isNotWritable(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException)?.code;
  return code === 'EROFS' || code === 'EACCES' || code === 'EPERM';
}
