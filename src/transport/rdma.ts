/**
 * Packet connections over RDMA (native/rdma; the wire is docs/rdma.md), client and server side.
 *
 * RdmaContext: one protection domain on one device, the pool's region registered in it, one completion
 * thread. Client traffic and leader-to-follower replication each get a context of their own (separate PDs,
 * QPs and MRs over the same pool). A context owns its connections and listeners: close() closes them first.
 *
 * RdmaConnection (client): a group of n RC QPs to one peer; a request goes to QP `reqId % n` as one control
 * block (the packet's 69-byte header and arg, plus the descriptor of a pool buffer for the payload) and is
 * matched to its response by ReqID, like src/transport/tcp.ts's PacketConn. Every request has a deadline. A
 * missed deadline or a QP error moves that QP to the error state first (so the peer can no longer touch the
 * request's buffer), then fails its requests as retryable CUBEFS_NETWORK/CUBEFS_TIMEOUT errors; the next
 * request routed to that QP reconnects it. Retrying idempotent requests is the caller's business (src/data).
 *
 * RdmaListener (server): accepts QPs; each is an RdmaServerConnection that hands every request block to
 * onRequest(block, conn). The server moves payloads with read(desc -> local pool buffer) and
 * write(local pool buffer -> desc) on the QP the request came on, and answers with respond(block, packet)
 * on that same QP (RC ordering: a Write posted before the response lands before the response is seen).
 */
import { decodePacket, encodeHead, peekPacket, wireDataLength, type Packet } from '../proto/packet.js';
import { CubeFSError, ErrorCode } from '../util/errors.js';
import { logger } from '../util/log.js';
import {
  rdmaAddon,
  type NativeChannelOptions,
  type NativeContext,
  type NativeDesc,
  type NativeEvent,
  type RdmaChannelStats,
  type RdmaDeviceInfo,
} from './rdma-native.js';
import { splitAddr } from './tcp.js';

export type { RdmaChannelStats, RdmaDeviceInfo } from './rdma-native.js';

const log = logger('rdma');

export const DEFAULT_TIMEOUT_MS = 30_000;
export const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
export const DEFAULT_QPS = 4;
export const DEFAULT_RECV_DEPTH = 128;
/** Room for the packet (header, arg, inline data) in a 512-byte control block. */
export const MAX_BLOCK_PACKET = 480;

const KIND_REQUEST = 1;
const KIND_RESPONSE = 2;

/** Where a payload lives in a peer's registered memory. */
export type RemoteDesc = NativeDesc;

/** A pool the context registers in its PD: the native pool object, or a wrapper exposing it as `native`. */
export type RdmaPool = object;

/** Devices with an active port; empty (not an error) when there is no device or no kernel support. */
export function rdmaDevices(): RdmaDeviceInfo[] {
  try {
    return rdmaAddon().rdmaDeviceInfo();
  } catch (e) {
    log('rdmaDevices: %s', (e as Error).message);
    return [];
  }
}

function wrapNative(e: unknown, what: string): CubeFSError {
  if (e instanceof CubeFSError) return e;
  const err = e as { message?: string; code?: string; errno?: number };
  const msg = `${what}: ${err.message ?? String(e)}`;
  if (err.code === 'ENODEV') return new CubeFSError(ErrorCode.NoRdmaDevice, msg, { errno: err.errno, cause: e });
  if (err.code === 'EINVAL' || e instanceof TypeError || e instanceof RangeError) {
    return new CubeFSError(ErrorCode.Invalid, msg, { errno: err.errno, cause: e });
  }
  return new CubeFSError(ErrorCode.Network, msg, { errno: err.errno, retryable: true, cause: e });
}

/** What a context tells one native channel's owner. */
interface ChannelSink {
  established?(peerRecvDepth: number): void;
  connectError?(text: string): void;
  recv(kind: number, packet: Buffer, desc: RemoteDesc | null): void;
  error(text: string): void;
}

interface PendingOp {
  resolve: () => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
  ch: number;
}

export interface RdmaContextOptions {
  /** Device name (e.g. "rxe0", "mlx5_0"); default: the first with an active port. */
  device?: string;
  pool: RdmaPool;
}

export class RdmaContext {
  readonly device: string;
  readonly pool: RdmaPool;
  /** native/rdma's context; for this module's classes. */
  readonly native: NativeContext;
  private readonly sinks = new Map<number, ChannelSink>();
  private readonly acceptors = new Map<number, RdmaListener>();
  private readonly children = new Set<{ close(): void }>();
  private readonly ops = new Map<number, PendingOp>();
  private nextOp = 1;
  private closedFlag = false;

  constructor(opts: RdmaContextOptions) {
    const nativePool = (opts.pool as { native?: unknown }).native ?? opts.pool;
    try {
      this.native = new (rdmaAddon().RdmaContext)(nativePool, opts.device, (evs) => this.onEvents(evs));
    } catch (e) {
      throw wrapNative(e, 'RDMA context');
    }
    this.pool = opts.pool;
    this.device = this.native.info().device;
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  /** The pool region's rkey in this context's PD (what descriptors carry). */
  get rkey(): number {
    return this.native.info().poolRkey ?? 0;
  }

  /** Children first (connections, listeners), then the native context (QPs, CQs, MR, PD). Idempotent. */
  close(): void {
    if (this.closedFlag) return;
    this.closedFlag = true;
    for (const c of [...this.children]) c.close();
    this.children.clear();
    const err = new CubeFSError(ErrorCode.Closed, `RDMA context on ${this.device} closed`);
    for (const [id, op] of this.ops) {
      clearTimeout(op.timer);
      this.ops.delete(id);
      op.reject(err);
    }
    this.native.close();
  }

  /** @internal */
  adopt(child: { close(): void }): void {
    this.children.add(child);
  }

  /** @internal */
  disown(child: { close(): void }): void {
    this.children.delete(child);
  }

  /** @internal One native channel to host:port, established (or a Network/Timeout error). */
  openChannel(host: string, port: number, opts: NativeChannelOptions, sink: ChannelSink, connectTimeoutMs: number): Promise<number> {
    const where = `${host}:${port}`;
    if (this.closedFlag) return Promise.reject(new CubeFSError(ErrorCode.Closed, `RDMA connect to ${where}: context closed`));
    return new Promise((resolve, reject) => {
      let ch: number;
      try {
        ch = this.native.connect(host, port, opts);
      } catch (e) {
        reject(wrapNative(e, `RDMA connect to ${where}`));
        return;
      }
      const timer = setTimeout(() => {
        this.closeChannel(ch);
        reject(new CubeFSError(ErrorCode.Timeout, `RDMA connect to ${where}: no answer in ${connectTimeoutMs} ms`, { retryable: true }));
      }, connectTimeoutMs);
      this.sinks.set(ch, {
        established: (depth) => {
          clearTimeout(timer);
          this.sinks.set(ch, sink);
          sink.established?.(depth);
          resolve(ch);
        },
        connectError: (text) => {
          clearTimeout(timer);
          this.closeChannel(ch);
          reject(new CubeFSError(ErrorCode.Network, `RDMA connect to ${where}: ${text}`, { retryable: true }));
        },
        recv: () => undefined,
        error: (text) => {
          clearTimeout(timer);
          this.closeChannel(ch);
          reject(new CubeFSError(ErrorCode.Network, `RDMA connect to ${where}: ${text}`, { retryable: true }));
        },
      });
    });
  }

  /** @internal */
  listenNative(host: string, port: number, opts: NativeChannelOptions, l: RdmaListener): { id: number; port: number } {
    if (this.closedFlag) throw new CubeFSError(ErrorCode.Closed, `RDMA listen on ${host}:${port}: context closed`);
    let r: { id: number; port: number };
    try {
      r = this.native.listen(host, port, opts);
    } catch (e) {
      throw wrapNative(e, `RDMA listen on ${host}:${port}`);
    }
    this.acceptors.set(r.id, l);
    return r;
  }

  /** @internal */
  closeListener(id: number): void {
    this.acceptors.delete(id);
    if (!this.closedFlag) this.native.closeListener(id);
  }

  /** @internal */
  setSink(ch: number, sink: ChannelSink): void {
    this.sinks.set(ch, sink);
  }

  /** @internal Destroys the native channel (disconnect, QP, CQ, cm id). Idempotent. */
  closeChannel(ch: number): void {
    this.sinks.delete(ch);
    if (!this.closedFlag) this.native.closeChannel(ch);
  }

  /** @internal An RDMA Read (remote -> local) or Write (local -> remote) on channel `ch`, under a deadline. */
  rdmaOp(ch: number, write: boolean, local: Uint8Array, desc: RemoteDesc, len: number, timeoutMs: number, peer: string): Promise<void> {
    const what = `RDMA ${write ? 'write to' : 'read from'} ${peer}`;
    if (this.closedFlag) return Promise.reject(new CubeFSError(ErrorCode.Closed, `${what}: context closed`));
    if (len > desc.len) {
      return Promise.reject(new CubeFSError(ErrorCode.Invalid, `${what}: ${len} bytes exceed the remote buffer of ${desc.len}`));
    }
    const id = this.nextOp++;
    return new Promise<void>((resolve, reject) => {
      try {
        this.native.rdma(ch, write, local, desc.addr, desc.rkey, len, id);
      } catch (e) {
        reject(wrapNative(e, what));
        return;
      }
      const timer = setTimeout(() => {
        this.ops.delete(id);
        // The QP goes to error before the caller may reuse `local`: the peer can no longer reach it.
        this.native.fail(ch, `${what}: no completion in ${timeoutMs} ms`);
        reject(new CubeFSError(ErrorCode.Timeout, `${what}: no completion in ${timeoutMs} ms`, { retryable: true }));
      }, timeoutMs);
      this.ops.set(id, { resolve, reject, timer, ch });
    });
  }

  private onEvents(evs: NativeEvent[]): void {
    for (const ev of evs) {
      try {
        this.onEvent(ev);
      } catch (e) {
        log('event %s on channel %d: %s', ev.type, ev.ch, (e as Error).stack ?? e);
      }
    }
  }

  private onEvent(ev: NativeEvent): void {
    switch (ev.type) {
      case 'op': {
        const op = this.ops.get(ev.op);
        if (!op) return;
        this.ops.delete(ev.op);
        clearTimeout(op.timer);
        if (ev.ok) op.resolve();
        else op.reject(new CubeFSError(ErrorCode.Network, ev.text ?? 'RDMA operation failed', { retryable: true }));
        return;
      }
      case 'incoming': {
        const l = this.acceptors.get(ev.listener);
        if (!l) {
          this.native.closeChannel(ev.ch);
          return;
        }
        l.accept(ev.ch, ev.peer);
        return;
      }
      case 'established':
        this.sinks.get(ev.ch)?.established?.(ev.peerRecvDepth);
        return;
      case 'connectError':
        this.sinks.get(ev.ch)?.connectError?.(ev.text);
        return;
      case 'recv':
        this.sinks.get(ev.ch)?.recv(ev.kind, ev.packet, ev.desc ?? null);
        return;
      case 'error':
      case 'disconnected':
        this.sinks.get(ev.ch)?.error(ev.text);
        return;
    }
  }
}

/**
 * A control block's packet: header and arg, then the data inline when it is small (error text, replies
 * without payload). A payload moved by RDMA is not inline: the header's Size still gives its length, and the
 * block then holds exactly header + arg (decodeBlock tells the two apart by that length).
 */
function blockPacket(p: Packet, what: string, payloadByRdma: boolean): Buffer {
  const head = encodeHead(p);
  const n = wireDataLength(p);
  const inline = !payloadByRdma && n > 0 && p.data.length >= n;
  if (!payloadByRdma && n > 0 && p.data.length > 0 && p.data.length < n) {
    throw new CubeFSError(ErrorCode.Invalid, `${what}: Size ${n} but only ${p.data.length} bytes of data`);
  }
  const buf = inline ? Buffer.concat([head, p.data.subarray(0, n)]) : head;
  if (buf.length > MAX_BLOCK_PACKET) {
    throw new CubeFSError(ErrorCode.Invalid, `${what}: packet of ${buf.length} bytes (header ${head.length}, inline data ${inline ? n : 0}) does not fit a control block; send the payload by descriptor`);
  }
  return buf;
}

/** The packet of a received block; `data` is empty when the payload went by RDMA (Size keeps its length). */
function decodeBlock(bytes: Buffer): Packet {
  const info = peekPacket(bytes);
  if (info && info.dataLen > 0 && bytes.length === info.headLen + info.argLen) {
    const b = Buffer.from(bytes);
    const size = b.readUInt32BE(9);
    b.writeUInt32BE(0, 9);
    const p = decodePacket(b).packet;
    p.size = size;
    return p;
  }
  return decodePacket(bytes).packet;
}

export interface RdmaConnectOptions {
  /** QPs in the group (requests spread by reqId); default 4. */
  qps?: number;
  /** Receive blocks pre-posted per QP (the peer's credits); default 128. */
  recvDepth?: number;
  /** Deadline of each QP's connect; default 5 s. */
  timeoutMs?: number;
  /** RDMA Reads/Writes in flight per QP. */
  maxRdma?: number;
  /** RNR retries (7 = forever). 0 turns any receive-queue overrun into a QP error: tests use it. */
  rnrRetry?: number;
}

export interface RdmaRequestOptions {
  /** The payload's pool buffer (write: its bytes; read: where the reply's bytes go), sent as a descriptor. */
  desc?: { buf: Uint8Array };
  timeoutMs?: number;
}

interface Pending {
  req: Packet;
  qp: number;
  resolve: (p: Packet) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

interface Member {
  ch: number | null;
  connecting: Promise<number> | null;
  reqs: Set<bigint>;
  failures: number;
}

export class RdmaConnection {
  readonly addr: string;
  private readonly host: string;
  private readonly port: number;
  private readonly members: Member[];
  private readonly pending = new Map<bigint, Pending>();
  private readonly channelOpts: NativeChannelOptions;
  private readonly connectTimeoutMs: number;
  private closedWith: Error | null = null;
  /** QP (re)connections made after the first. */
  reconnects = 0;

  private constructor(private readonly ctx: RdmaContext, addr: string, opts: RdmaConnectOptions) {
    this.addr = addr;
    ({ host: this.host, port: this.port } = splitAddr(addr));
    const n = opts.qps ?? DEFAULT_QPS;
    if (!Number.isInteger(n) || n < 1 || n > 64) throw new CubeFSError(ErrorCode.Invalid, `qps must be 1..64, not ${n}`);
    this.members = Array.from({ length: n }, () => ({ ch: null, connecting: null, reqs: new Set<bigint>(), failures: 0 }));
    this.connectTimeoutMs = opts.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    this.channelOpts = {
      recvDepth: opts.recvDepth ?? DEFAULT_RECV_DEPTH,
      timeoutMs: this.connectTimeoutMs,
      ...(opts.maxRdma !== undefined ? { maxRdma: opts.maxRdma } : {}),
      ...(opts.rnrRetry !== undefined ? { rnrRetry: opts.rnrRetry } : {}),
    };
  }

  /** Connects every QP of the group to addr ("host:port"); fails (closing what did connect) if any fails. */
  static async connect(ctx: RdmaContext, addr: string, opts: RdmaConnectOptions = {}): Promise<RdmaConnection> {
    const c = new RdmaConnection(ctx, addr, opts);
    ctx.adopt(c);
    try {
      await Promise.all(c.members.map((_, i) => c.member(i)));
    } catch (e) {
      c.close();
      throw e;
    }
    c.reconnects = 0;
    return c;
  }

  get closed(): boolean {
    return this.closedWith !== null;
  }

  get inflight(): number {
    return this.pending.size;
  }

  get qps(): number {
    return this.members.length;
  }

  request(req: Packet, opts: RdmaRequestOptions = {}): Promise<Packet> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    if (this.pending.has(req.reqId)) {
      return Promise.reject(new CubeFSError(ErrorCode.Invalid, `${this.addr}: reqid ${req.reqId} is already in flight`));
    }
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const qp = Number(((req.reqId % BigInt(this.members.length)) + BigInt(this.members.length)) % BigInt(this.members.length));
    const what = `${this.addr} qp ${qp}: op 0x${req.opcode.toString(16)} reqid ${req.reqId}`;
    let packet: Buffer;
    try {
      packet = blockPacket(req, what, opts.desc !== undefined);
    } catch (e) {
      return Promise.reject(e);
    }
    return new Promise<Packet>((resolve, reject) => {
      const timer = setTimeout(() => {
        // The QP to error first (the peer then cannot read or write this request's buffer any more), then
        // this request fails as a timeout and the QP's others as network errors; the QP reconnects on use.
        if (this.finish(req.reqId)) {
          this.onQpError(qp, `deadline of reqid ${req.reqId} passed`);
          reject(new CubeFSError(ErrorCode.Timeout, `${what}: no reply in ${timeoutMs} ms`, { retryable: true }));
        }
      }, timeoutMs);
      this.pending.set(req.reqId, { req, qp, resolve, reject, timer });
      this.members[qp]!.reqs.add(req.reqId);
      const connectThenSend = () => this.member(qp).then((ch) => send(ch, false), (e: Error) => {
        if (this.finish(req.reqId)) reject(e);
      });
      const send = (ch: number, fresh: boolean) => {
        if (!this.pending.has(req.reqId)) return;
        try {
          this.ctx.native.send(ch, KIND_REQUEST, packet, opts.desc?.buf);
        } catch (e) {
          // The QP failed and its event is still on the way: take it down now and send on a new one.
          if (!fresh && (e as { code?: string }).code === 'ENOTCONN' && !this.closedWith) {
            this.onQpError(qp, (e as Error).message, req.reqId);
            void connectThenSend();
            return;
          }
          if (this.finish(req.reqId)) reject(wrapNative(e, what));
        }
      };
      const m = this.members[qp]!;
      if (m.ch !== null) send(m.ch, false);
      else void connectThenSend();
    });
  }

  /** Per QP: the native counters (credits, sends, RDMA ops); null for a QP not connected now. */
  stats(): (RdmaChannelStats | null)[] {
    return this.members.map((m) => (m.ch === null ? null : this.ctx.native.channelStats(m.ch)));
  }

  /** Test hook: moves QP `qp` to IBV_QPS_ERR, as a real fault would. */
  forceError(qp: number): boolean {
    const m = this.members[qp];
    return m?.ch != null && this.ctx.native.forceError(m.ch);
  }

  close(): void {
    if (this.closedWith) return;
    this.closedWith = new CubeFSError(ErrorCode.Closed, `${this.addr}: RDMA connection closed by client`);
    for (const m of this.members) {
      if (m.ch !== null) this.ctx.closeChannel(m.ch);
      m.ch = null;
    }
    for (const id of [...this.pending.keys()]) {
      const w = this.pending.get(id)!;
      this.finish(id);
      w.reject(this.closedWith);
    }
    this.ctx.disown(this);
  }

  /** The QP at index i, connecting it if it is not up (the group reconnects on use). */
  private member(i: number): Promise<number> {
    const m = this.members[i]!;
    if (this.closedWith) return Promise.reject(this.closedWith);
    if (m.ch !== null) return Promise.resolve(m.ch);
    if (m.connecting) return m.connecting;
    this.reconnects++;
    const sink: ChannelSink = {
      recv: (kind, packet) => this.onBlock(i, kind, packet),
      error: (text) => this.onQpError(i, text),
    };
    m.connecting = this.ctx.openChannel(this.host, this.port, this.channelOpts, sink, this.connectTimeoutMs).then(
      (ch) => {
        m.connecting = null;
        if (this.closedWith) {
          this.ctx.closeChannel(ch);
          throw this.closedWith;
        }
        m.ch = ch;
        m.failures = 0;
        return ch;
      },
      (e: Error) => {
        m.connecting = null;
        m.failures++;
        throw e;
      },
    );
    return m.connecting;
  }

  private onBlock(qp: number, kind: number, bytes: Buffer): void {
    let p: Packet;
    try {
      p = decodeBlock(bytes);
    } catch (e) {
      this.onQpError(qp, `bad packet in a response block: ${(e as Error).message}`);
      return;
    }
    if (kind !== KIND_RESPONSE) {
      log('%s qp %d: unexpected block kind %d (reqid %s) dropped', this.addr, qp, kind, p.reqId);
      return;
    }
    const w = this.pending.get(p.reqId);
    if (!w) {
      log('%s qp %d: reply for unknown reqid %s op 0x%s dropped', this.addr, qp, p.reqId, p.opcode.toString(16));
      return;
    }
    if (w.req.opcode !== p.opcode) {
      this.onQpError(qp, `reply opcode 0x${p.opcode.toString(16)} does not match request 0x${w.req.opcode.toString(16)}`);
      return;
    }
    this.finish(p.reqId);
    w.resolve(p);
  }

  /** The QP is in error (native put it there): its requests fail retryable, it reconnects on next use. */
  private onQpError(qp: number, text: string, spare?: bigint): void {
    const m = this.members[qp]!;
    if (m.ch !== null) {
      this.ctx.native.fail(m.ch, text);
      this.ctx.closeChannel(m.ch);
    }
    m.ch = null;
    log('%s qp %d: %s', this.addr, qp, text);
    const err = new CubeFSError(ErrorCode.Network, `${this.addr} qp ${qp}: ${text}`, { retryable: true });
    for (const id of [...m.reqs]) {
      const w = this.pending.get(id);
      if (!w || id === spare) continue;
      this.finish(id);
      w.reject(err);
    }
  }

  private finish(id: bigint): boolean {
    const w = this.pending.get(id);
    if (!w) return false;
    clearTimeout(w.timer);
    this.pending.delete(id);
    this.members[w.qp]!.reqs.delete(id);
    return true;
  }
}

/** A request as the server sees it. */
export interface RdmaRequestBlock {
  packet: Packet;
  /** The client's buffer for the payload, when it sent one. */
  desc: RemoteDesc | null;
  /** The QP it arrived on (answer and move data on this one). */
  conn: RdmaServerConnection;
}

export interface RdmaListenOptions {
  recvDepth?: number;
  maxRdma?: number;
  rnrRetry?: number;
  backlog?: number;
  onRequest: (block: RdmaRequestBlock, conn: RdmaServerConnection) => void;
  onConnection?: (conn: RdmaServerConnection) => void;
}

export class RdmaListener {
  readonly host: string;
  readonly port: number;
  readonly connections = new Set<RdmaServerConnection>();
  private readonly id: number;
  private closedFlag = false;

  private constructor(private readonly ctx: RdmaContext, host: string, port: number, private readonly opts: RdmaListenOptions) {
    this.host = host;
    const r = ctx.listenNative(host, port, {
      recvDepth: opts.recvDepth ?? DEFAULT_RECV_DEPTH,
      ...(opts.maxRdma !== undefined ? { maxRdma: opts.maxRdma } : {}),
      ...(opts.rnrRetry !== undefined ? { rnrRetry: opts.rnrRetry } : {}),
      ...(opts.backlog !== undefined ? { backlog: opts.backlog } : {}),
    }, this);
    this.id = r.id;
    this.port = r.port;
    ctx.adopt(this);
  }

  /** Listens on host:port (port 0: any free port in the rdma_cm port space; see `port`). */
  static listen(ctx: RdmaContext, host: string, port: number, opts: RdmaListenOptions): RdmaListener {
    return new RdmaListener(ctx, host, port, opts);
  }

  get addr(): string {
    return `${this.host}:${this.port}`;
  }

  /** @internal */
  accept(ch: number, peer: string): void {
    const conn = new RdmaServerConnection(this.ctx, ch, peer, this.opts.onRequest, () => this.connections.delete(conn));
    this.connections.add(conn);
    this.opts.onConnection?.(conn);
  }

  /** Accepted connections first, then the listening id. Idempotent. */
  close(): void {
    if (this.closedFlag) return;
    this.closedFlag = true;
    for (const c of [...this.connections]) c.close();
    this.ctx.closeListener(this.id);
    this.ctx.disown(this);
  }
}

export interface RdmaDataOptions {
  timeoutMs?: number;
  /** Bytes to move (default: the whole local buffer, which must fit the remote one). */
  len?: number;
}

export class RdmaServerConnection {
  readonly peer: string;
  private closedWith: string | null = null;

  /** @internal */
  constructor(
    private readonly ctx: RdmaContext,
    private ch: number,
    peer: string,
    onRequest: (block: RdmaRequestBlock, conn: RdmaServerConnection) => void,
    private readonly onClose: () => void,
  ) {
    this.peer = peer;
    ctx.setSink(ch, {
      recv: (kind, bytes, desc) => {
        if (kind !== KIND_REQUEST) {
          log('%s: unexpected block kind %d dropped', peer, kind);
          return;
        }
        let packet: Packet;
        try {
          packet = decodeBlock(bytes);
        } catch (e) {
          log('%s: bad packet in a request block: %s; closing', peer, (e as Error).message);
          this.close();
          return;
        }
        onRequest({ packet, desc, conn: this }, this);
      },
      error: (text) => {
        log('%s: %s', peer, text);
        this.closedWith = text;
        this.close();
      },
    });
  }

  get closed(): boolean {
    return this.closedWith !== null;
  }

  /** RDMA Read: the peer's bytes at `desc` into `buf` (a buffer of the context's pool). */
  read(desc: RemoteDesc, buf: Uint8Array, opts: RdmaDataOptions = {}): Promise<void> {
    if (this.closedWith) return Promise.reject(this.closedError('RDMA read'));
    return this.ctx.rdmaOp(this.ch, false, buf, desc, opts.len ?? Math.min(buf.length, desc.len), opts.timeoutMs ?? DEFAULT_TIMEOUT_MS, this.peer);
  }

  /** RDMA Write: `buf` (a buffer of the context's pool) into the peer's memory at `desc`. */
  write(buf: Uint8Array, desc: RemoteDesc, opts: RdmaDataOptions = {}): Promise<void> {
    if (this.closedWith) return Promise.reject(this.closedError('RDMA write'));
    return this.ctx.rdmaOp(this.ch, true, buf, desc, opts.len ?? buf.length, opts.timeoutMs ?? DEFAULT_TIMEOUT_MS, this.peer);
  }

  /**
   * Answers `block` with `packet` on this QP; false when the connection is gone (the client times out or
   * retries). A reply whose payload went by write() carries its Size and no data.
   */
  respond(block: RdmaRequestBlock, packet: Packet): boolean {
    if (block.conn !== this) return block.conn.respond(block, packet);
    if (this.closedWith) return false;
    try {
      this.ctx.native.send(this.ch, KIND_RESPONSE, blockPacket(packet, `response to ${this.peer}`, false));
      return true;
    } catch (e) {
      log('%s: response reqid %s not sent: %s', this.peer, packet.reqId, (e as Error).message);
      return false;
    }
  }

  stats(): RdmaChannelStats | null {
    return this.ctx.native.channelStats(this.ch);
  }

  /** Test hook: moves this QP to IBV_QPS_ERR. */
  forceError(): boolean {
    return this.ctx.native.forceError(this.ch);
  }

  close(): void {
    if (this.closedWith === null) this.closedWith = 'closed';
    if (this.ch < 0) return;
    this.ctx.closeChannel(this.ch);
    this.ch = -1;
    this.onClose();
  }

  private closedError(what: string): CubeFSError {
    return new CubeFSError(ErrorCode.Network, `${what} with ${this.peer}: connection ${this.closedWith}`, { retryable: true });
  }
}
