/**
 * Request shapes against the capture of upstream's own client (golden/cubefs-real): the bodies this
 * client sends carry the keys upstream's client sent, and a transactional rename uses upstream's tx ops.
 * A recording proxy between MetaClient and MetaNode sees the real bytes.
 */
import { goldenUrl } from '../support/shared.js';
import t from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import { MetaClient } from '../../src/meta/client.js';
import { GoMode, Op, PacketReader, type Packet } from '../../src/proto/index.js';
import { setup, StaticSource, viewsFor, VOL } from './helpers.js';

const GOLDEN = goldenUrl('client_session_decoded.txt');

/** Keys at depth 1 (and, under `nested`, depth 2) of a JSON object text that may be cut short. */
function keysOf(text: string, nested?: string): string[] {
  const keys: string[] = [];
  let depth = 0, i = 0, parent = '';
  const want = nested === undefined ? 1 : 2;
  while (i < text.length) {
    const c = text[i]!;
    if (c === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      const s = text.slice(i + 1, j);
      let k = j + 1;
      while (text[k] === ' ') k++;
      if (text[k] === ':') {
        if (depth === 1) parent = s;
        if (depth === want && (nested === undefined || parent === nested)) keys.push(s);
      }
      i = j + 1;
      continue;
    }
    if (c === '{' || c === '[') depth++;
    else if (c === '}' || c === ']') depth--;
    i++;
  }
  return keys;
}

function capturedRequest(op: string): string {
  const line = fs.readFileSync(GOLDEN, 'utf8').split('\n').find((l) => l.includes(` req  op=${op}(`) && l.includes('data={'));
  if (!line) throw new Error(`no ${op} request in the capture`);
  return line.slice(line.indexOf('data=') + 5);
}

async function recordingProxy(target: string): Promise<{ addr: string; seen: Packet[]; close: () => Promise<void> }> {
  const seen: Packet[] = [];
  const socks = new Set<net.Socket>();
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const server = net.createServer((c) => {
    const up = net.connect({ host, port });
    const reader = new PacketReader();
    socks.add(c).add(up);
    c.on('data', (b: Buffer) => {
      for (const p of reader.push(Buffer.from(b))) seen.push(p);
      up.write(b);
    });
    up.on('data', (b: Buffer) => c.write(b));
    const end = () => { c.destroy(); up.destroy(); };
    c.on('close', end).on('error', end);
    up.on('close', end).on('error', end);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const addr = `127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  return {
    addr, seen,
    close: async () => {
      for (const s of socks) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

t.test('request bodies carry the keys of the captured ones; rename goes through tx ops', async (t) => {
  const env = await setup(t);
  const proxy = await recordingProxy(env.addr);
  t.teardown(proxy.close);
  const c = new MetaClient({ vol: VOL, source: new StaticSource(viewsFor(proxy.addr)), transactions: true });
  t.teardown(() => c.close());

  const d = await c.create(1, 'dir1', GoMode.Dir + 0o755, 0, 0);
  const f = await c.create(1, 'second.txt', 0o644, 0, 0);
  await c.lookup(1, 'second.txt');
  await c.readdirLimit(1, '', 1024);
  await c.appendExtentKey(f.ino, { FileOffset: 0, PartitionId: 2, ExtentId: 1027, ExtentOffset: 0, Size: 12, CRC: 0 });
  await c.rename(1, 'second.txt', d.ino, 'second.txt');
  t.equal((await c.lookup(d.ino, 'second.txt')).ino, f.ino);

  const body = (op: Op): string => {
    const p = proxy.seen.find((x) => x.opcode === op);
    if (!p) throw new Error(`op 0x${op.toString(16)} was not sent`);
    t.equal(p.extentType & 0x10, 0x10, `op 0x${op.toString(16)} in the 69-byte form`);
    return p.data.toString();
  };
  const cases: [Op, string][] = [
    [Op.MetaCreateInode, 'OpMetaCreateInode'],
    [Op.MetaCreateDentry, 'OpMetaCreateDentry'],
    [Op.MetaLookup, 'OpMetaLookup'],
    [Op.MetaReadDirLimit, 'OpMetaReadDirLimit'],
    [Op.MetaExtentAddWithCheck, 'OpMetaExtentAddWithCheck'],
    [Op.MetaTxCreate, 'OpMetaTxCreate'],
    [Op.MetaTxDeleteDentry, 'OpMetaTxDeleteDentry'],
    [Op.MetaTxCreateDentry, 'OpMetaTxCreateDentry'],
    [Op.TxCommit, 'OpTxCommit'],
  ];
  for (const [op, name] of cases) {
    const ours = body(op);
    const theirs = capturedRequest(name);
    let whole = true;
    try { JSON.parse(theirs); } catch { whole = false; }
    if (whole) {
      t.same(keysOf(ours).sort(), keysOf(theirs).sort(), `${name}: same keys as upstream's`);
    } else {
      // the decoded capture cuts long bodies short: every key it kept must be ours too
      const mine = keysOf(ours);
      t.ok(keysOf(theirs).every((k) => mine.includes(k)), `${name}: carries every captured key`);
    }
  }
  const ek = JSON.parse(body(Op.MetaExtentAddWithCheck)).ek as Record<string, unknown>;
  t.same(Object.keys(ek).sort(), keysOf(capturedRequest('OpMetaExtentAddWithCheck'), 'ek').sort(), 'ek has upstream keys');
  const ourTx = keysOf(body(Op.MetaTxCreate), 'tx');
  for (const k of keysOf(capturedRequest('OpMetaTxCreate'), 'tx')) t.ok(ourTx.includes(k), `TxCreate tx carries ${k}`);
  t.equal(proxy.seen.filter((p) => p.opcode === Op.MetaLinkInode).length, 0, 'no LinkInode in a tx rename');
  const txBody = JSON.parse(body(Op.MetaTxCreate)) as { tx: { TxType: number; TxDentryInfos: Record<string, unknown> } };
  t.equal(txBody.tx.TxType, 4);
  t.same(Object.keys(txBody.tx.TxDentryInfos).sort(), [`1_second.txt`, `${d.ino}_second.txt`].sort());
});
