/**
 * Connections to datanodes the way upstream's client pools them (util/connpool.go, StreamConnPool): a
 * connection belongs to one user at a time (one request, or an extent writer's whole pipeline) and goes
 * back to the pool when that user is done with it.
 *
 * Only a connection on which everything went right goes back. A real datanode closes its end after it
 * sends an error reply (repl_protocol.go: Stop after an error packet), so a connection that saw an error
 * reply, a timeout, a FIN or a stream cut short is closed here and never handed out again; the next user
 * gets a fresh one.
 *
 * Idle connections: at most `maxIdle` per address (most recently used first, so a few stay warm), each
 * closed once idle for `idleMs` (upstream: 30 s).
 */
import { PacketConn, type RequestOptions, DEFAULT_CONNECT_TIMEOUT_MS } from './tcp.js';
import type { Packet } from '../proto/packet.js';
import { Result } from '../proto/result.js';
import { CubeFSError, ErrorCode } from '../util/errors.js';

export const DEFAULT_MAX_IDLE = 16;
export const DEFAULT_IDLE_MS = 30_000;

interface Idle {
  conn: PacketConn;
  since: number;
}

export interface CheckoutPoolOptions {
  maxIdle?: number;
  idleMs?: number;
  connectTimeoutMs?: number;
  /** Told of every failed connect (the data path marks the host down for a while). */
  onConnectError?: (addr: string, e: Error) => void;
}

export interface CheckoutStats {
  /** TCP connections opened. */
  opened: number;
  /** Checkouts served by an idle connection. */
  reused: number;
  /** Connections closed because something went wrong on them (never reused). */
  discarded: number;
  /** Idle connections now, over all addresses. */
  idle: number;
}

export class CheckoutPool {
  private readonly idle = new Map<string, Idle[]>();
  private readonly busy = new Set<PacketConn>();
  private readonly maxIdle: number;
  private readonly idleMs: number;
  private readonly connectTimeoutMs: number;
  private readonly onConnectError: ((addr: string, e: Error) => void) | undefined;
  private readonly reaper: NodeJS.Timeout;
  private readonly counters = { opened: 0, reused: 0, discarded: 0 };
  private closed = false;

  constructor(opts: CheckoutPoolOptions = {}) {
    this.maxIdle = opts.maxIdle ?? DEFAULT_MAX_IDLE;
    this.idleMs = opts.idleMs ?? DEFAULT_IDLE_MS;
    this.connectTimeoutMs = opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    this.onConnectError = opts.onConnectError;
    this.reaper = setInterval(() => this.reap(), Math.max(1000, Math.floor(this.idleMs / 3)));
    this.reaper.unref();
  }

  stats(): CheckoutStats {
    let idle = 0;
    for (const l of this.idle.values()) idle += l.length;
    return { ...this.counters, idle };
  }

  /** A connection to `addr` for the caller alone: an idle one if any is alive, else a new one. */
  async acquire(addr: string): Promise<PacketConn> {
    if (this.closed) throw new CubeFSError(ErrorCode.Closed, 'connection pool is closed');
    const list = this.idle.get(addr);
    while (list && list.length > 0) {
      const { conn } = list.pop()!;
      if (conn.closed) continue; // the peer closed it while idle
      this.counters.reused++;
      this.busy.add(conn);
      return conn;
    }
    let conn: PacketConn;
    try {
      conn = await PacketConn.connect(addr, this.connectTimeoutMs);
    } catch (e) {
      this.onConnectError?.(addr, e as Error);
      throw e;
    }
    this.counters.opened++;
    if (this.closed) {
      conn.close();
      throw new CubeFSError(ErrorCode.Closed, 'connection pool is closed');
    }
    this.busy.add(conn);
    return conn;
  }

  /**
   * Give a connection back. `healthy` false (an error reply, a failure, a stream not read to its end) closes
   * it; so does a full idle list.
   */
  release(conn: PacketConn, healthy: boolean): void {
    this.busy.delete(conn);
    if (!healthy || conn.closed || conn.inflight > 0 || this.closed) {
      if (!healthy && !conn.closed) this.counters.discarded++;
      conn.close();
      return;
    }
    let list = this.idle.get(conn.addr);
    if (!list) this.idle.set(conn.addr, (list = []));
    if (list.length >= this.maxIdle) {
      conn.close();
      return;
    }
    list.push({ conn, since: Date.now() });
  }

  /**
   * One request on a checked-out connection; the connection goes back only if the reply is Ok (a
   * datanode closes the connection behind any other reply). Streamed replies: see RequestOptions.onReply.
   */
  async request(addr: string, req: Packet, opts: RequestOptions = {}): Promise<Packet> {
    const conn = await this.acquire(addr);
    let healthy = false;
    try {
      const reply = await conn.request(req, opts);
      healthy = reply.resultCode === Result.Ok;
      return reply;
    } finally {
      this.release(conn, healthy);
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.reaper);
    for (const list of this.idle.values()) for (const { conn } of list) conn.close();
    this.idle.clear();
    for (const c of this.busy) c.close();
    this.busy.clear();
  }

  private reap(): void {
    const old = Date.now() - this.idleMs;
    for (const [addr, list] of this.idle) {
      const keep = list.filter((x) => {
        if (x.since > old && !x.conn.closed) return true;
        x.conn.close();
        return false;
      });
      if (keep.length > 0) this.idle.set(addr, keep);
      else this.idle.delete(addr);
    }
  }
}
