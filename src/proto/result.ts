/**
 * Result codes (upstream proto/packet.go) and the one table that maps them to errno values and to the
 * SDK's stable error codes. Everything above src/proto reads failures through this table only.
 */
import { constants as os } from 'node:os';

export enum Result {
  Init = 0x00,
  Ok = 0xf0,
  DirQuota = 0xf1,
  ConflictExtents = 0xf2,
  IntraGroupNet = 0xf3,
  ArgMismatch = 0xf4,
  NotExist = 0xf5,
  DiskNoSpace = 0xf6,
  Disk = 0xf7,
  Err = 0xf8,
  Again = 0xf9,
  Exist = 0xfa,
  InodeFull = 0xfb,
  TryOtherAddr = 0xfc,
  NotPerm = 0xfd,
  NotEmpty = 0xfe,
  NoSpace = 0xee,
  Forbid = 0xef,
  LimitedIo = 0xb1,
  TxConflict = 0xe1,
  WriteOpOfProtoVerForbidden = 0x88,
}

const E = os.errno;

interface ResultInfo {
  name: string;
  errno: number;
  /** Upstream retries these on the same or another replica. */
  retry: boolean;
}

const table: Record<number, ResultInfo> = {
  [Result.Init]: { name: 'Init', errno: E.EIO, retry: false },
  [Result.Ok]: { name: 'Ok', errno: 0, retry: false },
  [Result.DirQuota]: { name: 'DirQuota', errno: E.EDQUOT, retry: false },
  [Result.ConflictExtents]: { name: 'ConflictExtents', errno: E.EIO, retry: false },
  [Result.IntraGroupNet]: { name: 'IntraGroupNet', errno: E.EIO, retry: true },
  [Result.ArgMismatch]: { name: 'ArgMismatch', errno: E.EINVAL, retry: false },
  [Result.NotExist]: { name: 'NotExist', errno: E.ENOENT, retry: false },
  [Result.DiskNoSpace]: { name: 'DiskNoSpace', errno: E.ENOSPC, retry: false },
  [Result.Disk]: { name: 'Disk', errno: E.EIO, retry: false },
  [Result.Err]: { name: 'Err', errno: E.EIO, retry: true },
  [Result.Again]: { name: 'Again', errno: E.EAGAIN, retry: true },
  [Result.Exist]: { name: 'Exist', errno: E.EEXIST, retry: false },
  [Result.InodeFull]: { name: 'InodeFull', errno: E.ENOMEM, retry: false },
  [Result.TryOtherAddr]: { name: 'TryOtherAddr', errno: E.EAGAIN, retry: true },
  [Result.NotPerm]: { name: 'NotPerm', errno: E.EPERM, retry: false },
  [Result.NotEmpty]: { name: 'NotEmpty', errno: E.ENOTEMPTY, retry: false },
  [Result.NoSpace]: { name: 'NoSpace', errno: E.ENOSPC, retry: false },
  [Result.Forbid]: { name: 'Forbid', errno: E.EPERM, retry: false },
  [Result.LimitedIo]: { name: 'LimitedIo', errno: E.EAGAIN, retry: true },
  [Result.TxConflict]: { name: 'TxConflict', errno: E.EAGAIN, retry: true },
  [Result.WriteOpOfProtoVerForbidden]: { name: 'WriteOpOfProtoVerForbidden', errno: E.EPERM, retry: false },
};

export function resultName(rc: number): string {
  return table[rc]?.name ?? `Result(0x${rc.toString(16)})`;
}

/** errno for a result code, as upstream's sdk/meta parseStatus: unknown codes are EIO. */
export function resultErrno(rc: number): number {
  return table[rc]?.errno ?? E.EIO;
}

export function resultRetryable(rc: number): boolean {
  return table[rc]?.retry ?? false;
}
