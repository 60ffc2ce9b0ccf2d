/**
 * Real verbs on Soft-RoCE (rxe0 in the VM of shared/tools/rdma-vm): discovery, rdma_cm connect/accept,
 * request/response, RDMA Read and Write of pool buffers, the credit window, a QP forced to error, a deadline.
 * Client and server run in this process on separate contexts (separate PDs) and separate pools; every test
 * ends with both pools' in-use counters at 0. Small on purpose: JS runs ~20x slower in the VM.
 */
import { randomFillSync } from 'node:crypto';
import t from 'tap';
import type { Test } from 'tap';
import { crc32, newPacket, newReply, Op, Result, type Packet } from '../../src/proto/index.js';
import { nextReqId } from '../../src/transport/reqid.js';
import { PacketServer } from '../../src/transport/server.js';
import { PacketConn } from '../../src/transport/tcp.js';
import {
  RdmaConnection,
  RdmaContext,
  RdmaListener,
  rdmaDevices,
  type RdmaConnectOptions,
  type RdmaListenOptions,
  type RdmaRequestBlock,
  type RdmaServerConnection,
} from '../../src/transport/rdma.js';
import { CubeFSError, ErrorCode } from '../../src/util/errors.js';
import { mustAlloc, newPool, type TestPool } from '../support/rdma-pool.js';

const IP = process.env.RXE_IP ?? '192.0.2.1';
const DEV = process.env.RXE_DEV ?? 'rxe0';
const MiB = 1 << 20;

interface Rig {
  clientPool: TestPool;
  serverPool: TestPool;
  client: RdmaContext;
  server: RdmaContext;
  listener: RdmaListener;
  conn: RdmaConnection;
}

type Handler = (block: RdmaRequestBlock, conn: RdmaServerConnection, rig: Rig) => void;

async function rig(t: Test, handler: Handler, opts: { client?: RdmaConnectOptions; server?: Partial<RdmaListenOptions> } = {}): Promise<Rig> {
  const clientPool = newPool(16 * MiB);
  const serverPool = newPool(16 * MiB);
  const client = new RdmaContext({ pool: clientPool, device: DEV });
  const server = new RdmaContext({ pool: serverPool, device: DEV });
  const r = { clientPool, serverPool, client, server } as Rig;
  t.teardown(() => {
    close(r);
    clientPool.close();
    serverPool.close();
  });
  r.listener = RdmaListener.listen(server, IP, 0, { ...opts.server, onRequest: (b, c) => handler(b, c, r) });
  r.conn = await RdmaConnection.connect(client, `${IP}:${r.listener.port}`, { qps: 2, ...opts.client });
  // The server hears of a QP when its ESTABLISHED event comes, which may follow the client's.
  for (let i = 0; i < 400 && r.listener.connections.size < r.conn.qps; i++) await sleep(5);
  return r;
}

function close(r: Rig): void {
  r.conn?.close();
  r.client.close();
  r.server.close();
}

/** The end of every test: close everything (twice: close is idempotent), both pools back to 0 in use. */
async function finish(t: Test, r: Rig): Promise<void> {
  close(r);
  close(r);
  await new Promise((res) => setImmediate(res));
  t.equal(r.clientPool.stats().inUseBytes, 0, 'client pool: nothing in use');
  t.equal(r.serverPool.stats().inUseBytes, 0, 'server pool: nothing in use');
}

const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms));

const echo: Handler = (b, c) => {
  c.respond(b, newReply(b.packet, Result.Ok, Buffer.from(`pong ${b.packet.extentId}`)));
};

t.test('device discovery sees rxe0 with an active Ethernet port', async (t) => {
  const devs = rdmaDevices();
  const d = devs.find((x) => x.name === DEV);
  t.ok(d, `${DEV} listed (got ${devs.map((x) => x.name).join(', ') || 'none'})`);
  t.equal(d?.ports[0]?.linkLayer, 'Ethernet');
  t.equal(d?.ports[0]?.state, 'active');
});

t.test('connect/accept on RXE_IP and a request/response round trip', async (t) => {
  let accepted = 0;
  const r = await rig(t, echo, { server: { onConnection: () => accepted++ } });
  t.equal(accepted, 2, 'one accepted QP per member of the group');
  t.equal(r.listener.connections.size, 2);
  const p = await r.conn.request(newPacket({ opcode: Op.Write, extentId: 7, reqId: nextReqId() }));
  t.equal(p.resultCode, Result.Ok);
  t.equal(p.data.toString(), 'pong 7');

  const n = 100;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    const q = await r.conn.request(newPacket({ opcode: Op.Write, extentId: i, reqId: nextReqId() }));
    if (q.data.toString() !== `pong ${i}`) t.fail(`reply ${i}: ${q.data.toString()}`);
  }
  const us = Number(process.hrtime.bigint() - t0) / 1000 / n;
  // B2 beside it: the same requests over TCP loopback in this VM.
  const srv = new PacketServer('bench', async (req) => newReply(req, Result.Ok, Buffer.from(`pong ${req.extentId}`)));
  const tcp = await PacketConn.connect(await srv.listen('127.0.0.1', 0));
  const t1 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await tcp.request(newPacket({ opcode: Op.Write, extentId: i, reqId: nextReqId() }));
  const tcpUs = Number(process.hrtime.bigint() - t1) / 1000 / n;
  tcp.close();
  await srv.close();
  t.comment(`round trip (sequential, JS at both ends, ${n} requests): RDMA ${us.toFixed(1)} us, TCP loopback ${tcpUs.toFixed(1)} us`);
  const s = r.conn.stats();
  t.ok(s.every((x) => x?.state === 'established'));
  await finish(t, r);
});

t.test('RDMA Read of a 1 MiB pool buffer from the peer, and RDMA Write into the peer\'s buffer', async (t) => {
  const stored: Buffer[] = [];
  const writes: Promise<void>[] = [];
  const r = await rig(t, (b, c, rig) => {
    const buf = mustAlloc(rig.serverPool, MiB);
    const done = (rc: number, over: Partial<Packet> = {}) => {
      rig.serverPool.free(buf);
      c.respond(b, newReply(b.packet, rc, Buffer.alloc(0), over));
    };
    if (!b.desc) return done(Result.Err);
    if (b.packet.opcode === Op.Write) {
      c.read(b.desc, buf, { len: b.packet.size }).then(() => {
        const crc = crc32(buf.subarray(0, b.packet.size));
        stored.push(Buffer.from(buf.subarray(0, b.packet.size)));
        done(crc === b.packet.crc ? Result.Ok : Result.Err);
      }, () => done(Result.Err));
    } else {
      // Read: fill the server's pool buffer, RDMA-Write it, then respond on the same QP.
      const src = stored[stored.length - 1]!;
      src.copy(buf);
      const w = c.write(buf, b.desc, { len: b.packet.size });
      c.respond(b, newReply(b.packet, Result.Ok, Buffer.alloc(0), { size: b.packet.size, crc: crc32(src.subarray(0, b.packet.size)) }));
      writes.push(w.then(() => { rig.serverPool.free(buf); }, () => { rig.serverPool.free(buf); }));
    }
  }, { client: { qps: 1 } });

  const rounds = 4;
  const wbuf = mustAlloc(r.clientPool, MiB);
  const rbuf = mustAlloc(r.clientPool, MiB);
  try {
    let readNs = 0n, writeNs = 0n;
    for (let i = 0; i < rounds; i++) {
      randomFillSync(wbuf);
      const crc = crc32(wbuf);
      let t0 = process.hrtime.bigint();
      const wr = await r.conn.request(newPacket({ opcode: Op.Write, size: MiB, crc, reqId: nextReqId() }), { desc: { buf: wbuf } });
      readNs += process.hrtime.bigint() - t0;
      t.equal(wr.resultCode, Result.Ok, `round ${i}: the server RDMA-read 1 MiB and its CRC matched`);
      t.ok(stored[stored.length - 1]!.equals(wbuf), `round ${i}: server bytes equal the client's`);

      rbuf.fill(0);
      t0 = process.hrtime.bigint();
      const rd = await r.conn.request(newPacket({ opcode: Op.StreamRead, size: MiB, reqId: nextReqId() }), { desc: { buf: rbuf } });
      writeNs += process.hrtime.bigint() - t0;
      t.equal(rd.resultCode, Result.Ok);
      t.equal(rd.size, MiB, 'the reply carries the size of the payload written by RDMA');
      t.equal(rd.data.length, 0, 'and no inline data');
      t.ok(rbuf.equals(wbuf), `round ${i}: RDMA Write landed before the response was seen, bytes equal`);
      t.equal(crc32(rbuf), rd.crc);
    }
    const mbps = (ns: bigint) => ((rounds * MiB) / (Number(ns) / 1e9) / 1e6).toFixed(1);
    t.comment(`1 MiB requests: server RDMA Read ${mbps(readNs)} MB/s, server RDMA Write ${mbps(writeNs)} MB/s (request to response, sequential)`);
    const s = r.conn.stats()[0]!;
    t.equal(s.sends, s.sends, 'stats readable');
    const srv = [...r.listener.connections][0]!.stats()!;
    t.equal(srv.reads, rounds);
    t.equal(srv.writes, rounds);
    t.equal(srv.bytesRead, rounds * MiB);
  } finally {
    await Promise.all(writes);
    r.clientPool.free(wbuf);
    r.clientPool.free(rbuf);
  }
  await finish(t, r);
});

t.test('local buffers outside the pool are refused clearly', async (t) => {
  let seen: RdmaRequestBlock | null = null;
  const r = await rig(t, (b, c) => {
    seen = b;
    c.respond(b, newReply(b.packet, Result.Ok));
  }, { client: { qps: 1 } });
  const heap = Buffer.alloc(4096);
  await t.rejects(r.conn.request(newPacket({ opcode: Op.Write, size: 4096, reqId: nextReqId() }), { desc: { buf: heap } }),
    { code: ErrorCode.Invalid, message: /not inside the pool/ });
  const buf = mustAlloc(r.clientPool, 4096);
  try {
    await r.conn.request(newPacket({ opcode: Op.Write, size: 4096, reqId: nextReqId() }), { desc: { buf } });
    const b = seen! as RdmaRequestBlock;
    t.ok(b.desc && b.desc.len === 4096 && b.desc.rkey === r.client.rkey, 'the descriptor carries the client PD\'s rkey');
    await t.rejects(b.conn.read(b.desc!, Buffer.alloc(4096)), { code: ErrorCode.Invalid, message: /not inside the pool registered/ });
    // The server's pool is registered in the server's PD, not the client's: a client context buffer is refused there.
    await t.rejects(b.conn.read(b.desc!, buf), { code: ErrorCode.Invalid, message: /not inside the pool/ });
  } finally {
    r.clientPool.free(buf);
  }
  await finish(t, r);
});

t.test('credits: recvDepth 4, 64 requests in flight, all complete, sends never exceed the credits', async (t) => {
  // The server answers nothing until all 64 requests are in: only explicit credit blocks can refill the
  // client's window meanwhile; then 64 responses go through the client's window of 4 the same way.
  const held: (() => void)[] = [];
  const r = await rig(t, (b, c) => {
    held.push(() => c.respond(b, newReply(b.packet, Result.Ok, Buffer.from(String(b.packet.extentId)))));
    if (held.length === 64) setImmediate(() => held.splice(0).forEach((f) => f()));
  }, { client: { qps: 1, recvDepth: 4, rnrRetry: 0 }, server: { recvDepth: 4, rnrRetry: 0 } });
  const all = await Promise.all(Array.from({ length: 64 }, (_, i) =>
    r.conn.request(newPacket({ opcode: Op.Write, extentId: i, reqId: nextReqId() }), { timeoutMs: 60_000 })));
  all.forEach((p, i) => {
    if (p.data.toString() !== String(i)) t.fail(`reply ${i} is ${p.data.toString()}`);
  });
  t.equal(all.length, 64);
  const c = r.conn.stats()[0]!;
  const s = [...r.listener.connections][0]!.stats()!;
  t.comment(`client: ${JSON.stringify(c)}`);
  t.comment(`server: ${JSON.stringify(s)}`);
  t.equal(c.peerRecvDepth, 4);
  t.ok(c.maxCreditsUsed <= c.peerRecvDepth, `client used at most ${c.peerRecvDepth} credits at once (max ${c.maxCreditsUsed})`);
  t.ok(s.maxCreditsUsed <= s.peerRecvDepth, `server used at most ${s.peerRecvDepth} credits at once (max ${s.maxCreditsUsed})`);
  t.ok(c.minCredits >= 0 && s.minCredits >= 0, 'credits never below zero');
  t.ok(c.sends >= 64 && s.sends >= 64, '64 blocks each way through a window of 4: it was exhausted and refilled');
  t.ok(s.creditBlocks > 0 && c.creditBlocks > 0, `explicit credit blocks both ways (server ${s.creditBlocks}, client ${c.creditBlocks})`);
  t.ok(s.creditWaits > 0, `the server's responses waited for credits (${s.creditWaits} times)`);
  t.equal(c.state, 'established', 'rnr_retry 0: a send beyond the posted receives would have broken the QP; none did');
  t.equal(s.state, 'established');
  await finish(t, r);
});

t.test('a QP forced to error: its requests fail retryable, the next request reconnects and succeeds', async (t) => {
  const parked: (() => void)[] = [];
  const r = await rig(t, (b, c) => {
    if (b.packet.opcode === Op.Write) parked.push(() => c.respond(b, newReply(b.packet, Result.Ok)));
    else c.respond(b, newReply(b.packet, Result.Ok));
  }, { client: { qps: 2 } });
  // Request ids of one parity go to QP 0.
  const ids: bigint[] = [];
  while (ids.length < 3) {
    const id = nextReqId();
    if (id % 2n === 0n) ids.push(id);
  }
  const waits = ids.map((id) => r.conn.request(newPacket({ opcode: Op.Write, reqId: id }), { timeoutMs: 20_000 }));
  const settled = Promise.allSettled(waits);
  while (parked.length < 3) await new Promise((res) => setTimeout(res, 5));
  t.ok(r.conn.forceError(0), 'QP 0 moved to IBV_QPS_ERR');
  const out = await settled;
  for (const o of out) {
    t.equal(o.status, 'rejected');
    const e = (o as PromiseRejectedResult).reason as CubeFSError;
    t.equal(e.code, ErrorCode.Network);
    t.equal(e.retryable, true, `retryable: ${e.message}`);
  }
  t.equal(r.conn.stats()[0], null, 'QP 0 is down');
  parked.splice(0).forEach((f) => f());  // late answers on the dead QP go nowhere
  let id = nextReqId();
  while (id % 2n !== 0n) id = nextReqId();
  const before = r.conn.reconnects;
  const p = await r.conn.request(newPacket({ opcode: Op.Read, reqId: id }));
  t.equal(p.resultCode, Result.Ok, 'the next request on QP 0 succeeded');
  t.equal(r.conn.reconnects, before + 1, 'after one reconnect');
  t.equal(r.conn.stats()[0]?.state, 'established');
  await finish(t, r);
});

t.test('a deadline passing: a server that does not answer -> a timeout within the deadline', async (t) => {
  const r = await rig(t, (b, c) => {
    if (b.packet.opcode !== Op.Write) c.respond(b, newReply(b.packet, Result.Ok));
  }, { client: { qps: 1 } });
  const buf = mustAlloc(r.clientPool, 64 * 1024);
  const deadline = 400;
  const t0 = Date.now();
  try {
    await t.rejects(r.conn.request(newPacket({ opcode: Op.Write, size: buf.length, reqId: nextReqId() }), { desc: { buf }, timeoutMs: deadline }),
      { code: ErrorCode.Timeout, retryable: true });
  } finally {
    r.clientPool.free(buf);  // safe: the QP went to error before the promise was rejected
  }
  const took = Date.now() - t0;
  t.ok(took >= deadline - 5 && took < deadline + 1000, `failed after ${took} ms (deadline ${deadline})`);
  const p = await r.conn.request(newPacket({ opcode: Op.Read, reqId: nextReqId() }));
  t.equal(p.resultCode, Result.Ok, 'the connection recovers on the next request');
  await finish(t, r);
});

t.test('a connect to a port nobody listens on fails clearly', async (t) => {
  const pool = newPool(4 * MiB);
  const ctx = new RdmaContext({ pool, device: DEV });
  t.teardown(() => {
    ctx.close();
    pool.close();
  });
  await t.rejects(RdmaConnection.connect(ctx, `${IP}:1`, { qps: 1, timeoutMs: 3000 }), { code: /CUBEFS_(NETWORK|TIMEOUT)/, message: /RDMA connect to 192|RDMA connect to/ });
  t.equal(pool.stats().inUseBytes, 0);
});
