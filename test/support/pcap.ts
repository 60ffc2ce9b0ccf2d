/**
 * A small reader for classic pcap files (not pcapng) holding IPv4 + TCP over Ethernet, raw IP or Linux
 * cooked captures, and a TCP stream reassembler for tests against captured traffic.
 *
 * reassemble() orders each direction's payload by sequence number (relative to the SYN when captured,
 * else to the lowest sequence seen), drops retransmitted bytes, and keeps what is missing as gaps: a
 * stream is a list of contiguous runs. Nothing here knows about CubeFS.
 */

export const LinkType = { Ethernet: 1, Raw: 101, LinuxSll: 113, Ipv4: 228 } as const;

export interface TcpSegment {
  /** 1-based frame number, as tshark counts. */
  frame: number;
  /** Seconds since the epoch, microsecond (or nanosecond) resolution. */
  ts: number;
  src: string;
  dst: string;
  seq: number;
  flags: number;
  payload: Buffer;
}

export interface PcapFile {
  linkType: number;
  snapLen: number;
  segments: TcpSegment[];
  /** Frames that were not IPv4 + TCP, or were cut short by the snap length. */
  skipped: { frame: number; why: string }[];
}

export const TcpFlag = { FIN: 0x01, SYN: 0x02, RST: 0x04, PSH: 0x08, ACK: 0x10 } as const;

export function readPcap(buf: Buffer): PcapFile {
  if (buf.length < 24) throw new Error('pcap: file shorter than its global header');
  const magic = buf.readUInt32LE(0);
  let le: boolean;
  let nano = false;
  if (magic === 0xa1b2c3d4) le = true;
  else if (magic === 0xd4c3b2a1) le = false;
  else if (magic === 0xa1b23c4d) { le = true; nano = true; }
  else if (magic === 0x4d3cb2a1) { le = false; nano = true; }
  else if (magic === 0x0a0d0d0a) throw new Error('pcap: this is pcapng; only classic pcap is read');
  else throw new Error(`pcap: bad magic 0x${magic.toString(16)}`);
  const u16 = (o: number): number => (le ? buf.readUInt16LE(o) : buf.readUInt16BE(o));
  const u32 = (o: number): number => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
  const major = u16(4);
  if (major !== 2) throw new Error(`pcap: version ${major}.${u16(6)} not supported`);
  const snapLen = u32(16);
  const linkType = u32(20) & 0x0fffffff;
  const segments: TcpSegment[] = [];
  const skipped: { frame: number; why: string }[] = [];
  let o = 24;
  let frame = 0;
  while (o + 16 <= buf.length) {
    frame++;
    const sec = u32(o), frac = u32(o + 4), incl = u32(o + 8), orig = u32(o + 12);
    o += 16;
    if (o + incl > buf.length) throw new Error(`pcap: frame ${frame} runs past the end of the file`);
    const f = buf.subarray(o, o + incl);
    o += incl;
    const ts = sec + frac / (nano ? 1e9 : 1e6);
    if (incl < orig) {
      skipped.push({ frame, why: `captured ${incl} of ${orig} bytes` });
      continue;
    }
    let ip: Buffer;
    if (linkType === LinkType.Ethernet) {
      let off = 12;
      let etherType = f.readUInt16BE(off);
      while (etherType === 0x8100 || etherType === 0x88a8) { off += 4; etherType = f.readUInt16BE(off); }
      if (etherType !== 0x0800) { skipped.push({ frame, why: `ethertype 0x${etherType.toString(16)}` }); continue; }
      ip = f.subarray(off + 2);
    } else if (linkType === LinkType.LinuxSll) {
      if (f.readUInt16BE(14) !== 0x0800) { skipped.push({ frame, why: 'not IPv4' }); continue; }
      ip = f.subarray(16);
    } else if (linkType === LinkType.Raw || linkType === LinkType.Ipv4) {
      ip = f;
    } else {
      throw new Error(`pcap: link type ${linkType} not supported`);
    }
    if (ip.length < 20 || ip[0]! >> 4 !== 4) { skipped.push({ frame, why: 'not IPv4' }); continue; }
    const ihl = (ip[0]! & 15) * 4;
    const total = ip.readUInt16BE(2);
    const fragment = ip.readUInt16BE(6) & 0x3fff;
    if (ip[9] !== 6) { skipped.push({ frame, why: `IP protocol ${ip[9]}` }); continue; }
    if (fragment !== 0) { skipped.push({ frame, why: 'IP fragment' }); continue; }
    const tcp = ip.subarray(ihl, Math.min(total, ip.length));
    if (tcp.length < 20) { skipped.push({ frame, why: 'short TCP header' }); continue; }
    const doff = (tcp[12]! >> 4) * 4;
    const addr = (b: Buffer, at: number): string => `${b[at]}.${b[at + 1]}.${b[at + 2]}.${b[at + 3]}`;
    segments.push({
      frame,
      ts,
      src: `${addr(ip, 12)}:${tcp.readUInt16BE(0)}`,
      dst: `${addr(ip, 16)}:${tcp.readUInt16BE(2)}`,
      seq: tcp.readUInt32BE(4),
      flags: tcp[13]!,
      payload: tcp.subarray(doff),
    });
  }
  return { linkType, snapLen, segments, skipped };
}

export interface StreamRun {
  /** Offset of the run's first byte in the stream (0 = first byte after the SYN). */
  offset: number;
  data: Buffer;
  /** Segments that contributed, in stream order. */
  segments: TcpSegment[];
}

export interface TcpStream {
  /** "src->dst" */
  key: string;
  src: string;
  dst: string;
  /** Whether the SYN was captured (offsets then count from it exactly). */
  sawSyn: boolean;
  /** Contiguous runs of payload, by offset. */
  runs: StreamRun[];
  /** Missing byte ranges between runs. */
  gaps: { offset: number; length: number }[];
  /** Payload segments in stream order with their offsets (retransmissions removed). */
  segments: { offset: number; seg: TcpSegment }[];
  /** Bytes seen more than once (retransmissions, overlaps). */
  duplicateBytes: number;
}

/** Payload of each direction of each connection, reassembled by sequence number. */
export function reassemble(segments: TcpSegment[]): TcpStream[] {
  const byKey = new Map<string, TcpSegment[]>();
  for (const s of segments) {
    const key = `${s.src}->${s.dst}`;
    let l = byKey.get(key);
    if (!l) byKey.set(key, (l = []));
    l.push(s);
  }
  const out: TcpStream[] = [];
  for (const [key, segs] of byKey) {
    const syn = segs.find((s) => s.flags & TcpFlag.SYN);
    const withData = segs.filter((s) => s.payload.length > 0);
    if (withData.length === 0) continue;
    const base = syn ? (syn.seq + 1) >>> 0 : withData.reduce((m, s) => (rel(s.seq, withData[0]!.seq) < rel(m, withData[0]!.seq) ? s.seq : m), withData[0]!.seq);
    const placed = withData
      .map((seg) => ({ offset: rel(seg.seq, base), seg }))
      .sort((a, b) => a.offset - b.offset || b.seg.payload.length - a.seg.payload.length);
    const runs: StreamRun[] = [];
    const gaps: { offset: number; length: number }[] = [];
    const kept: { offset: number; seg: TcpSegment }[] = [];
    let end = 0;
    let dup = 0;
    let cur: { offset: number; parts: Buffer[]; segments: TcpSegment[] } | null = null;
    for (const p of placed) {
      const segEnd = p.offset + p.seg.payload.length;
      if (segEnd <= end && cur) { dup += p.seg.payload.length; continue; }
      if (!cur || p.offset > end) {
        if (cur) {
          runs.push({ offset: cur.offset, data: Buffer.concat(cur.parts), segments: cur.segments });
          gaps.push({ offset: end, length: p.offset - end });
        } else if (p.offset > 0) {
          gaps.push({ offset: 0, length: p.offset });
        }
        cur = { offset: p.offset, parts: [p.seg.payload], segments: [p.seg] };
      } else {
        const skip = end - p.offset;
        dup += skip;
        cur.parts.push(p.seg.payload.subarray(skip));
        cur.segments.push(p.seg);
      }
      kept.push(p);
      end = segEnd;
    }
    if (cur) runs.push({ offset: cur.offset, data: Buffer.concat(cur.parts), segments: cur.segments });
    const [src, dst] = key.split('->') as [string, string];
    out.push({ key, src, dst, sawSyn: syn !== undefined, runs, gaps, segments: kept, duplicateBytes: dup });
  }
  return out;
}

/** Sequence distance from base, modulo 2^32. */
function rel(seq: number, base: number): number {
  return (seq - base + 0x1_0000_0000) % 0x1_0000_0000;
}
