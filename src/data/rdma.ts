/**
 * The client's RDMA path to the datanodes (docs/rdma.md "Flows"), chosen per datanode.
 *
 * Modes: 'off' TCP only. 'auto' RDMA when this host has a device and the datanode answers on its RDMA port,
 * else TCP, said once per datanode ("datanode X: RDMA unavailable (...), using TCP"; without any device
 * once: "no RDMA device: using TCP"). 'on' a device is required (CubeFSError NoRdmaDevice at connect/mount
 * without one) and a datanode not answering RDMA is an error (retryable, as a datanode that is down).
 * In 'auto', repeated RDMA failures to one datanode (FALLBACK_FAILURES within FALLBACK_WINDOW_MS) move it
 * to TCP for FALLBACK_HOLD_MS, logged; then RDMA is tried again.
 *
 * The RDMA port of a datanode: `port` (default 17360, as upstream's RDMA branch), or 'same': the number of
 * its TCP port (the embedded cluster's datanodes listen for rdma_cm on the same number).
 *
 * Payloads go by descriptor from the pool registered in this path's context: a buffer inside the pool (a
 * FUSE write payload in its receive buffer) as it is; anything else is copied into a pool buffer first,
 * counted in `payloadCopies`.
 */
import { Pool } from '../pool/index.js';
import { RdmaConnection, RdmaContext, rdmaDevices } from '../transport/rdma.js';
import { splitAddr } from '../transport/tcp.js';
import { CubeFSError, ErrorCode } from '../util/errors.js';
import { logger } from '../util/log.js';

const log = logger('data:rdma');

export type RdmaMode = 'auto' | 'on' | 'off';
export const DEFAULT_RDMA_PORT = 17360;
export const DEFAULT_CLIENT_POOL_MB = 64;
/**
 * Largest write payload of one RDMA request. A TCP packet carries at most 128 KiB (upstream's limit); over
 * RDMA the payload moves by one RDMA Read of a descriptor, so a 1 MiB FUSE write is one request, one Read,
 * one extent write and one forward per follower instead of eight of each. (The datanode takes up to its
 * pool's largest block, 4 MiB.)
 */
export const RDMA_MAX_PIECE = 1024 * 1024;
const FALLBACK_FAILURES = 3;
const FALLBACK_WINDOW_MS = 60_000;
const FALLBACK_HOLD_MS = 60_000;

export interface RdmaPathOptions {
  mode: RdmaMode;
  /** The datanodes' RDMA port, or 'same' (their TCP port number). Default 17360. */
  port?: number | 'same';
  /** The registered pool (a mount shares the FUSE session's); default: one of poolMB MiB of our own. */
  pool?: Pool;
  poolMB?: number;
  device?: string;
  /** QPs per datanode (default 4). */
  qps?: number;
  /** Deadline of an RDMA connect, ms (default 3000). */
  connectTimeoutMs?: number;
  /** Where the once-per-datanode transport notes go (default: the debug log). */
  onWarning?: (msg: string) => void;
}

/** What the data path moved and how (DataClient.stats()). */
export interface DataTransportStats {
  /** 'rdma' when RDMA is usable at all, else 'tcp'. */
  transport: 'rdma' | 'tcp';
  /** Write payloads copied into a pool buffer because they were not in the pool. */
  payloadCopies: number;
  /** Requests answered Ok over RDMA. */
  rdmaWrites: number;
  rdmaReads: number;
  /** Data requests that went over TCP (tiny writes included). */
  tcpWrites: number;
  tcpReads: number;
  /** RDMA request failures (network, timeout). */
  rdmaErrors: number;
  /** Datanodes moved to TCP (not answering RDMA, or repeated failures). */
  tcpFallbacks: number;
  /**
   * Write-behind: small writes (<= 128 KiB) copied into a staging buffer (a pool buffer with RDMA) and the
   * gathered runs sent (FileStream). Counted apart from payloadCopies, which counts payloads that had to be
   * copied into the pool only to be sent.
   */
  stagedWrites: number;
  stagedBytes: number;
  stageSubmits: number;
  /** The registered pool's bytes in use, 0 without RDMA. */
  poolInUse: number;
}

interface Peer {
  conn: Promise<RdmaConnection> | null;
  /** TCP until this time (ms since epoch). */
  tcpUntil: number;
  failures: number[];
  said: boolean;
}

/** A pool buffer holding a payload; release() gives a copied one back (a pool view is not ours to free). */
export interface PayloadLease {
  buf: Buffer;
  release(): void;
}

export class RdmaPath {
  readonly mode: RdmaMode;
  /** Largest write payload per request (RDMA_MAX_PIECE). */
  readonly maxPiece = RDMA_MAX_PIECE;
  readonly pool: Pool;
  readonly ctx: RdmaContext;
  private readonly ownPool: boolean;
  private readonly port: number | 'same';
  private readonly qps: number;
  private readonly connectTimeoutMs: number;
  private readonly warn: (msg: string) => void;
  private readonly peers = new Map<string, Peer>();
  private closed = false;
  readonly counters = { payloadCopies: 0, rdmaWrites: 0, rdmaReads: 0, tcpWrites: 0, tcpReads: 0, rdmaErrors: 0, tcpFallbacks: 0 };

  /**
   * The path for `opts.mode`, or null for TCP ('off'; 'auto' without a device, said once). 'on' without a
   * device throws CubeFSError NoRdmaDevice.
   */
  static create(opts: RdmaPathOptions): RdmaPath | null {
    if (opts.mode === 'off') return null;
    if (opts.mode !== 'auto' && opts.mode !== 'on') {
      throw new CubeFSError(ErrorCode.Invalid, `rdma must be auto, on or off, not "${String(opts.mode)}"`);
    }
    const warn = opts.onWarning ?? ((m: string) => log('%s', m));
    if (rdmaDevices().length === 0) {
      if (opts.mode === 'on') {
        throw new CubeFSError(ErrorCode.NoRdmaDevice, 'rdma "on": this host has no RDMA device with an active port (ibv_devices lists none; use --rdma auto or off)');
      }
      warn('no RDMA device: using TCP');
      return null;
    }
    try {
      return new RdmaPath(opts, warn);
    } catch (e) {
      if (opts.mode === 'on') throw e;
      warn(`RDMA unavailable (${(e as Error).message}): using TCP`);
      return null;
    }
  }

  private constructor(opts: RdmaPathOptions, warn: (msg: string) => void) {
    this.mode = opts.mode;
    this.port = opts.port ?? DEFAULT_RDMA_PORT;
    this.qps = opts.qps ?? 4;
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 3_000;
    this.warn = warn;
    this.ownPool = !opts.pool;
    this.pool = opts.pool ?? new Pool({ capacity: (opts.poolMB ?? DEFAULT_CLIENT_POOL_MB) * 1024 * 1024 });
    try {
      this.ctx = new RdmaContext({ pool: this.pool, ...(opts.device ? { device: opts.device } : {}) });
    } catch (e) {
      if (this.ownPool) this.pool.close();
      throw e;
    }
  }

  /** The RDMA address of the datanode whose TCP address is `host`. */
  rdmaAddr(host: string): string {
    if (this.port === 'same') return host;
    return `${splitAddr(host).host}:${this.port}`;
  }

  /**
   * The RDMA connection to datanode `host`, or null: use TCP for it ('auto' and it does not answer, or it
   * failed repeatedly). In 'on' a datanode that does not answer is a retryable Network error.
   */
  async conn(host: string): Promise<RdmaConnection | null> {
    if (this.closed) throw new CubeFSError(ErrorCode.Closed, 'RDMA path closed');
    let peer = this.peers.get(host);
    if (!peer) {
      peer = { conn: null, tcpUntil: 0, failures: [], said: false };
      this.peers.set(host, peer);
    }
    if (peer.tcpUntil > Date.now()) return null;
    if (!peer.conn) {
      const p = RdmaConnection.connect(this.ctx, this.rdmaAddr(host), { qps: this.qps, timeoutMs: this.connectTimeoutMs });
      peer.conn = p;
      p.catch(() => { if (peer!.conn === p) peer!.conn = null; });
    }
    try {
      const c = await peer.conn;
      if (!c.closed) return c;
      peer.conn = null;
      return this.conn(host);
    } catch (e) {
      const why = (e as Error).message;
      if (this.mode === 'on') {
        throw new CubeFSError(ErrorCode.Network, `datanode ${host}: RDMA unavailable (${why}) and rdma is "on"`, { retryable: true, cause: e });
      }
      this.toTcp(host, peer, `datanode ${host}: RDMA unavailable (${why}), using TCP`);
      return null;
    }
  }

  /** An RDMA request to `host` failed (network or timeout): repeated failures move it to TCP ('auto'). */
  failed(host: string, e: Error): void {
    this.counters.rdmaErrors++;
    const peer = this.peers.get(host);
    if (!peer) return;
    const now = Date.now();
    peer.failures = peer.failures.filter((t) => now - t < FALLBACK_WINDOW_MS);
    peer.failures.push(now);
    log('datanode %s: RDMA request failed (%s), %d in the last minute', host, e.message, peer.failures.length);
    if (this.mode === 'auto' && peer.failures.length >= FALLBACK_FAILURES) {
      peer.failures = [];
      peer.said = false;
      this.toTcp(host, peer, `datanode ${host}: ${FALLBACK_FAILURES} RDMA failures within a minute (last: ${e.message}), using TCP`);
    }
  }

  private toTcp(host: string, peer: Peer, msg: string): void {
    // Several requests may have waited on the same failed connect: the datanode moves to TCP once.
    const already = peer.tcpUntil > Date.now();
    peer.tcpUntil = Date.now() + FALLBACK_HOLD_MS;
    const c = peer.conn;
    peer.conn = null;
    c?.then((x) => x.close(), () => undefined);
    if (!already) this.counters.tcpFallbacks++;
    if (!peer.said) {
      peer.said = true;
      this.warn(msg);
    }
  }

  /** `data` in a pool buffer: itself when it lies in the pool, else a copy (counted). */
  async payload(data: Buffer, waitMs: number): Promise<PayloadLease> {
    if (this.pool.contains(data)) return { buf: data, release: () => undefined };
    let buf: Buffer;
    try {
      buf = this.pool.alloc(data.length, 0);
    } catch {
      buf = await this.pool.allocAsync(data.length, waitMs);
    }
    data.copy(buf);
    this.counters.payloadCopies++;
    return { buf, release: () => { this.pool.free(buf); } };
  }

  /** An empty pool buffer of `size` bytes for a read. */
  async readBuffer(size: number, waitMs: number): Promise<PayloadLease> {
    let buf: Buffer;
    try {
      buf = this.pool.alloc(size, 0);
    } catch {
      buf = await this.pool.allocAsync(size, waitMs);
    }
    return { buf, release: () => { this.pool.free(buf); } };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const p of this.peers.values()) p.conn?.then((c) => c.close(), () => undefined);
    this.peers.clear();
    this.ctx.close();
    if (this.ownPool) this.pool.close();
  }
}
