/**
 * Packet connections over TCP (node:net), client side.
 *
 * A PacketConn multiplexes requests on one socket and matches replies by ReqID. A request completes on
 * its first reply, or for streamed replies (StreamRead) when its onReply callback says so. Every request
 * has a deadline; a request that misses it fails with CUBEFS_TIMEOUT and takes the connection down with
 * it (the stream position is unknown after that), failing its other requests as retryable network errors.
 *
 * Payloads are written as a second buffer after the encoded head (corked: one writev), never copied.
 */
import net from 'node:net';
import { encodeHead, PacketReader, wireDataLength, type Packet } from '../proto/packet.js';
import { CubeFSError, ErrorCode } from '../util/errors.js';
import { logger } from '../util/log.js';

const log = logger('tcp');

export const DEFAULT_TIMEOUT_MS = 30_000;
export const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;

export interface RequestOptions {
  timeoutMs?: number;
  /** Streamed replies: called for each reply; return true when the request is complete. */
  onReply?: (p: Packet) => boolean;
}

interface Pending {
  req: Packet;
  resolve: (p: Packet) => void;
  reject: (e: Error) => void;
  onReply: ((p: Packet) => boolean) | undefined;
  timer: NodeJS.Timeout;
}

export class PacketConn {
  readonly addr: string;
  private readonly sock: net.Socket;
  private readonly reader = new PacketReader();
  private readonly pending = new Map<bigint, Pending>();
  private closedWith: Error | null = null;

  private constructor(addr: string, sock: net.Socket) {
    this.addr = addr;
    this.sock = sock;
    sock.setNoDelay(true);
    sock.on('data', (chunk: Buffer) => this.onData(chunk));
    sock.on('error', (e) => this.fail(new CubeFSError(ErrorCode.Network, `${addr}: ${e.message}`, { retryable: true, cause: e })));
    // A FIN is the end of this connection (a datanode closes its end after an error reply): dead at once, so
    // no one picks it in the moment before 'close'.
    sock.on('end', () => this.fail(new CubeFSError(ErrorCode.Network, `${addr}: connection closed by the peer`, { retryable: true })));
    sock.on('close', () => this.fail(new CubeFSError(ErrorCode.Network, `${addr}: connection closed`, { retryable: true })));
  }

  static connect(addr: string, timeoutMs = DEFAULT_CONNECT_TIMEOUT_MS): Promise<PacketConn> {
    const { host, port } = splitAddr(addr);
    return new Promise((resolve, reject) => {
      const sock = net.connect({ host, port });
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new CubeFSError(ErrorCode.Timeout, `connect to ${addr}: no answer in ${timeoutMs} ms`, { retryable: true }));
      }, timeoutMs);
      sock.once('connect', () => {
        clearTimeout(timer);
        sock.removeAllListeners('error');
        resolve(new PacketConn(addr, sock));
      });
      sock.once('error', (e) => {
        clearTimeout(timer);
        reject(new CubeFSError(ErrorCode.Network, `connect to ${addr}: ${e.message}`, { retryable: true, cause: e }));
      });
    });
  }

  get closed(): boolean {
    return this.closedWith !== null;
  }

  get inflight(): number {
    return this.pending.size;
  }

  request(req: Packet, opts: RequestOptions = {}): Promise<Packet> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    return new Promise<Packet>((resolve, reject) => {
      const timer = setTimeout(() => {
        const err = new CubeFSError(ErrorCode.Timeout, `${this.addr}: no reply to op 0x${req.opcode.toString(16)} reqid ${req.reqId} in ${timeoutMs} ms`, { retryable: true });
        this.pending.delete(req.reqId);
        reject(err);
        this.fail(new CubeFSError(ErrorCode.Network, `${this.addr}: connection dropped after a timeout`, { retryable: true }));
      }, timeoutMs);
      this.pending.set(req.reqId, { req, resolve, reject, onReply: opts.onReply, timer });
      const head = encodeHead(req);
      const n = wireDataLength(req);
      this.sock.cork();
      this.sock.write(head);
      if (n > 0) this.sock.write(n === req.data.length ? req.data : req.data.subarray(0, n));
      this.sock.uncork();
    });
  }

  close(): void {
    this.fail(new CubeFSError(ErrorCode.Closed, `${this.addr}: connection closed by client`));
  }

  private onData(chunk: Buffer): void {
    let packets: Packet[];
    try {
      packets = this.reader.push(chunk);
    } catch (e) {
      this.fail(new CubeFSError(ErrorCode.BadPacket, `${this.addr}: ${(e as Error).message}`, { cause: e }));
      return;
    }
    for (const p of packets) {
      const w = this.pending.get(p.reqId);
      if (!w) {
        log('%s: reply for unknown reqid %s op 0x%s dropped', this.addr, p.reqId, p.opcode.toString(16));
        continue;
      }
      if (w.req.opcode !== p.opcode) {
        this.fail(new CubeFSError(ErrorCode.BadPacket, `${this.addr}: reply opcode 0x${p.opcode.toString(16)} does not match request 0x${w.req.opcode.toString(16)}`));
        return;
      }
      let done = true;
      if (w.onReply) {
        try {
          done = w.onReply(p);
        } catch (e) {
          this.finish(p.reqId, w);
          w.reject(e as Error);
          continue;
        }
      }
      if (done) {
        this.finish(p.reqId, w);
        w.resolve(p);
      }
    }
  }

  private finish(id: bigint, w: Pending): void {
    clearTimeout(w.timer);
    this.pending.delete(id);
  }

  private fail(err: Error): void {
    if (!this.closedWith) {
      this.closedWith = err;
      this.sock.destroy();
    }
    for (const [id, w] of this.pending) {
      this.finish(id, w);
      w.reject(err);
    }
  }
}

/**
 * A few connections per address, chosen by least in-flight requests. Dead connections are replaced
 * on the next request.
 */
export class ConnPool {
  private readonly conns = new Map<string, (PacketConn | Promise<PacketConn>)[]>();
  private closed = false;

  constructor(private readonly perAddr = 4, private readonly connectTimeoutMs = DEFAULT_CONNECT_TIMEOUT_MS) {}

  async get(addr: string): Promise<PacketConn> {
    if (this.closed) throw new CubeFSError(ErrorCode.Closed, 'connection pool is closed');
    let list = this.conns.get(addr);
    if (!list) this.conns.set(addr, (list = []));
    for (let i = list.length - 1; i >= 0; i--) {
      const c = list[i];
      if (c instanceof PacketConn && c.closed) list.splice(i, 1);
    }
    const live = list.filter((c): c is PacketConn => c instanceof PacketConn);
    const idle = live.find((c) => c.inflight === 0);
    if (idle) return idle;
    if (list.length < this.perAddr) {
      const p = PacketConn.connect(addr, this.connectTimeoutMs);
      list.push(p);
      try {
        const c = await p;
        const i = list.indexOf(p);
        if (i >= 0) list[i] = c;
        if (this.closed) c.close();
        return c;
      } catch (e) {
        const i = list.indexOf(p);
        if (i >= 0) list.splice(i, 1);
        throw e;
      }
    }
    if (live.length === 0) return (await Promise.race(list)) as PacketConn;
    return live.reduce((a, b) => (b.inflight < a.inflight ? b : a));
  }

  /** One request, on a pooled connection. */
  async request(addr: string, req: Packet, opts?: RequestOptions): Promise<Packet> {
    const c = await this.get(addr);
    return c.request(req, opts);
  }

  /** A connection of its own, outside the pool (ordered pipelines such as extent writers). */
  dedicated(addr: string): Promise<PacketConn> {
    return PacketConn.connect(addr, this.connectTimeoutMs);
  }

  close(): void {
    this.closed = true;
    for (const list of this.conns.values()) {
      for (const c of list) {
        if (c instanceof PacketConn) c.close();
        else c.then((x) => x.close(), () => undefined);
      }
    }
    this.conns.clear();
  }
}

export function splitAddr(addr: string): { host: string; port: number } {
  const i = addr.lastIndexOf(':');
  if (i <= 0) throw new CubeFSError(ErrorCode.Invalid, `bad address "${addr}" (want HOST:PORT)`);
  const host = addr.slice(0, i).replace(/^\[|\]$/g, '');
  const port = Number(addr.slice(i + 1));
  if (!Number.isInteger(port) || port <= 0 || port > 65535) throw new CubeFSError(ErrorCode.Invalid, `bad port in "${addr}"`);
  return { host, port };
}
