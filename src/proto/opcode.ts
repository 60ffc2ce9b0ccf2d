/**
 * CubeFS opcodes (upstream proto/packet.go). One enum for every op this project sends, serves or decodes.
 */
export enum Op {
  // data
  CreateExtent = 0x01,
  MarkDelete = 0x02,
  Write = 0x03,
  Read = 0x04,
  StreamRead = 0x05,
  StreamFollowerRead = 0x06,
  ExtentRepairRead = 0x07,
  RandomWrite = 0x0f,
  GetAllWatermarks = 0x10,
  SyncRandomWrite = 0x12,
  SyncWrite = 0x13,
  // meta
  MetaCreateInode = 0x20,
  MetaUnlinkInode = 0x21,
  MetaCreateDentry = 0x22,
  MetaDeleteDentry = 0x23,
  MetaOpen = 0x24,
  MetaLookup = 0x25,
  MetaReadDir = 0x26,
  MetaInodeGet = 0x27,
  MetaBatchInodeGet = 0x28,
  MetaExtentsAdd = 0x29,
  MetaExtentsDel = 0x2a,
  MetaExtentsList = 0x2b,
  MetaUpdateDentry = 0x2c,
  MetaTruncate = 0x2d,
  MetaLinkInode = 0x2e,
  MetaEvictInode = 0x2f,
  MetaSetattr = 0x30,
  MetaReleaseOpen = 0x31,
  MetaSetXAttr = 0x35,
  MetaGetXAttr = 0x36,
  MetaRemoveXAttr = 0x37,
  MetaListXAttr = 0x38,
  MetaBatchGetXAttr = 0x39,
  MetaExtentAddWithCheck = 0x3a,
  MetaReadDirLimit = 0x3d,
  CreateMetaPartition = 0x40,
  MetaNodeHeartbeat = 0x41,
  LoadMetaPartition = 0x44,
  CreateDataPartition = 0x60,
  DataNodeHeartbeat = 0x63,
  MetaRenewalForbiddenMigration = 0x83,
  MetaTxCreate = 0xa0,
  MetaTxCreateInode = 0xa1,
  MetaTxUnlinkInode = 0xa2,
  MetaTxCreateDentry = 0xa3,
  TxCommit = 0xa4,
  TxRollback = 0xa5,
  TxCommitRM = 0xa6,
  TxRollbackRM = 0xa7,
  MetaTxDeleteDentry = 0xa8,
  MetaTxUpdateDentry = 0xa9,
  MetaTxLinkInode = 0xaa,
  MetaTxGet = 0xab,
  MetaGetUniqID = 0xac,
  // The embedded cluster's own, between its datanodes only: a raft leader's copy of a RandomWrite to a
  // follower (upstream replicates RandomWrite through raft, which the embedded datanodes do not run).
  ReplicateRandomWrite = 0xd0,
  ReplicateSyncRandomWrite = 0xd1,
}

/** Ops whose requests carry no data on the wire: Size is the number of bytes wanted. */
export function isReadOp(op: number): boolean {
  return op === Op.Read || op === Op.StreamRead || op === Op.StreamFollowerRead || op === Op.ExtentRepairRead;
}

export function isMetaOp(op: number): boolean {
  return (op >= 0x20 && op <= 0x5f) || (op >= 0x80 && op <= 0xaf);
}

export function opName(op: number): string {
  const n = (Op as unknown as Record<number, string>)[op];
  return n ? `Op${n}` : `Op(0x${op.toString(16).padStart(2, '0')})`;
}
