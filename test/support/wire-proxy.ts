/**
 * A recording TCP proxy for tests of what a client puts on the wire: it listens on its own address, passes
 * every byte both ways to a real server, and decodes the client's side into packets, so a test sees which
 * host got which request on which connection (as the loopback captures in ../shared/golden show it).
 */
import net from 'node:net';
import type { Test } from 'tap';
import { encodePacket, PacketReader, type Packet } from '../../src/proto/index.js';

export interface Recorded {
  /** 1, 2, ... in the order the proxies accepted the connections (unique across proxies). */
  conn: number;
  /** Arrival order across every proxy of the process. */
  seq: number;
  packet: Packet;
}

export interface RecordingProxy {
  addr: string;
  /** Requests seen so far, in arrival order. */
  readonly requests: Recorded[];
  /** Connections accepted so far. */
  readonly conns: number;
}

let nextConn = 1;
let nextSeq = 1;

/**
 * A TCP proxy on `host` (port 0) in front of `target`, closed at the end of the test: for each client
 * connection `wire` gets the client's socket and one to the target, and decides what passes; either side
 * closing or failing ends both.
 */
async function proxy(t: Test, host: string, target: string, wire: (client: net.Socket, upstream: net.Socket) => void): Promise<string> {
  const sockets = new Set<net.Socket>();
  const [th, tp] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const server = net.createServer((client) => {
    const upstream = net.connect(tp, th);
    sockets.add(client);
    sockets.add(upstream);
    const end = (): void => { client.destroy(); upstream.destroy(); };
    for (const s of [client, upstream]) {
      s.on('close', end);
      s.on('error', end);
    }
    wire(client, upstream);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve());
  });
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    return new Promise<void>((r) => server.close(() => r()));
  });
  return `${host}:${(server.address() as net.AddressInfo).port}`;
}

/** A recording proxy on `host` (port 0) in front of `target`, closed at the end of the test. */
export async function recordingProxy(t: Test, host: string, target: string): Promise<RecordingProxy> {
  const requests: Recorded[] = [];
  let conns = 0;
  const addr = await proxy(t, host, target, (client, upstream) => {
    conns++;
    const id = nextConn++;
    const reader = new PacketReader();
    client.on('data', (d: Buffer) => {
      try {
        for (const p of reader.push(d)) requests.push({ conn: id, seq: nextSeq++, packet: { ...p, data: Buffer.from(p.data), arg: Buffer.from(p.arg) } });
      } catch {
        // not packets: still passed through
      }
      upstream.write(d);
    });
    upstream.on('data', (d: Buffer) => client.write(d));
  });
  return { addr, requests, get conns() { return conns; } };
}

export interface DroppingProxy {
  addr: string;
  /** Replies swallowed so far. */
  readonly dropped: number;
  /** Which requests lose their reply from now on (the request still reaches the server and is applied). */
  drop: (p: Packet) => boolean;
}

/**
 * A proxy that passes every request on but swallows the server's reply to those `drop` picks: the request
 * is applied and the client times out, not knowing (a reply lost on the network, a metanode that applied
 * a request and then stopped answering). Closed at the end of the test.
 */
export async function droppingProxy(t: Test, host: string, target: string, drop: (p: Packet) => boolean): Promise<DroppingProxy> {
  const state = { dropped: 0, drop };
  const addr = await proxy(t, host, target, (client, upstream) => {
    const fromClient = new PacketReader();
    const fromServer = new PacketReader();
    const swallow = new Set<bigint>();
    client.on('data', (d: Buffer) => {
      for (const p of fromClient.push(d)) if (state.drop(p)) swallow.add(p.reqId);
      upstream.write(d);
    });
    upstream.on('data', (d: Buffer) => {
      for (const p of fromServer.push(d)) {
        if (swallow.delete(p.reqId)) state.dropped++;
        else client.write(encodePacket(p));
      }
    });
  });
  return {
    addr,
    get dropped() { return state.dropped; },
    get drop() { return state.drop; },
    set drop(f) { state.drop = f; },
  };
}
