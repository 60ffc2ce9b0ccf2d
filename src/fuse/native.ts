/**
 * The addon's FUSE exports, typed (the addon itself is loaded once by src/util/addon.ts).
 */
import { FUSE_OP_COUNT, FuseOp, type NativeStats } from './types.js';
import type { ReceiveAllocatorHandle } from '../pool/index.js';
import { loadAddon } from '../util/addon.js';

/** mount() flags (native/fuse/session.h). */
export const MOUNT_WRITEBACK_CACHE = 1;

export type OnRequest = (op: number, id: number, args: Record<string, unknown>, uid: number, gid: number, pid: number) => void;
export type OnEvent = (kind: 'init' | 'ended', info: Record<string, number>) => void;

/** native/fuse/session.h Session. Reply methods return false when the id is not outstanding. */
export interface NativeSession {
  mount(mountpoint: string, argv: string[], workers: number, maxWrite: number, maxRead: number,
    implemented: Uint8Array, onRequest: OnRequest, allocator?: ReceiveAllocatorHandle, flags?: number): void;
  close(): void;
  stats(): NativeStats;
  replyErr(id: number, errno: number): boolean;
  replyNone(id: number): boolean;
  replyEntry(id: number, attr: Float64Array, generation: number, attrTimeout: number, entryTimeout: number): boolean;
  replyCreate(id: number, attr: Float64Array, generation: number, attrTimeout: number, entryTimeout: number,
    fh: number, openFlags: number): boolean;
  replyAttr(id: number, attr: Float64Array, timeout: number): boolean;
  replyOpen(id: number, fh: number, openFlags: number): boolean;
  replyWrite(id: number, count: number): boolean;
  replyBuf(id: number, data?: Uint8Array): boolean;
  replyStatfs(id: number, st: Float64Array): boolean;
  replyReadlink(id: number, target: string): boolean;
  replyXattr(id: number, size: number): boolean;
  replyLseek(id: number, offset: number): boolean;
  dirAdd(id: number, name: string, ino: number, mode: number, nextOffset: number): boolean;
  dirAddPlus(id: number, name: string, attr: Float64Array, generation: number, attrTimeout: number,
    entryTimeout: number, nextOffset: number): boolean;
  replyDir(id: number): boolean;
}

interface Addon {
  FuseSession: new (onEvent: OnEvent) => NativeSession;
  fuseOpNames: string[];
  fuseVersion: number;
}

let addon: Addon | null = null;

export function fuseAddon(): Addon {
  if (addon) return addon;
  const a = loadAddon() as unknown as Addon;
  if (a.fuseOpNames.length !== FUSE_OP_COUNT || a.fuseOpNames.some((n, i) => FuseOp[i] !== n)) {
    throw new Error(`native FUSE op table does not match FuseOp: ${a.fuseOpNames.join(',')}`);
  }
  addon = a;
  return a;
}
