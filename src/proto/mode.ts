/**
 * Go os.FileMode <-> POSIX st_mode. CubeFS stores the Go form in inodes and dentries.
 */
export const GoMode = {
  Dir: 2 ** 31,
  Append: 2 ** 30,
  Exclusive: 2 ** 29,
  Temporary: 2 ** 28,
  Symlink: 2 ** 27,
  Device: 2 ** 26,
  NamedPipe: 2 ** 25,
  Socket: 2 ** 24,
  Setuid: 2 ** 23,
  Setgid: 2 ** 22,
  CharDevice: 2 ** 21,
  Sticky: 2 ** 20,
  Irregular: 2 ** 19,
} as const;

export const S_IFMT = 0o170000;
export const S_IFSOCK = 0o140000;
export const S_IFLNK = 0o120000;
export const S_IFREG = 0o100000;
export const S_IFBLK = 0o060000;
export const S_IFDIR = 0o040000;
export const S_IFCHR = 0o020000;
export const S_IFIFO = 0o010000;

const has = (m: number, bit: number): boolean => Math.floor(m / bit) % 2 === 1;

/** Go FileMode (up to 32 bits, so plain arithmetic, not JS bit ops on signed ints) to POSIX mode. */
export function goModeToPosix(m: number): number {
  let out = m % 0o1000;
  if (has(m, GoMode.Dir)) out |= S_IFDIR;
  else if (has(m, GoMode.Symlink)) out |= S_IFLNK;
  else if (has(m, GoMode.Device)) out |= has(m, GoMode.CharDevice) ? S_IFCHR : S_IFBLK;
  else if (has(m, GoMode.CharDevice)) out |= S_IFCHR;
  else if (has(m, GoMode.NamedPipe)) out |= S_IFIFO;
  else if (has(m, GoMode.Socket)) out |= S_IFSOCK;
  else out |= S_IFREG;
  if (has(m, GoMode.Setuid)) out |= 0o4000;
  if (has(m, GoMode.Setgid)) out |= 0o2000;
  if (has(m, GoMode.Sticky)) out |= 0o1000;
  return out;
}

export function posixToGoMode(mode: number): number {
  let out = mode & 0o777;
  switch (mode & S_IFMT) {
    case S_IFDIR: out += GoMode.Dir; break;
    case S_IFLNK: out += GoMode.Symlink; break;
    case S_IFCHR: out += GoMode.Device + GoMode.CharDevice; break;
    case S_IFBLK: out += GoMode.Device; break;
    case S_IFIFO: out += GoMode.NamedPipe; break;
    case S_IFSOCK: out += GoMode.Socket; break;
    default: break;
  }
  if (mode & 0o4000) out += GoMode.Setuid;
  if (mode & 0o2000) out += GoMode.Setgid;
  if (mode & 0o1000) out += GoMode.Sticky;
  return out;
}

export const isGoDir = (m: number): boolean => has(m, GoMode.Dir);
export const isGoSymlink = (m: number): boolean => has(m, GoMode.Symlink);
export const isGoRegular = (m: number): boolean => (goModeToPosix(m) & S_IFMT) === S_IFREG;
