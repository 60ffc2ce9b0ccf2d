/**
 * Benchmark child: one FUSE mount in its own process, so the benchmark can use synchronous fs calls and
 * child processes on it. --kind cubefs mounts a volume with mountVolume (the mount under test); --kind null
 * mounts the null file system (baseline B1) with the same mount options and worker count.
 * Writes {pid, conn} to --ready FILE once mounted. On SIGTERM/SIGINT (or when the benchmark process goes
 * away, or the mount is unmounted from outside) it unmounts, writes the session's counters to --stats FILE
 * and exits.
 *
 *   node dist/bench/mount-main.js --kind cubefs --mnt DIR --ready F --stats F --masters H:P --vol V --owner O
 *   node dist/bench/mount-main.js --kind null   --mnt DIR --ready F --stats F
 */
import { mountVolume, type Mount } from '../src/fs/mount.js';
import { FuseSession } from '../src/fuse/session.js';
import { NullFs } from '../src/fuse/nullfs.js';
import { argValue, need, writeJson } from './args.js';

const argv = process.argv.slice(2);
const kind = need(argv, '--kind');
const mnt = need(argv, '--mnt');
const ready = need(argv, '--ready');
const statsFile = need(argv, '--stats');
const workers = argValue(argv, '--workers');
const parent = process.ppid;
// mountVolume's options, so B1 differs from the mount only by what is behind the ops table.
const OPTIONS = ['default_permissions', 'auto_unmount', 'allow_other'];

let session: FuseSession;
const safeStats = (): unknown => {
  try {
    return session.stats();
  } catch (e) {
    return { error: (e as Error).message };
  }
};
let finish: () => Promise<Record<string, unknown>>;
if (kind === 'null') {
  const nullfs = new NullFs();
  session = await FuseSession.mount(mnt, nullfs.ops, {
    fsname: 'cubefs-bench-null', subtype: 'nullfs', options: OPTIONS, handleSignals: false,
    ...(workers ? { workers: Number(workers) } : {}),
  });
  finish = async () => {
    const native = safeStats();
    await session.unmount();
    return { session: native, nullfs: nullfs.counters };
  };
} else if (kind === 'cubefs') {
  const m: Mount = await mountVolume({
    masters: need(argv, '--masters'), vol: need(argv, '--vol'), owner: need(argv, '--owner'), mountpoint: mnt,
    handleSignals: false, ...(workers ? { workers: Number(workers) } : {}),
  });
  session = m.session;
  finish = async () => {
    const native = safeStats();
    await m.unmount();
    return { session: native };
  };
} else {
  process.stderr.write(`unknown --kind ${kind}\n`);
  process.exit(2);
}

let ending = false;
const end = (why: string): void => {
  if (ending) return;
  ending = true;
  void finish()
    .then((stats) => writeJson(statsFile, { why, conn: session.conn, ...stats }))
    .catch((e: Error) => process.stderr.write(`mount ${kind}: ${e.stack ?? e.message}\n`))
    .finally(() => process.exit(0));
};
process.on('SIGTERM', () => end('SIGTERM'));
process.on('SIGINT', () => end('SIGINT'));
session.on('unmounted', () => end('unmounted'));
setInterval(() => { if (process.ppid !== parent) end('the benchmark process is gone'); }, 1000);
await writeJson(ready, { pid: process.pid, mountpoint: session.mountpoint, conn: session.conn });
