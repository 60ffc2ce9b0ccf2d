/**
 * Master HTTP client, wire-compatible with upstream CubeFS masters (sdk/master, master/api_service.go).
 *
 * Every call goes to one master address at a time, starting with the last one that answered. HTTP 403,
 * a transport error, a timeout or a 5xx moves on to the next address; when every address failed the call
 * fails with CUBEFS_MASTER_UNREACHABLE naming each address and its error. A reply is the envelope
 * {code, msg, data}: code 0 is success; 34 (auth key mismatch) and 7 (volume does not exist) get errors
 * of their own, anything else is CUBEFS_MASTER_ERROR with the master's code and message.
 *
 * adminSecret (the embedded cluster's DIR/secret) goes with /admin/ calls only, in a header: createVol
 * wants it, and getVol shows the Owner only with it.
 *
 * Big integers: meta partition End is 2^63-1 upstream. JSON.parse turns it into the nearest double
 * (9223372036854775808), which is what routing wants: End >= 2^53 means unbounded.
 */
import http from 'node:http';
import { createHash } from 'node:crypto';
import { constants as os } from 'node:os';
import type {
  ClusterIp,
  DataPartitionsView,
  DataPartitionView,
  MasterReply,
  MetaPartitionView,
  VolStat,
  VolView,
} from '../proto/types.js';
import { ADMIN_SECRET_HEADER, MasterCode } from '../proto/types.js';
import { CubeFSError, ErrorCode } from '../util/errors.js';
import { logger } from '../util/log.js';

const log = logger('master');

export const DEFAULT_MASTER_TIMEOUT_MS = 10_000;
/** Replies larger than this are refused (a sane master's largest reply is a few MiB). */
const MAX_REPLY_BYTES = 64 * 1024 * 1024;

export interface MasterClientOptions {
  /** Deadline on every HTTP request to one address, in ms (default 10 s). */
  timeoutMs?: number;
  /** The embedded cluster's admin secret (DIR/secret), sent with /admin/ calls. */
  adminSecret?: string;
}

/** Lower-hex md5 of the owner: upstream's authKey. */
export function authKeyOf(owner: string): string {
  return createHash('md5').update(owner).digest('hex');
}

export function parseMasterAddrs(addrs: string | string[]): string[] {
  const list = (Array.isArray(addrs) ? addrs : [addrs])
    .flatMap((a) => a.split(','))
    .map((a) => a.trim())
    .filter((a) => a.length > 0)
    .map((a) => a.replace(/^https?:\/\//, '').replace(/\/+$/, ''));
  if (list.length === 0) throw new CubeFSError(ErrorCode.Invalid, 'no master address given');
  return list;
}

/** What one HTTP exchange produced, before envelope checks. */
interface RawReply {
  status: number;
  body: Buffer;
}

/** Thrown inside one attempt when the next address should be tried. */
class TryNext extends Error {}

type Params = Record<string, string | number | undefined>;

export class MasterClient {
  readonly addrs: readonly string[];
  private readonly timeoutMs: number;
  private readonly adminSecret: string | undefined;
  private readonly agent: http.Agent;
  /** Index of the last address that answered. */
  private current = 0;

  constructor(addrs: string | string[], opts: MasterClientOptions = {}) {
    this.addrs = parseMasterAddrs(addrs);
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_MASTER_TIMEOUT_MS;
    this.adminSecret = opts.adminSecret;
    this.agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
  }

  /** The address that answered last (where the next call starts). */
  get leader(): string {
    return this.addrs[this.current]!;
  }

  /** POST /client/vol: the volume view; validates owner (authKey = md5(owner)). */
  async getVolume(name: string, owner: string): Promise<VolView> {
    const data = await this.call<unknown>('POST', '/client/vol', { name, authKey: authKeyOf(owner) }, { vol: name, owner });
    return parseVolView(data);
  }

  /** GET /client/metaPartitions. */
  async getMetaPartitions(name: string): Promise<MetaPartitionView[]> {
    const data = await this.call<unknown>('GET', '/client/metaPartitions', { name }, { vol: name });
    return parseMetaPartitions(data, 'metaPartitions');
  }

  /** GET /client/partitions. */
  async getDataPartitions(name: string): Promise<DataPartitionsView> {
    const data = await this.call<unknown>('GET', '/client/partitions', { name }, { vol: name });
    return parseDataPartitionsView(data);
  }

  /** GET /client/volStat (statfs). */
  async getVolStat(name: string): Promise<VolStat> {
    const data = await this.call<unknown>('GET', '/client/volStat', { name }, { vol: name });
    const o = asObject(data, 'volStat');
    need(o, 'volStat', { TotalSize: 'number', UsedSize: 'number', InodeCount: 'number' });
    if (typeof o.Name !== 'string') o.Name = name;
    return o as VolStat;
  }

  /** GET /admin/getIp. */
  async getClusterIp(): Promise<ClusterIp> {
    const data = await this.call<unknown>('GET', '/admin/getIp', {});
    const o = asObject(data, 'getIp');
    need(o, 'getIp', { Cluster: 'string', Ip: 'string' });
    return o as ClusterIp;
  }

  /** GET /admin/getVol: the admin's view (EnableTransactionV1, capacity, ...); Owner is "" without the admin secret. */
  async getVolumeAdmin(name: string): Promise<Record<string, unknown>> {
    const data = await this.call<unknown>('GET', '/admin/getVol', { name }, { vol: name });
    return asObject(data, 'getVol');
  }

  /** GET /admin/createVol (the embedded master wants the admin secret). */
  async createVolume(name: string, owner: string, opts: { capacityGB?: number; replicaNum?: number; dataPartitions?: number } = {}): Promise<void> {
    await this.call<unknown>('GET', '/admin/createVol', {
      name,
      owner,
      capacity: opts.capacityGB ?? 10,
      replicaNum: opts.replicaNum,
      dpCount: opts.dataPartitions,
    }, { vol: name });
  }

  /** Any other GET of the master API (admin views): the envelope's data, errors as above. */
  async get(path: string, params: Record<string, string | number> = {}): Promise<unknown> {
    return this.call<unknown>('GET', path, params, typeof params.name === 'string' ? { vol: params.name } : {});
  }

  /** Drop idle keep-alive sockets. The client stays usable. */
  close(): void {
    this.agent.destroy();
  }

  /**
   * One API call with failover. `ctx` only shapes error messages.
   */
  private async call<T>(method: 'GET' | 'POST', path: string, params: Params, ctx: { vol?: string; owner?: string } = {}): Promise<T> {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined) qs.set(k, String(v));
    const q = qs.toString();
    const url = q.length > 0 ? `${path}?${q}` : path;
    const headers: Record<string, string> = path.startsWith('/admin/') && this.adminSecret ? { [ADMIN_SECRET_HEADER]: this.adminSecret } : {};
    const failures: string[] = [];
    const n = this.addrs.length;
    const start = this.current;
    for (let i = 0; i < n; i++) {
      const idx = (start + i) % n;
      const addr = this.addrs[idx]!;
      let raw: RawReply;
      try {
        raw = await this.exchange(addr, method, url, headers).catch((e: Error & { reusedSocket?: boolean }) => {
          // A keep-alive socket the server had already closed: one fresh try on the same address.
          if (e.reusedSocket) return this.exchange(addr, method, url, headers);
          throw e;
        });
        if (raw.status === 403) throw new TryNext('HTTP 403 (not the leader)');
        if (raw.status >= 500) throw new TryNext(`HTTP ${raw.status}`);
      } catch (e) {
        const why = (e as Error).message;
        log('%s %s on %s failed: %s', method, path, addr, why);
        failures.push(`${addr}: ${why}`);
        continue;
      }
      this.current = idx;
      if (raw.status !== 200) {
        throw new CubeFSError(ErrorCode.MasterError, `master ${addr}: ${method} ${path}: HTTP ${raw.status}: ${snippet(raw.body)}`);
      }
      return this.unwrap<T>(addr, path, raw.body, ctx);
    }
    throw new CubeFSError(ErrorCode.MasterUnreachable, `no master answered ${method} ${path}: ${failures.join('; ')}`, {
      errno: os.errno.EHOSTUNREACH,
      retryable: true,
    });
  }

  private unwrap<T>(addr: string, path: string, body: Buffer, ctx: { vol?: string; owner?: string }): T {
    let env: MasterReply<T>;
    try {
      env = JSON.parse(body.toString('utf8')) as MasterReply<T>;
    } catch (e) {
      throw new CubeFSError(ErrorCode.MasterError, `master ${addr}: ${path}: malformed JSON reply (${(e as Error).message}): ${snippet(body)}`, { cause: e });
    }
    if (env === null || typeof env !== 'object' || typeof env.code !== 'number') {
      throw new CubeFSError(ErrorCode.MasterError, `master ${addr}: ${path}: malformed reply, no envelope code: ${snippet(body)}`);
    }
    if (env.code === MasterCode.Success) return env.data;
    const msg = typeof env.msg === 'string' ? env.msg : '';
    if (env.code === MasterCode.AuthKeyMismatch) {
      const who = ctx.owner !== undefined ? `owner "${ctx.owner}" is not the owner` : 'auth key rejected';
      throw new CubeFSError(ErrorCode.AuthMismatch, `volume "${ctx.vol ?? '?'}": ${who} (master: ${msg})`, { errno: os.errno.EACCES });
    }
    if (env.code === MasterCode.NoPermission) {
      const hint = this.adminSecret ? 'the admin secret given is not this cluster\'s' : 'it needs the cluster\'s admin secret (DIR/secret of the embedded cluster)';
      throw new CubeFSError(ErrorCode.MasterError, `master ${addr}: ${path}: ${hint} (master: ${msg})`, { errno: os.errno.EACCES });
    }
    if (env.code === MasterCode.VolNotExists) {
      throw new CubeFSError(ErrorCode.VolNotExist, `volume "${ctx.vol ?? '?'}" does not exist on master ${addr}`, { errno: os.errno.ENOENT });
    }
    throw new CubeFSError(ErrorCode.MasterError, `master ${addr}: ${path}: code ${env.code}: ${msg}`);
  }

  private exchange(addr: string, method: string, url: string, headers: Record<string, string>): Promise<RawReply> {
    const i = addr.lastIndexOf(':');
    const host = addr.slice(0, i).replace(/^\[|\]$/g, '');
    const port = Number(addr.slice(i + 1));
    if (i <= 0 || !Number.isInteger(port) || port <= 0 || port > 65535) {
      return Promise.reject(new Error(`bad master address "${addr}" (want HOST:PORT)`));
    }
    return new Promise<RawReply>((resolve, reject) => {
      let settled = false;
      const done = (err: Error | null, r?: RawReply): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) reject(err);
        else resolve(r!);
      };
      const req = http.request({ host, port, method, path: url, agent: this.agent, headers: { 'content-length': 0, ...headers } }, (res) => {
        const chunks: Buffer[] = [];
        let len = 0;
        res.on('data', (c: Buffer) => {
          len += c.length;
          if (len > MAX_REPLY_BYTES) {
            req.destroy();
            done(new Error(`reply larger than ${MAX_REPLY_BYTES} bytes`));
            return;
          }
          chunks.push(c);
        });
        res.on('end', () => done(null, { status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
        res.on('error', (e) => done(e));
        res.on('aborted', () => done(new Error('reply aborted')));
      });
      const timer = setTimeout(() => {
        done(new Error(`no reply in ${this.timeoutMs} ms`));
        req.destroy();
      }, this.timeoutMs);
      req.on('error', (e: Error & { reusedSocket?: boolean }) => {
        if (req.reusedSocket && !settled) e.reusedSocket = true;
        done(e);
      });
      req.end();
    });
  }
}

function snippet(b: Buffer): string {
  const s = b.toString('utf8', 0, Math.min(b.length, 200));
  return b.length > 200 ? `${s}...` : s;
}

type Kind = 'number' | 'string' | 'boolean' | 'array';

function asObject(v: unknown, what: string): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) {
    throw new CubeFSError(ErrorCode.MasterError, `malformed master reply: ${what} is not an object`);
  }
  return v as Record<string, unknown>;
}

function need(o: Record<string, unknown>, what: string, fields: Record<string, Kind>): void {
  for (const [k, kind] of Object.entries(fields)) {
    const v = o[k];
    const ok = kind === 'array' ? Array.isArray(v) : typeof v === kind;
    if (!ok) throw new CubeFSError(ErrorCode.MasterError, `malformed master reply: ${what}.${k} is ${v === null ? 'null' : typeof v}, want ${kind}`);
  }
}

/** Go marshals a nil slice as null. */
function arrayOf(o: Record<string, unknown>, k: string): unknown[] {
  const v = o[k];
  if (v === null || v === undefined) return [];
  if (!Array.isArray(v)) throw new CubeFSError(ErrorCode.MasterError, `malformed master reply: ${k} is not an array`);
  return v;
}

export function parseMetaPartitions(v: unknown, what: string): MetaPartitionView[] {
  if (v === null) return [];
  if (!Array.isArray(v)) throw new CubeFSError(ErrorCode.MasterError, `malformed master reply: ${what} is not an array`);
  return v.map((x, i) => {
    const o = asObject(x, `${what}[${i}]`);
    need(o, `${what}[${i}]`, { PartitionID: 'number', Start: 'number', End: 'number', LeaderAddr: 'string', Status: 'number' });
    o.Members = arrayOf(o, 'Members');
    return o as MetaPartitionView;
  });
}

export function parseDataPartitions(v: unknown, what: string): DataPartitionView[] {
  if (v === null || v === undefined) return [];
  if (!Array.isArray(v)) throw new CubeFSError(ErrorCode.MasterError, `malformed master reply: ${what} is not an array`);
  return v.map((x, i) => {
    const o = asObject(x, `${what}[${i}]`);
    need(o, `${what}[${i}]`, { PartitionID: 'number', Status: 'number', ReplicaNum: 'number', LeaderAddr: 'string' });
    o.Hosts = arrayOf(o, 'Hosts');
    if (typeof o.PartitionType !== 'number') o.PartitionType = 0;
    if (typeof o.Epoch !== 'number') o.Epoch = 0;
    if (typeof o.IsRecover !== 'boolean') o.IsRecover = false;
    return o as DataPartitionView;
  });
}

export function parseDataPartitionsView(v: unknown): DataPartitionsView {
  const o = asObject(v, 'partitions');
  o.DataPartitions = parseDataPartitions(o.DataPartitions, 'DataPartitions');
  return o as DataPartitionsView;
}

export function parseVolView(v: unknown): VolView {
  const o = asObject(v, 'vol');
  need(o, 'vol', { Name: 'string', Owner: 'string', Status: 'number' });
  o.MetaPartitions = parseMetaPartitions(o.MetaPartitions ?? null, 'MetaPartitions');
  o.DataPartitions = parseDataPartitions(o.DataPartitions, 'DataPartitions');
  if (typeof o.FollowerRead !== 'boolean') o.FollowerRead = false;
  return o as VolView;
}
