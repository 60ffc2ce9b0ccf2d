/**
 * The datanode connection pool (src/transport/checkout-pool.ts) against real TCP servers on loopback: a
 * connection serves one user at a time and goes back only when all went well; one that carried an error
 * reply, a timeout or a FIN is never handed out again; idle connections are bounded.
 */
import net from 'node:net';
import t from 'tap';
import type { Test } from 'tap';
import { newPacket, newReply, Op, PacketReader, Result, encodeHead, wireDataLength, type Packet } from '../../src/proto/index.js';
import { CheckoutPool } from '../../src/transport/checkout-pool.js';
import { nextReqId } from '../../src/transport/reqid.js';
import { PacketServer } from '../../src/transport/server.js';
import { CubeFSError, ErrorCode } from '../../src/util/errors.js';
import { until } from '../support/wait.js';

const req = (op = Op.StreamRead): Packet => newPacket({ opcode: op, partitionId: 1, reqId: nextReqId(), size: 0 });

/** A datanode-like server: each request answered by `answer` (null: never); counts the connections it accepted. */
async function server(t: Test, answer: (p: Packet) => Packet | null, opts: { closeAfterError?: boolean } = {}): Promise<{ addr: string; conns: () => number }> {
  const s = new PacketServer('test', async (p) => answer(p), opts);
  const addr = await s.listen('127.0.0.1', 0);
  t.teardown(() => s.close());
  return { addr, conns: () => s.accepted };
}

t.test('a healthy connection is reused; sequential requests need one connection', async (t) => {
  const srv = await server(t, (p) => newReply(p, Result.Ok));
  const pool = new CheckoutPool();
  t.teardown(() => pool.close());
  for (let i = 0; i < 1000; i++) t.equal((await pool.request(srv.addr, req())).resultCode, Result.Ok, `request ${i}`, { diagnostic: false });
  t.equal(srv.conns(), 1, 'the server saw one connection for 1,000 requests');
  t.match(pool.stats(), { opened: 1, reused: 999, discarded: 0, idle: 1 });
});

t.test('an error reply: the connection is closed, never handed out again', async (t) => {
  let n = 0;
  const srv = await server(t, (p) => newReply(p, n++ === 0 ? Result.TryOtherAddr : Result.Ok, Buffer.from('raft is not the leader')), { closeAfterError: true });
  const pool = new CheckoutPool();
  t.teardown(() => pool.close());
  t.equal((await pool.request(srv.addr, req())).resultCode, Result.TryOtherAddr, 'the error reply');
  t.equal((await pool.request(srv.addr, req())).resultCode, Result.Ok, 'the next request succeeds at once (no FIN, no retry)');
  t.equal(srv.conns(), 2, 'on a new connection');
  t.match(pool.stats(), { opened: 2, discarded: 1 });
});

t.test('a timeout: the connection is dropped and the next request gets a fresh one', async (t) => {
  let n = 0;
  const srv = await server(t, (p) => (n++ === 0 ? null : newReply(p, Result.Ok)));
  const pool = new CheckoutPool();
  t.teardown(() => pool.close());
  const e = await pool.request(srv.addr, req(), { timeoutMs: 300 }).then(() => null, (x: unknown) => x);
  t.ok(e instanceof CubeFSError && e.code === ErrorCode.Timeout, 'the request timed out');
  t.equal((await pool.request(srv.addr, req())).resultCode, Result.Ok, 'the next one is answered');
  t.equal(srv.conns(), 2, 'on a new connection');
});

t.test('a FIN while idle: the connection is not handed out', async (t) => {
  const sockets = new Set<net.Socket>();
  let conns = 0;
  const raw = net.createServer((s) => {
    conns++;
    sockets.add(s);
    const reader = new PacketReader();
    s.on('data', (d) => {
      for (const p of reader.push(d)) {
        const r = newReply(p, Result.Ok);
        s.write(encodeHead(r));
        if (wireDataLength(r) > 0) s.write(r.data);
      }
    });
  });
  await new Promise<void>((r) => raw.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => { for (const s of sockets) s.destroy(); raw.close(); });
  const addr = `127.0.0.1:${(raw.address() as net.AddressInfo).port}`;
  const pool = new CheckoutPool();
  t.teardown(() => pool.close());
  const first = await pool.acquire(addr);
  t.equal((await first.request(req())).resultCode, Result.Ok);
  pool.release(first, true);
  for (const s of sockets) s.end(); // the server closes its end of the idle connection
  t.ok(await until(() => first.closed, 10_000), 'the idle connection saw the FIN');
  t.equal((await pool.request(addr, req())).resultCode, Result.Ok, 'a request after the FIN is answered');
  t.equal(conns, 2, 'on a new connection');
  t.equal(pool.stats().opened, 2);
});

t.test('idle connections are bounded per address; concurrent users get their own', async (t) => {
  const srv = await server(t, (p) => newReply(p, Result.Ok));
  const pool = new CheckoutPool({ maxIdle: 4 });
  t.teardown(() => pool.close());
  const held = await Promise.all(Array.from({ length: 10 }, () => pool.acquire(srv.addr)));
  t.equal(new Set(held).size, 10, 'ten users, ten connections');
  for (const c of held) pool.release(c, true);
  t.equal(pool.stats().idle, 4, 'four stay idle, the rest are closed');
});
