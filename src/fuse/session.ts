/**
 * FuseSession: a mounted libfuse 3 low-level session, driven by an explicit ops table.
 *
 * Layers: native/fuse owns the kernel side (mount, worker threads reading /dev/fuse into receive buffers,
 * the outstanding-request table, fuse_reply_*); this module owns the JS side: it checks the mountpoint before
 * mounting (precise errors), turns each native request into a typed `(req, args)` call of the op's handler,
 * and guarantees one reply per request (a throw, a rejection or a missing reply becomes EIO; a second
 * reply is logged and dropped). It also unmounts on SIGINT/SIGTERM and reports an unmount done from
 * outside (`umount MNT`) as 'unmounted'.
 *
 * Events: 'unmounted' (once, however the session ended), 'error' (a handler failed or replied twice;
 * emitted only when someone listens, always logged under DEBUG=cubefs:fuse).
 *
 * Never touch the mount with synchronous fs calls from the thread that runs the session: the request would
 * wait for this very thread. Use fs.promises or another process.
 */
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { errnoOf } from '../util/errors.js';
import { logger } from '../util/log.js';
import { fuseAddon, MOUNT_WRITEBACK_CACHE, type NativeSession } from './native.js';
import {
  FUSE_OP_COUNT, FuseError, FuseOp, errno,
  type Attr, type ConnInfo, type Entry, type FuseOps, type MountOptions, type NativeStats, type OpenReply,
  type StatfsReply,
} from './types.js';

const log = logger('fuse');
const MiB = 1 << 20;

/** native/fuse/session.cc open flag bits. */
const OpenBits = { directIo: 1, keepCache: 2, nonSeekable: 4, cacheReaddir: 8, noFlush: 16 } as const;

type Handler = (req: FuseRequest, args: never) => void | Promise<void>;

// Scratch arrays for attributes and statfs: the native side reads them before the reply call returns.
const attrScratch = new Float64Array(12);
const statfsScratch = new Float64Array(10);

function packAttr(a: Attr): Float64Array {
  const f = attrScratch;
  f[0] = a.ino; f[1] = a.mode; f[2] = a.nlink; f[3] = a.uid; f[4] = a.gid; f[5] = a.rdev ?? 0;
  f[6] = a.size; f[7] = a.blocks ?? Math.ceil(a.size / 512); f[8] = a.blksize ?? 4096;
  f[9] = a.atimeMs; f[10] = a.mtimeMs; f[11] = a.ctimeMs;
  return f;
}

function openBits(o: OpenReply): number {
  return (o.directIo ? OpenBits.directIo : 0) | (o.keepCache ? OpenBits.keepCache : 0)
    | (o.nonSeekable ? OpenBits.nonSeekable : 0) | (o.cacheReaddir ? OpenBits.cacheReaddir : 0)
    | (o.noFlush ? OpenBits.noFlush : 0);
}

/** One request: every reply method libfuse has; the ops table's types expose only each op's valid ones. */
class FuseRequest {
  replied = false;
  constructor(
    private readonly s: FuseSession, private readonly n: NativeSession,
    readonly op: FuseOp, readonly id: number, readonly uid: number, readonly gid: number, readonly pid: number,
  ) {}

  private claim(what: string): boolean {
    if (this.replied) {
      this.s.misuse(this, `second reply (${what})`);
      return false;
    }
    this.replied = true;
    return true;
  }
  private sent(ok: boolean, what: string): void {
    if (!ok && !this.s.closed) this.s.misuse(this, `reply (${what}) to a request the native side does not hold`);
  }

  err(e: number): void { if (this.claim('err')) this.sent(this.n.replyErr(this.id, e), 'err'); }
  none(): void { if (this.claim('none')) this.sent(this.n.replyNone(this.id), 'none'); }
  entry(e: Entry): void {
    if (this.claim('entry')) {
      this.sent(this.n.replyEntry(this.id, packAttr(e.attr), e.generation ?? 0, e.attrTimeout ?? 1, e.entryTimeout ?? 1), 'entry');
    }
  }
  create(e: Entry, o: OpenReply): void {
    if (this.claim('create')) {
      this.sent(this.n.replyCreate(this.id, packAttr(e.attr), e.generation ?? 0, e.attrTimeout ?? 1, e.entryTimeout ?? 1,
        o.fh, openBits(o)), 'create');
    }
  }
  attr(a: Attr, timeout = 1): void { if (this.claim('attr')) this.sent(this.n.replyAttr(this.id, packAttr(a), timeout), 'attr'); }
  open(o: OpenReply): void { if (this.claim('open')) this.sent(this.n.replyOpen(this.id, o.fh, openBits(o)), 'open'); }
  write(count: number): void { if (this.claim('write')) this.sent(this.n.replyWrite(this.id, count), 'write'); }
  buf(data: Uint8Array): void { if (this.claim('buf')) this.sent(this.n.replyBuf(this.id, data), 'buf'); }
  data(): void { if (this.claim('data')) this.sent(this.n.replyBuf(this.id), 'data'); }
  readlink(target: string): void { if (this.claim('readlink')) this.sent(this.n.replyReadlink(this.id, target), 'readlink'); }
  xattrSize(size: number): void { if (this.claim('xattr')) this.sent(this.n.replyXattr(this.id, size), 'xattr'); }
  lseek(offset: number): void { if (this.claim('lseek')) this.sent(this.n.replyLseek(this.id, offset), 'lseek'); }
  statfs(st: StatfsReply): void {
    if (!this.claim('statfs')) return;
    const f = statfsScratch;
    f[0] = st.bsize; f[1] = st.frsize ?? st.bsize; f[2] = st.blocks; f[3] = st.bfree; f[4] = st.bavail;
    f[5] = st.files; f[6] = st.ffree; f[7] = st.favail ?? st.ffree; f[8] = st.fsid ?? 0; f[9] = st.namemax ?? 255;
    this.sent(this.n.replyStatfs(this.id, f), 'statfs');
  }
  dirAdd(name: string, ino: number, mode: number, nextOffset: number): boolean {
    return !this.replied && this.n.dirAdd(this.id, name, ino, mode, nextOffset);
  }
  dirAddPlus(name: string, e: Entry, nextOffset: number): boolean {
    return !this.replied && this.n.dirAddPlus(this.id, name, packAttr(e.attr), e.generation ?? 0,
      e.attrTimeout ?? 1, e.entryTimeout ?? 1, nextOffset);
  }
  dirReply(): void { if (this.claim('dir')) this.sent(this.n.replyDir(this.id), 'dir'); }

  /** The session's answer when the handler failed to give one. */
  fallback(e: number): void {
    this.replied = true;
    if (this.op === FuseOp.forget || this.op === FuseOp.forgetMulti) this.n.replyNone(this.id);
    else this.n.replyErr(this.id, e);
  }
}

// ---- signals: every live session that asked for it is unmounted, then the signal takes its course ----

const live = new Set<FuseSession>();
const SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM'];
let signalsInstalled = false;

function onSignal(sig: NodeJS.Signals): void {
  const mine = [...live].filter((s) => s.handleSignals);
  void Promise.allSettled(mine.map((s) => s.unmount())).then(() => {
    uninstallSignals();
    if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
  });
}
// process.exit() runs no native cleanup hook on the main thread: close what is still mounted, synchronously.
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const s of [...live]) void s.unmount();
  });
}

function installSignals(): void {
  if (signalsInstalled) return;
  signalsInstalled = true;
  for (const s of SIGNALS) process.on(s, onSignal);
}
function uninstallSignals(): void {
  if (!signalsInstalled) return;
  signalsInstalled = false;
  for (const s of SIGNALS) process.off(s, onSignal);
}

// ---- mountpoint checks ----

/** The file system type mounted exactly at `dir` (an absolute, resolved path), or null. */
export function mountedAt(dir: string): string | null {
  const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    const dash = f.indexOf('-');
    if (f.length < 5 || dash < 0) continue;
    if (unescape(f[4]!) === dir) return f[dash + 1] ?? 'unknown';
  }
  return null;
}

/** The kernel's FUSE device is the misc device 10,229 (include/linux/miscdevice.h: FUSE_MINOR). */
const FUSE_MAJOR = 10;
const FUSE_MINOR = 229;

/** glibc's major()/minor() of a dev_t. */
export function devNumbers(rdev: number): { major: number; minor: number } {
  const hi = Math.floor(rdev / 2 ** 32);
  const lo = rdev >>> 0;
  return {
    major: ((lo >>> 8) & 0xfff) | ((hi & 0xfffff000) >>> 0),
    minor: ((lo & 0xff) | ((lo >>> 12) & 0xfff00) | ((hi & 0xfff) << 20)) >>> 0,
  };
}

/** glibc's makedev(): the dev_t of a device number (what st_rdev holds). */
export function makeDev(major: number, minor: number): number {
  const lo = ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & 0xfff00) << 12)) >>> 0;
  const hi = ((major & 0xfffff000) | ((minor >>> 20) & 0xfff)) >>> 0;
  return hi * 2 ** 32 + lo;
}

async function checkFuseDevice(): Promise<void> {
  let dev: fs.Stats;
  try {
    dev = await fsp.stat('/dev/fuse');
  } catch (e) {
    throw new FuseError('/dev/fuse is missing: load the fuse module (modprobe fuse) or give the container the device '
      + '(--device /dev/fuse)', errno.ENODEV, '/dev/fuse', e);
  }
  // Something else there (a file, /dev/null bound over it) makes libfuse's mount fail with a bare EIO or EINVAL.
  const { major, minor } = devNumbers(dev.rdev);
  if (!dev.isCharacterDevice() || major !== FUSE_MAJOR || minor !== FUSE_MINOR) {
    const what = dev.isCharacterDevice() ? `character device ${major},${minor}` : dev.isFile() ? 'a regular file' : 'not a character device';
    throw new FuseError(`/dev/fuse is not the FUSE device (it is ${what}; FUSE's is character device ${FUSE_MAJOR},${FUSE_MINOR}): `
      + 'see what is mounted over it (findmnt /dev/fuse) or recreate it (mknod -m 666 /dev/fuse c 10 229)', errno.ENODEV, '/dev/fuse');
  }
}

async function checkMountpoint(mp: string): Promise<string> {
  await checkFuseDevice();
  let st: fs.Stats;
  try {
    st = await fsp.stat(mp);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new FuseError(`mountpoint ${mp} does not exist`, errno.ENOENT, mp, e);
    if (code === 'ENOTDIR') throw new FuseError(`mountpoint ${mp} is not a directory`, errno.ENOTDIR, mp, e);
    if (code === 'ENOTCONN') {
      throw new FuseError(`mountpoint ${mp} is a stale FUSE mount (its daemon is gone): run fusermount3 -u ${mp}`,
        errno.ENOTCONN, mp, e);
    }
    throw new FuseError(`mountpoint ${mp}: ${(e as Error).message}`, errnoOf(e), mp, e);
  }
  if (!st.isDirectory()) throw new FuseError(`mountpoint ${mp} is not a directory`, errno.ENOTDIR, mp);
  const real = await fsp.realpath(mp);
  const type = mountedAt(real);
  if (type !== null) {
    throw new FuseError(`mountpoint ${real} is busy: already a mount (${type}); unmount it first`, errno.EBUSY, real);
  }
  return real;
}

export class FuseSession extends EventEmitter {
  readonly mountpoint: string;
  readonly handleSignals: boolean;
  /** What INIT negotiated (set before mount() resolves). */
  conn: ConnInfo | null = null;
  closed = false;
  private readonly native: NativeSession;
  private readonly handlers: (Handler | undefined)[];
  private readonly ops: FuseOps;
  private unmounting: Promise<void> | null = null;
  private initWait: { resolve: () => void; reject: (e: Error) => void } | null = null;
  private readonly counters = { handlerErrors: 0, unanswered: 0, misuse: 0 };

  /**
   * Mounts `ops` at `mountpoint`. Rejects with a FuseError (errno, code) when /dev/fuse is missing or not the
   * FUSE device, the mountpoint is missing, not a directory, already a mount (EBUSY) or stale, or the mount
   * itself fails.
   */
  static async mount(mountpoint: string, ops: FuseOps, opts: MountOptions = {}): Promise<FuseSession> {
    const mp = await checkMountpoint(path.resolve(mountpoint));
    const s = new FuseSession(mp, ops, opts);
    await s.start(opts);
    return s;
  }

  private constructor(mountpoint: string, ops: FuseOps, opts: MountOptions) {
    super();
    this.mountpoint = mountpoint;
    this.ops = ops;
    this.handleSignals = opts.handleSignals ?? true;
    const table = ops as Record<string, Handler | undefined>;
    this.handlers = Array.from({ length: FUSE_OP_COUNT }, (_, i) => {
      const fn = table[FuseOp[i]!];
      return typeof fn === 'function' ? fn.bind(ops) : undefined;
    });
    this.native = new (fuseAddon().FuseSession)((kind, info) => this.onEvent(kind, info));
  }

  private async start(opts: MountOptions): Promise<void> {
    const maxWrite = opts.maxWrite ?? MiB;
    const maxRead = opts.maxRead ?? maxWrite;
    const workers = opts.workers ?? 4;
    if (!Number.isInteger(maxWrite) || maxWrite < 4096 || maxWrite > MiB) throw new FuseError('maxWrite must be 4 KiB..1 MiB', errno.EINVAL);
    if (!Number.isInteger(maxRead) || maxRead < 4096 || maxRead > MiB) throw new FuseError('maxRead must be 4 KiB..1 MiB', errno.EINVAL);
    if (!Number.isInteger(workers) || workers < 1 || workers > 256) throw new FuseError('workers must be 1..256', errno.EINVAL);
    const o = [`fsname=${opts.fsname ?? 'cubefs'}`, `subtype=${opts.subtype ?? 'cubefs'}`, `max_read=${maxRead}`, ...(opts.options ?? [])];
    const bad = o.find((x) => x.includes(',') || x.length === 0);
    if (bad !== undefined) throw new FuseError(`bad mount option "${bad}"`, errno.EINVAL);
    const implemented = new Uint8Array(FUSE_OP_COUNT);
    this.handlers.forEach((h, i) => { implemented[i] = h ? 1 : 0; });

    if (opts.pool !== undefined && typeof opts.pool.receiveAllocator !== 'function') {
      throw new FuseError('pool must be a Pool (src/pool)', errno.EINVAL);
    }
    const allocator = opts.pool?.receiveAllocator();
    const inited = new Promise<void>((resolve, reject) => { this.initWait = { resolve, reject }; });
    try {
      this.native.mount(this.mountpoint, ['-o', o.join(',')], workers, maxWrite, maxRead, implemented,
        (op, id, args, uid, gid, pid) => this.dispatch(op, id, args, uid, gid, pid), allocator,
        opts.writebackCache ? MOUNT_WRITEBACK_CACHE : 0);
    } catch (e) {
      this.closed = true;
      throw new FuseError((e as Error).message, errnoOf(e), this.mountpoint, e);
    }
    live.add(this);
    installExitHook();
    if (this.handleSignals) installSignals();
    try {
      await inited;
    } catch (e) {
      await this.unmount();
      throw e;
    }
    log('mounted %s (max_write %d)', this.mountpoint, this.conn?.maxWrite);
  }

  /** Unmounts (lazily if busy) and closes. Idempotent; resolves after 'unmounted'. */
  unmount(): Promise<void> {
    if (!this.unmounting) {
      // The work is synchronous (it must be, for the 'exit' hook); the promise is for callers.
      let failure: unknown = null;
      try {
        this.finish();
      } catch (e) {
        failure = e;
      }
      this.unmounting = failure === null ? Promise.resolve() : Promise.reject(failure);
    }
    return this.unmounting;
  }

  /** Native counters plus the JS side's: handler failures, missing replies, double replies. */
  stats(): NativeStats & { handlerErrors: number; unanswered: number; misuse: number } {
    return { ...this.native.stats(), ...this.counters };
  }

  private finish(): void {
    if (this.closed) return;
    this.closed = true;
    this.native.close();
    live.delete(this);
    if (![...live].some((s) => s.handleSignals)) uninstallSignals();
    this.initWait?.reject(new FuseError(`the session at ${this.mountpoint} ended before INIT`, errno.EIO, this.mountpoint));
    this.initWait = null;
    try {
      this.ops.destroy?.();
    } catch (e) {
      this.report(e as Error);
    }
    log('unmounted %s', this.mountpoint);
    this.emit('unmounted');
  }

  private onEvent(kind: 'init' | 'ended', info: Record<string, number>): void {
    if (kind === 'init') {
      this.conn = info as unknown as ConnInfo;
      try {
        this.ops.init?.(this.conn);
      } catch (e) {
        this.report(e as Error);
      }
      this.initWait?.resolve();
      this.initWait = null;
      return;
    }
    if (info.errno) this.report(new FuseError(`FUSE device error on ${this.mountpoint}`, info.errno!, this.mountpoint));
    void this.unmount();
  }

  private dispatch(op: number, id: number, args: Record<string, unknown>, uid: number, gid: number, pid: number): void {
    const req = new FuseRequest(this, this.native, op, id, uid, gid, pid);
    const h = this.handlers[op];
    if (h === undefined) {
      req.fallback(errno.ENOSYS);
      return;
    }
    let ret: void | Promise<void>;
    try {
      ret = h(req, args as never);
    } catch (e) {
      this.failed(req, e);
      return;
    }
    if (ret !== undefined && typeof (ret as Promise<void>).then === 'function') {
      (ret as Promise<void>).then(() => this.settled(req), (e: unknown) => this.failed(req, e));
    } else {
      this.settled(req);
    }
  }

  private settled(req: FuseRequest): void {
    if (req.replied) return;
    this.counters.unanswered++;
    this.report(new FuseError(`${FuseOp[req.op]} handler returned without replying: answered EIO`, errno.EIO));
    req.fallback(errno.EIO);
  }

  private failed(req: FuseRequest, e: unknown): void {
    this.counters.handlerErrors++;
    const err = e instanceof Error ? e : new Error(String(e));
    if (req.replied) {
      this.report(new FuseError(`${FuseOp[req.op]} handler failed after replying: ${err.message}`, errno.EIO, undefined, err));
      return;
    }
    const n = errnoOf(e);
    this.report(new FuseError(`${FuseOp[req.op]} handler failed: ${err.message}: answered ${n}`, n, undefined, err));
    req.fallback(n);
  }

  /** @internal A reply-protocol bug in a handler: logged, counted, never sent. */
  misuse(req: FuseRequest, what: string): void {
    this.counters.misuse++;
    this.report(new FuseError(`${FuseOp[req.op]} request ${req.id}: ${what}`, errno.EIO));
  }

  private report(e: Error): void {
    log('%s', e.message);
    if (this.listenerCount('error') > 0) this.emit('error', e);
  }
}
