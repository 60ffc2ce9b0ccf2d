/**
 * Golden tests against traffic captured from a real upstream CubeFS cluster (golden/cubefs-real):
 * master replies through MasterClient over real HTTP, and every meta and data packet of the capture
 * through the packet codec, byte for byte, cross-checked with the capture's decoded listing.
 */
import { goldenUrl } from '../support/shared.js';
import t from 'tap';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { constants as osc } from 'node:os';
import { MasterClient } from '../../src/master/client.js';
import {
  crc32,
  decodePacket,
  encodeHead,
  encodePacket,
  headerSizeFor,
  HEADER_SIZE_PROTO,
  isReadOp,
  Op,
  PacketReader,
  peekPacket,
  Result,
  type Packet,
} from '../../src/proto/index.js';
import { CubeFSError, ErrorCode } from '../../src/util/errors.js';
import { readPcap, reassemble, LinkType, type TcpStream } from '../support/pcap.js';

const GOLDEN = goldenUrl();
const golden = (f: string): Buffer => fs.readFileSync(new URL(f, GOLDEN));

type TT = Parameters<Parameters<typeof t.test>[0]>[0];

/** A server that answers each path with a golden body, verbatim. */
async function replay(t: TT, routes: Record<string, Buffer>): Promise<string> {
  const server = http.createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    const body = routes[path];
    if (!body) {
      res.writeHead(404);
      res.end('404 page not found');
      return;
    }
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': body.length });
    res.end(body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => {
    server.closeAllConnections();
    server.close();
  });
  return `127.0.0.1:${(server.address() as net.AddressInfo).port}`;
}

/** A server that writes a captured HTTP response (headers included) byte for byte. */
async function rawReplay(t: TT, response: Buffer): Promise<string> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.once('data', () => s.end(response));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return `127.0.0.1:${(server.address() as net.AddressInfo).port}`;
}

async function caught(p: Promise<unknown>): Promise<CubeFSError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof CubeFSError) return e;
    throw e;
  }
  throw new Error('expected a CubeFSError');
}

t.test('master replies from a real cluster parse into the typed shapes', async (t) => {
  const addr = await replay(t, {
    '/client/vol': golden('client_vol.json'),
    '/client/metaPartitions': golden('client_metaPartitions.json'),
    '/client/partitions': golden('client_partitions.json'),
    '/client/volStat': golden('client_volStat.json'),
    '/admin/getIp': golden('admin_getIp.json'),
    '/admin/getVol': golden('admin_getVol.json'),
    '/admin/getCluster': golden('admin_getCluster.json'),
    '/admin/createVol': golden('createVol.json'),
    '/dataNode/get': golden('dataNode_get.json'),
    '/dataPartition/get': golden('dataPartition_get_1.json'),
    '/metaNode/get': golden('metaNode_get.json'),
    '/metaPartition/get': golden('metaPartition_get_1.json'),
  });
  const mc = new MasterClient(addr);
  t.teardown(() => mc.close());

  const vv = await mc.getVolume('ltptest', 'ltp');
  t.equal(vv.Name, 'ltptest');
  t.equal(vv.Owner, 'ltp');
  t.equal(vv.Status, 0);
  t.equal(vv.FollowerRead, false);
  t.same(vv.DataPartitions, [], 'upstream /client/vol carries no data partitions');
  t.same(vv.MetaPartitions.map((m) => [m.PartitionID, m.Start, m.LeaderAddr, m.Status]), [
    [1, 0, '127.0.0.14:17210', 2],
    [2, 4194305, '127.0.0.14:17210', 2],
    [3, 8388609, '127.0.0.13:17210', 2],
  ]);
  t.equal(vv.MetaPartitions[1]!.End, 8388608);
  t.ok(vv.MetaPartitions[2]!.End >= 2 ** 53, 'End 2^63-1 comes through as a number >= 2^53 (unbounded)');
  t.ok(Number.isFinite(vv.MetaPartitions[2]!.End));
  t.same(vv.MetaPartitions[0]!.Members, ['127.0.0.14:17210', '127.0.0.13:17210', '127.0.0.12:17210']);

  const mps = await mc.getMetaPartitions('ltptest');
  t.equal(mps.length, 3);
  t.same(mps.map((m) => m.MaxInodeID), [2, 4194308, 8388610]);
  t.ok(mps[2]!.End > 8388609 && mps[2]!.End >= 2 ** 53);

  const dps = await mc.getDataPartitions('ltptest');
  t.equal(dps.DataPartitions.length, 10);
  t.equal(dps.VolReadOnly, false);
  const dp5 = dps.DataPartitions[0]!;
  t.same([dp5.PartitionID, dp5.Status, dp5.ReplicaNum, dp5.LeaderAddr, dp5.Epoch, dp5.IsRecover, dp5.PartitionType], [5, 2, 3, '127.0.0.15:17310', 0, false, 0]);
  t.same(dp5.Hosts, ['127.0.0.16:17310', '127.0.0.17:17310', '127.0.0.15:17310']);
  t.notOk(dps.DataPartitions.every((d) => d.LeaderAddr === d.Hosts[0]), 'upstream leaders need not be Hosts[0] (raft leader); clients write to Hosts[0]');

  const st = await mc.getVolStat('ltptest');
  t.same([st.Name, st.TotalSize, st.UsedSize, st.InodeCount], ['ltptest', 10737418240, 20971574, 5]);

  const ip = await mc.getClusterIp();
  t.same([ip.Cluster, ip.Ip], ['cfs_local', '127.0.0.1']);

  const admin = await mc.getVolumeAdmin('ltptest');
  t.equal(admin.EnableTransactionV1, 'rename');
  t.equal(admin.DpReplicaNum, 3);

  await mc.createVolume('ltptest', 'ltp', { capacityGB: 10, replicaNum: 3 });
  t.pass('createVol reply (data is a string) accepted');

  for (const [path, file] of [
    ['/admin/getCluster', 'admin_getCluster.json'],
    ['/dataNode/get', 'dataNode_get.json'],
    ['/dataPartition/get', 'dataPartition_get_1.json'],
    ['/metaNode/get', 'metaNode_get.json'],
    ['/metaPartition/get', 'metaPartition_get_1.json'],
    ['/admin/createVol', 'createVol.json'],
  ] as const) {
    const data = await mc.get(path, { name: 'ltptest' });
    t.same(data, (JSON.parse(golden(file).toString()) as { data: unknown }).data, `${file} through the envelope`);
  }
  t.equal(golden('client_vol.json').length, Number(/Content-Length: (\d+)/.exec(golden('client_vol_headers.txt').toString())![1]), 'captured /client/vol body is whole');
});

t.test('master error replies from a real cluster give clear errors', async (t) => {
  const badauth = await rawReplay(t, golden('client_vol_badauth.txt'));
  const mc1 = new MasterClient(badauth);
  t.teardown(() => mc1.close());
  const e1 = await caught(mc1.getVolume('ltptest', 'nobody'));
  t.equal(e1.code, ErrorCode.AuthMismatch);
  t.equal(e1.errno, osc.errno.EACCES);
  t.equal(e1.message, 'volume "ltptest": owner "nobody" is not the owner (master: client and server auth key do not match)');

  const novolAddr = await replay(t, { '/client/vol': golden('client_vol_novol.json'), '/client/metaPartitions': golden('client_vol_novol.json') });
  const mc2 = new MasterClient(novolAddr);
  t.teardown(() => mc2.close());
  const e2 = await caught(mc2.getVolume('nosuch', 'ltp'));
  t.equal(e2.code, ErrorCode.VolNotExist);
  t.equal(e2.errno, osc.errno.ENOENT);
  t.equal(e2.message, `volume "nosuch" does not exist on master ${novolAddr}`);
  t.equal((await caught(mc2.getMetaPartitions('nosuch'))).code, ErrorCode.VolNotExist);

  const bad = await replay(t, {
    '/client/vol': Buffer.from('{"code":0,"msg":"success","data":{"Name":"x"'),
    '/client/volStat': Buffer.from('{"code":3,"msg":"invalid cfg","data":null}'),
    '/admin/getIp': Buffer.from('{"code":0,"msg":"success","data":[]}'),
  });
  const mc3 = new MasterClient(bad);
  t.teardown(() => mc3.close());
  const e3 = await caught(mc3.getVolume('x', 'y'));
  t.equal(e3.code, ErrorCode.MasterError);
  t.match(e3.message, /malformed JSON/);
  const e4 = await caught(mc3.getVolStat('x'));
  t.equal(e4.code, ErrorCode.MasterError);
  t.match(e4.message, /code 3: invalid cfg/);
  const e5 = await caught(mc3.getClusterIp());
  t.match(e5.message, /malformed master reply/);
  const e6 = await caught(mc3.getMetaPartitions('x'));
  t.match(e6.message, /HTTP 404/, 'a 404 is the master saying no, not a failover');
});

// ---- packets ----

interface Line {
  text: string;
  key: string;
  fields: Record<string, string>;
  data?: string;
  arg?: string;
  used: boolean;
}

const RC_NAMES: Record<string, number> = { Init: Result.Init, OpOk: Result.Ok, OpDiskNoSpaceErr: Result.DiskNoSpace, OpNotExistErr: Result.NotExist };

function parseDecoded(text: string): Map<string, Line[]> {
  const map = new Map<string, Line[]>();
  for (const l of text.split('\n')) {
    if (!l.trim()) continue;
    const [, dir] = l.split(' ') as [string, string];
    let head = l;
    let data: string | undefined;
    const di = l.indexOf(' data=');
    if (di >= 0) { data = l.slice(di + 6); head = l.slice(0, di); }
    let arg: string | undefined;
    const ai = head.indexOf(' arg=');
    if (ai >= 0) { arg = head.slice(ai + 5); head = head.slice(0, ai); }
    const fields: Record<string, string> = {};
    for (const m of head.matchAll(/ (\w+)=(\S+)/g)) fields[m[1]!] = m[2]!;
    const op = /\((0x[0-9a-f]+)\)/.exec(fields.op!)![1]!;
    const key = `${dir} ${fields.reqid} ${Number(op)}`;
    const line: Line = { text: l, key, fields, used: false, ...(data !== undefined ? { data } : {}), ...(arg !== undefined ? { arg } : {}) };
    const list = map.get(key) ?? [];
    list.push(line);
    map.set(key, list);
  }
  return map;
}

const hex32 = (n: number): string => `0x${(n >>> 0).toString(16).padStart(8, '0')}`;
const hex8 = (n: number): string => `0x${n.toString(16).padStart(2, '0')}`;

/** Compare a decoded packet with its line. `data` is what the capture holds of the packet's Data. */
function agree(t: TT, p: Packet, line: Line, data: Buffer, whole: boolean): void {
  const f = line.fields;
  const want = {
    op: Number(/\((0x[0-9a-f]+)\)/.exec(f.op!)![1]),
    rc: RC_NAMES[f.rc!] ?? -1,
    etype: f.etype,
    pid: f.pid,
    eid: f.eid,
    eoff: f.eoff,
    koff: f.koff,
    reqid: f.reqid,
    size: f.size,
    arglen: f.arglen,
    crc: f.crc,
    verseq: f.verseq ?? null,
    protover: f.protover ?? null,
  };
  const has69 = headerSizeFor(p.extentType, p.opcode) === HEADER_SIZE_PROTO;
  const got = {
    op: p.opcode,
    rc: p.resultCode,
    etype: hex8(p.extentType),
    pid: String(p.partitionId),
    eid: String(p.extentId),
    eoff: String(p.extentOffset),
    koff: String(p.kernelOffset),
    reqid: String(p.reqId),
    size: String(p.size),
    arglen: String(p.arg.length),
    crc: hex32(p.crc),
    verseq: has69 ? String(p.verSeq) : null,
    protover: has69 ? String(p.protoVersion) : null,
  };
  if (JSON.stringify(got) !== JSON.stringify(want)) t.same(got, want, `header fields agree: ${line.text.slice(0, 160)}`);
  if (line.arg !== undefined && p.arg.length > 0) {
    const argWant = line.arg.replace(/^b'|'$/g, '');
    if (p.arg.toString('latin1') !== argWant) t.equal(p.arg.toString('latin1'), argWant, `arg agrees: ${line.key}`);
  }
  if (line.data === undefined) {
    if (p.size !== 0 && !(p.resultCode === Result.Init && isReadOp(p.opcode))) t.fail(`no data in listing for a packet with Data: ${line.key}`);
    return;
  }
  const bin = /^<(\d+) bytes: ([0-9a-f]*)\.\.\.>$/.exec(line.data);
  if (bin) {
    if (Number(bin[1]) !== p.size) t.equal(Number(bin[1]), p.size, `data size: ${line.key}`);
    const shown = Buffer.from(bin[2]!, 'hex');
    const have = Math.min(shown.length, data.length);
    if (!shown.subarray(0, have).equals(data.subarray(0, have))) t.fail(`data prefix differs: ${line.key}`);
    if (whole && have < shown.length) t.fail(`whole packet shorter than its listed prefix: ${line.key}`);
  } else {
    const prefix = data.toString('utf8').slice(0, line.data.length);
    if (whole || prefix.length === line.data.length) {
      if (prefix !== line.data) t.equal(prefix, line.data, `JSON body prefix agrees: ${line.key}`);
    }
  }
}

interface WalkResult {
  /** Packets compared field by field with their listing line. */
  compared: number;
  /** The tiny write refused with DiskNoSpace (see the README), kept for a closer look. */
  refused?: Packet;
  whole: number;
  headerOnly: number;
  lostSync: number;
  crcChecked: number;
}

/**
 * Walk one direction's stream packet by packet. Whole packets re-encode to their bytes; a packet cut by
 * a gap re-encodes its header. Each packet is matched with its listing line.
 */
function walk(t: TT, s: TcpStream, lines: Map<string, Line[]>, res: WalkResult): void {
  let pos = 0;
  for (let ri = 0; ri < s.runs.length; ri++) {
    const run = s.runs[ri]!;
    if (pos < run.offset) {
      // The next packet starts inside a gap: resynchronise on the next run that opens with a packet.
      res.lostSync++;
      pos = run.offset;
    }
    while (pos < run.offset + run.data.length) {
      const at = pos - run.offset;
      const rest = run.data.subarray(at);
      if (rest[0] !== 0xff) {
        t.fail(`${s.key}: no packet magic at stream offset ${pos}`);
        return;
      }
      const info = peekPacket(rest);
      if (!info) {
        t.fail(`${s.key}: packet header cut by a gap at offset ${pos}`);
        return;
      }
      const total = info.headLen + info.argLen + info.dataLen;
      let p: Packet;
      let data: Buffer;
      const whole = rest.length >= total;
      if (whole) {
        const bytes = rest.subarray(0, total);
        ({ packet: p } = decodePacket(bytes));
        const again = encodePacket(p);
        if (!again.equals(bytes)) t.fail(`${s.key}: packet at ${pos} does not re-encode to the same bytes`);
        data = p.data;
        res.whole++;
      } else {
        // Header (and whatever follows) present; complete with zeros to decode, compare the header only.
        const padded = Buffer.alloc(total);
        rest.copy(padded);
        ({ packet: p } = decodePacket(padded));
        const head = encodeHead(p).subarray(0, info.headLen);
        if (!head.equals(rest.subarray(0, info.headLen))) t.fail(`${s.key}: header at ${pos} does not re-encode to the same bytes`);
        const dataStart = info.headLen + info.argLen;
        data = rest.subarray(Math.min(dataStart, rest.length));
        if (rest.length < dataStart) p = { ...p, arg: p.arg.subarray(0, Math.max(0, rest.length - info.headLen)) };
        res.headerOnly++;
      }
      const key = `${s.key} ${p.reqId} ${p.opcode}`;
      const line = lines.get(key)?.find((l) => !l.used);
      if (!line) t.fail(`${s.key}: packet op 0x${p.opcode.toString(16)} reqid ${p.reqId} not in the decoded listing`);
      else {
        line.used = true;
        agree(t, p, line, data, whole);
        res.compared++;
        if (whole && p.resultCode === Result.DiskNoSpace) res.refused = p;
      }
      const carriesFileData = (p.resultCode === Result.Init && (p.opcode === Op.Write || p.opcode === Op.SyncWrite || p.opcode === Op.RandomWrite || p.opcode === Op.SyncRandomWrite))
        || (p.resultCode === Result.Ok && isReadOp(p.opcode));
      if (whole && carriesFileData && p.size > 0) {
        if (crc32(p.data) !== p.crc) t.fail(`${s.key}: reqid ${p.reqId}: crc32(Data) ${hex32(crc32(p.data))} != header CRC ${hex32(p.crc)}`);
        res.crcChecked++;
      }
      pos += total;
    }
  }
}

t.test('captured meta and data packets decode, re-encode byte for byte and agree with the listing', async (t) => {
  const pcap = readPcap(golden('client_session_small.pcap'));
  t.equal(pcap.linkType, LinkType.Ethernet, 'link type Ethernet');
  t.same(pcap.skipped, [], 'every frame is IPv4 + TCP, none cut short');
  const streams = reassemble(pcap.segments);
  const lines = parseDecoded(golden('client_session_decoded.txt').toString('utf8'));
  const port = (a: string): number => Number(a.slice(a.lastIndexOf(':') + 1));

  const meta: WalkResult = { compared: 0, whole: 0, headerOnly: 0, lostSync: 0, crcChecked: 0 };
  const dataRes: WalkResult = { compared: 0, whole: 0, headerOnly: 0, lostSync: 0, crcChecked: 0 };
  let metaStreams = 0, dataStreams = 0, dataGaps = 0;
  for (const s of streams) {
    const ports = [port(s.src), port(s.dst)];
    if (ports.includes(17210)) {
      metaStreams++;
      t.same(s.gaps, [], `${s.key}: metanode stream is whole`);
      walk(t, s, lines, meta);
      // The incremental reader, fed segment by segment, finds the same packets.
      const reader = new PacketReader();
      const got: Packet[] = [];
      for (const { seg } of s.segments) got.push(...reader.push(Buffer.from(seg.payload)));
      t.equal(reader.buffered, 0, `${s.key}: nothing left over in the reader`);
      const direct: string[] = [];
      let o = 0;
      const all = s.runs[0]!.data;
      while (o < all.length) {
        const { packet, length } = decodePacket(all.subarray(o));
        direct.push(`${packet.opcode}/${packet.reqId}/${packet.size}`);
        o += length;
      }
      t.same(got.map((p) => `${p.opcode}/${p.reqId}/${p.size}`), direct, `${s.key}: PacketReader agrees with decodePacket`);
    } else if (ports.includes(17310)) {
      dataStreams++;
      dataGaps += s.gaps.length;
      walk(t, s, lines, dataRes);
    }
  }
  t.ok(metaStreams > 0 && dataStreams > 0);
  t.equal(meta.headerOnly, 0, 'metanode packets are all whole');
  t.equal(meta.lostSync, 0);
  t.equal(dataRes.lostSync, 0, 'no datanode packet starts inside a gap');
  t.ok(dataGaps > 0, 'datanode streams have gaps (large segments left out of the capture)');
  t.ok(dataRes.crcChecked > 0, `CRC checked on ${dataRes.crcChecked} whole data packets`);

  const unused = [...lines.values()].flat().filter((l) => !l.used);
  t.same(unused.map((l) => l.text.slice(0, 200)), [], 'every line of the decoded listing matched a captured packet');
  const metaLines = [...lines.values()].flat().filter((l) => / meta /.test(l.text)).length;
  t.equal(meta.whole, metaLines, `${metaLines} metanode packets`);
  t.equal(dataRes.whole + dataRes.headerOnly, [...lines.values()].flat().length - metaLines, 'every datanode packet found');
  t.equal(meta.compared + dataRes.compared, 468, 'all 468 listed packets compared field by field');
  const refused = dataRes.refused;
  t.ok(refused, 'the refused tiny write reply is in the capture');
  if (refused) {
    t.match(refused.data.toString(), /GetAvailableTinyExtent error no available extent/);
    t.equal(refused.arg.toString(), '127.0.0.17:17310/127.0.0.16:17310/', 'the error reply echoes the request Arg');
    t.equal(hex32(refused.crc), '0xe472ff82', 'and the request CRC, not a CRC of its error text');
    t.not(crc32(refused.data), refused.crc);
  }
  t.comment(`CRC verified on ${dataRes.crcChecked} whole write requests / read replies`);
  t.comment(`metanode packets ${meta.whole}; datanode packets whole ${dataRes.whole}, header only ${dataRes.headerOnly}; gaps ${dataGaps}`);
});
