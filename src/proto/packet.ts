/**
 * The CubeFS packet (upstream proto/packet.go): a 57-byte base header, extended to 65 bytes (VerSeq) or
 * 69 bytes (VerSeq + ProtoVersion) by flag bits in ExtentType, an optional version list, then Arg and Data.
 * All integers big-endian. Requests from this project always use the 69-byte form; replies are parsed by
 * their own flags.
 *
 * Payload handling: `data` is whatever Buffer the caller hands in; encoding produces the header (and arg)
 * only, so a writer can send header and payload as two writes without copying the payload.
 */
import { isReadOp, Op } from './opcode.js';
import { Result } from './result.js';

export const MAGIC = 0xff;
export const HEADER_SIZE = 57;
export const HEADER_SIZE_VER = 65;
export const HEADER_SIZE_PROTO = 69;
export const VERSION_ENTRY_SIZE = 17;
export const PROTO_VERSION_1 = 1;

export const ExtentType = {
  Tiny: 0x00,
  Normal: 0x01,
  ProtoVersionFlag: 0x10,
  VersionListFlag: 0x40,
  MultiVersionFlag: 0x80,
} as const;

/** Largest data of one packet on the wire (util.BlockSize / ReadBlockSize). */
export const MAX_PACKET_DATA = 128 * 1024;
/** Bound on what a reader accepts, so a corrupt Size cannot make us allocate gigabytes. */
export const MAX_WIRE_DATA = 16 * 1024 * 1024;
export const MAX_WIRE_ARG = 64 * 1024;

export interface VersionInfo {
  ver: bigint;
  delTime: bigint;
  status: number;
}

export interface Packet {
  extentType: number;
  opcode: number;
  resultCode: number;
  remainingFollowers: number;
  crc: number;
  /** Size field: Data length, or for read requests the number of bytes wanted. */
  size: number;
  partitionId: number;
  extentId: number;
  extentOffset: number;
  reqId: bigint;
  kernelOffset: number;
  verSeq: bigint;
  protoVersion: number;
  verList: VersionInfo[] | null;
  arg: Buffer;
  data: Buffer;
}

export type PacketInit = Partial<Packet> & { opcode: number };

const EMPTY = Buffer.alloc(0);

/** A request in upstream's current form: flag 0x10 set, ProtoVersion 1. */
export function newPacket(init: PacketInit): Packet {
  const data = init.data ?? EMPTY;
  return {
    extentType: (init.extentType ?? ExtentType.Tiny) | ExtentType.ProtoVersionFlag,
    opcode: init.opcode,
    resultCode: init.resultCode ?? Result.Init,
    remainingFollowers: init.remainingFollowers ?? 0,
    crc: init.crc ?? 0,
    size: init.size ?? data.length,
    partitionId: init.partitionId ?? 0,
    extentId: init.extentId ?? 0,
    extentOffset: init.extentOffset ?? 0,
    reqId: init.reqId ?? 0n,
    kernelOffset: init.kernelOffset ?? 0,
    verSeq: init.verSeq ?? 0n,
    protoVersion: init.protoVersion ?? PROTO_VERSION_1,
    verList: init.verList ?? null,
    arg: init.arg ?? EMPTY,
    data,
  };
}

/** A reply to `req`: same routing fields, the reply's own header form follows the request's flags. */
export function newReply(req: Packet, resultCode: number, data: Buffer = EMPTY, over: Partial<Packet> = {}): Packet {
  return {
    ...req,
    resultCode,
    verList: null,
    extentType: req.extentType & ~ExtentType.VersionListFlag,
    arg: EMPTY,
    data,
    size: data.length,
    crc: req.crc,
    ...over,
  };
}

export function headerSizeFor(extentType: number, opcode: number): number {
  if (extentType & ExtentType.ProtoVersionFlag) return HEADER_SIZE_PROTO;
  if (extentType & ExtentType.MultiVersionFlag || opcode === 0xb3) return HEADER_SIZE_VER;
  return HEADER_SIZE;
}

/** Bytes of Data that follow the header on the wire: read requests carry none. */
export function wireDataLength(p: Pick<Packet, 'opcode' | 'resultCode' | 'size'>): number {
  return p.resultCode === Result.Init && isReadOp(p.opcode) ? 0 : p.size;
}

/** Header (with version list) and arg, ready to be followed on the wire by `p.data`. */
export function encodeHead(p: Packet): Buffer {
  const hs = headerSizeFor(p.extentType, p.opcode);
  const vl = p.extentType & ExtentType.VersionListFlag ? 2 + VERSION_ENTRY_SIZE * (p.verList?.length ?? 0) : 0;
  const b = Buffer.allocUnsafe(hs + vl + p.arg.length);
  b[0] = MAGIC;
  b[1] = p.extentType;
  b[2] = p.opcode;
  b[3] = p.resultCode;
  b[4] = p.remainingFollowers;
  b.writeUInt32BE(p.crc >>> 0, 5);
  b.writeUInt32BE(p.size, 9);
  b.writeUInt32BE(p.arg.length, 13);
  b.writeBigUInt64BE(BigInt(p.partitionId), 17);
  b.writeBigUInt64BE(BigInt(p.extentId), 25);
  b.writeBigInt64BE(BigInt(p.extentOffset), 33);
  b.writeBigInt64BE(p.reqId, 41);
  b.writeBigUInt64BE(BigInt(p.kernelOffset), 49);
  let o = HEADER_SIZE;
  if (hs >= HEADER_SIZE_VER) { b.writeBigUInt64BE(p.verSeq, o); o += 8; }
  if (hs === HEADER_SIZE_PROTO) { b.writeUInt32BE(p.protoVersion, o); o += 4; }
  if (vl) {
    const list = p.verList ?? [];
    b.writeUInt16BE(list.length, o); o += 2;
    for (const v of list) {
      b.writeBigUInt64BE(v.ver, o);
      b.writeBigInt64BE(v.delTime, o + 8);
      b[o + 16] = v.status;
      o += VERSION_ENTRY_SIZE;
    }
  }
  p.arg.copy(b, o);
  return b;
}

/** The whole packet as one buffer (tests, small control packets). Data paths use encodeHead + data. */
export function encodePacket(p: Packet): Buffer {
  const n = wireDataLength(p);
  return n === 0 ? encodeHead(p) : Buffer.concat([encodeHead(p), p.data.subarray(0, n)]);
}

export class PacketError extends Error {
  readonly code = 'EBADPACKET';
}

interface HeadInfo { headLen: number; argLen: number; dataLen: number }

/**
 * How long the packet starting at buf[0] is, or null if more bytes are needed to tell.
 * Throws PacketError on a bad magic or absurd lengths.
 */
export function peekPacket(buf: Buffer): HeadInfo | null {
  if (buf.length < 1) return null;
  if (buf[0] !== MAGIC) throw new PacketError(`bad packet magic 0x${buf[0]!.toString(16)} (want 0xff)`);
  if (buf.length < HEADER_SIZE) return null;
  const et = buf[1]!, op = buf[2]!;
  let headLen = headerSizeFor(et, op);
  if (et & ExtentType.VersionListFlag) {
    if (buf.length < headLen + 2) return null;
    headLen += 2 + VERSION_ENTRY_SIZE * buf.readUInt16BE(headLen);
  }
  const size = buf.readUInt32BE(9);
  const argLen = buf.readUInt32BE(13);
  if (argLen > MAX_WIRE_ARG) throw new PacketError(`packet arg length ${argLen} exceeds ${MAX_WIRE_ARG}`);
  const dataLen = wireDataLength({ opcode: op, resultCode: buf[3]!, size });
  if (dataLen > MAX_WIRE_DATA) throw new PacketError(`packet data length ${dataLen} exceeds ${MAX_WIRE_DATA}`);
  return { headLen, argLen, dataLen };
}

/** Decode one whole packet from buf (exactly or at its start). Arg and data are views into buf. */
export function decodePacket(buf: Buffer): { packet: Packet; length: number } {
  const info = peekPacket(buf);
  const total = info ? info.headLen + info.argLen + info.dataLen : Infinity;
  if (!info || buf.length < total) throw new PacketError(`truncated packet: have ${buf.length} bytes, need ${total}`);
  const et = buf[1]!, op = buf[2]!;
  const hs = headerSizeFor(et, op);
  let o = HEADER_SIZE;
  let verSeq = 0n, protoVersion = 0;
  if (hs >= HEADER_SIZE_VER) { verSeq = buf.readBigUInt64BE(o); o += 8; }
  if (hs === HEADER_SIZE_PROTO) { protoVersion = buf.readUInt32BE(o); o += 4; }
  let verList: VersionInfo[] | null = null;
  if (et & ExtentType.VersionListFlag) {
    const n = buf.readUInt16BE(o); o += 2;
    verList = [];
    for (let i = 0; i < n; i++, o += VERSION_ENTRY_SIZE) {
      verList.push({ ver: buf.readBigUInt64BE(o), delTime: buf.readBigInt64BE(o + 8), status: buf[o + 16]! });
    }
  }
  const arg = buf.subarray(o, o + info.argLen);
  o += info.argLen;
  const data = buf.subarray(o, o + info.dataLen);
  const packet: Packet = {
    extentType: et,
    opcode: op,
    resultCode: buf[3]!,
    remainingFollowers: buf[4]!,
    crc: buf.readUInt32BE(5),
    size: buf.readUInt32BE(9),
    partitionId: Number(buf.readBigUInt64BE(17)),
    extentId: Number(buf.readBigUInt64BE(25)),
    extentOffset: Number(buf.readBigInt64BE(33)),
    reqId: buf.readBigInt64BE(41),
    kernelOffset: Number(buf.readBigUInt64BE(49)),
    verSeq,
    protoVersion,
    verList,
    arg,
    data,
  };
  return { packet, length: total };
}

/**
 * Incremental decoder for a byte stream: push() chunks as they arrive, get whole packets back.
 * Each packet's bytes are gathered into one buffer (a single copy out of the socket's chunks).
 */
export class PacketReader {
  private chunks: Buffer[] = [];
  private have = 0;

  push(chunk: Buffer): Packet[] {
    this.chunks.push(chunk);
    this.have += chunk.length;
    const out: Packet[] = [];
    for (;;) {
      const head = this.peekBytes(HEADER_SIZE_PROTO + 2);
      const info = peekPacket(head);
      if (!info) return out;
      const total = info.headLen + info.argLen + info.dataLen;
      if (this.have < total) return out;
      const bytes = this.take(total);
      out.push(decodePacket(bytes).packet);
    }
  }

  get buffered(): number {
    return this.have;
  }

  /** Up to n bytes from the front, merging chunks only when the header straddles them. */
  private peekBytes(n: number): Buffer {
    const first = this.chunks[0];
    if (!first) return Buffer.alloc(0);
    if (first.length >= n || this.chunks.length === 1) return first;
    const merged = Buffer.concat(this.chunks);
    this.chunks = [merged];
    return merged;
  }

  private take(n: number): Buffer {
    const first = this.chunks[0]!;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let o = 0;
      while (o < n) {
        const c = this.chunks[0]!;
        const k = Math.min(c.length, n - o);
        c.copy(out, o, 0, k);
        o += k;
        if (k === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(k);
      }
    }
    this.have -= n;
    return out;
  }
}

export function describePacket(p: Packet): string {
  return `op=0x${p.opcode.toString(16)} rc=0x${p.resultCode.toString(16)} pid=${p.partitionId} eid=${p.extentId} ` +
    `eoff=${p.extentOffset} size=${p.size} reqid=${p.reqId}`;
}

export { Op };
