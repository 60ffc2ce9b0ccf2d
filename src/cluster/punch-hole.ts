/**
 * native/store/punch_hole.h, typed: punchHole(fd, offset, length) frees the blocks of a range of an open
 * file and keeps its size (fallocate PUNCH_HOLE | KEEP_SIZE); the range reads as zeros afterwards. Node's
 * fs has no fallocate. Used by the extent store for deleted ranges of tiny extents.
 */
import { loadAddon } from '../util/addon.js';

interface StoreAddon {
  punchHole(fd: number, offset: number, length: number): void;
}

let addon: StoreAddon | null = null;

/**
 * Punch [offset, offset+length) out of the file open as `fd` (synchronous: one quick syscall). Throws a
 * TypeError for arguments that are not non-negative integers, else an Error with `code` and `errno` (see
 * cannotPunch). An addon that cannot be loaded, or one built before punchHole, throws code 'ENOSYS'.
 */
export function punchHole(fd: number, offset: number, length: number): void {
  if (!addon) {
    let a: Partial<StoreAddon>;
    try {
      a = loadAddon() as Partial<StoreAddon>;
    } catch (e) {
      throw Object.assign(new Error(`punchHole: native addon unavailable: ${(e as Error).message}`), { code: 'ENOSYS' });
    }
    if (typeof a.punchHole !== 'function') {
      throw Object.assign(new Error('punchHole: the native addon has no punchHole (rebuild it: npx node-gyp rebuild)'), { code: 'ENOSYS' });
    }
    addon = a as StoreAddon;
  }
  addon.punchHole(fd, offset, length);
}

/**
 * The error says holes cannot be punched here at all (the file system does not support it, or no addon),
 * rather than that this one call failed: the caller writes zeros instead. ENOTSUP is EOPNOTSUPP on Linux.
 */
export function cannotPunch(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException | null)?.code;
  return code === 'EOPNOTSUPP' || code === 'ENOTSUP' || code === 'ENOSYS';
}
