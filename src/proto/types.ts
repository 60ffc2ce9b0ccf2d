/**
 * JSON shapes on the wire (upstream proto/fs_proto.go, proto/model.go, proto/admin_proto.go).
 * Keys are exactly upstream's: Go field names where the struct has no json tags, the tags otherwise.
 */

/** InodeInfo: times are RFC3339 strings with second resolution, tgt (symlink target) base64 or null. */
export interface InodeInfo {
  ino: number;
  mode: number;
  nlink: number;
  sz: number;
  uid: number;
  gid: number;
  gen: number;
  mt: string;
  ct: string;
  at: string;
  tgt: string | null;
  [extra: string]: unknown;
}

export interface ExtentKey {
  FileOffset: number;
  PartitionId: number;
  ExtentId: number;
  ExtentOffset: number;
  Size: number;
  CRC: number;
  SnapInfo?: { VerSeq: number; IsSplit: boolean; ModGen: number } | null;
}

export interface Dentry {
  name: string;
  ino: number;
  type: number;
}

export interface MetaPartitionView {
  PartitionID: number;
  Start: number;
  End: number;
  MaxInodeID?: number;
  InodeCount?: number;
  DentryCount?: number;
  Members: string[];
  LeaderAddr: string;
  Status: number;
  [extra: string]: unknown;
}

export interface DataPartitionView {
  PartitionType: number;
  PartitionID: number;
  Status: number;
  ReplicaNum: number;
  Hosts: string[];
  LeaderAddr: string;
  Epoch: number;
  IsRecover: boolean;
  [extra: string]: unknown;
}

export interface DataPartitionsView {
  DataPartitions: DataPartitionView[];
  VolReadOnly?: boolean;
  [extra: string]: unknown;
}

export interface VolView {
  Name: string;
  Owner: string;
  Status: number;
  FollowerRead: boolean;
  MetaPartitions: MetaPartitionView[];
  DataPartitions: DataPartitionView[];
  [extra: string]: unknown;
}

export interface VolStat {
  Name: string;
  TotalSize: number;
  UsedSize: number;
  InodeCount: number;
  [extra: string]: unknown;
}

export interface ClusterIp {
  Cluster: string;
  Ip: string;
  [extra: string]: unknown;
}

/** Partition status in master views. */
export const PartitionStatus = { Unavailable: -1, ReadOnly: 1, ReadWrite: 2 } as const;

/** Master HTTP envelope. */
export interface MasterReply<T> {
  code: number;
  msg: string;
  data: T;
}

/** Master error codes this client gives its own wording (upstream proto/admin_proto.go). */
export const MasterCode = {
  Success: 0,
  VolNotExists: 7,
  AuthKeyMismatch: 34,
  /** ErrCodeNoPermission, in the release whose auth key mismatch is 34: the embedded master's admin secret. */
  NoPermission: 57,
} as const;

/**
 * The embedded cluster's admin secret travels in this header, not in the query: a URL ends up in logs,
 * proxies' access logs and (typed into curl) the process list and shell history; a header does not.
 */
export const ADMIN_SECRET_HEADER = 'X-CubeFS-Secret';

/** Setattr valid bits (upstream proto.AttrMode ...). */
export const AttrValid = { Mode: 1, Uid: 2, Gid: 4, ModifyTime: 8, AccessTime: 16 } as const;

/** Go time in RFC3339 at second resolution, as upstream marshals inode times. */
export function toRfc3339(unixSeconds: number): string {
  return new Date(Math.floor(unixSeconds) * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

export function fromRfc3339(s: string): number {
  const t = Date.parse(s);
  return Number.isNaN(t) ? 0 : Math.floor(t / 1000);
}

/** Where the Go zero time comes back as "0001-01-01T00:00:00Z". */
export const GO_ZERO_TIME = '0001-01-01T00:00:00Z';
