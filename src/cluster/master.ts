/**
 * The embedded master: upstream's client-facing HTTP API on loopback, over a cluster state kept in
 * dir/master.json.
 *
 * State (volumes with their meta and data partitions, id counters) changes only in createVolume, which
 * runs one at a time: the partitions are created on the nodes first (CreateMetaPartition 0x40 to the
 * metanode, CreateDataPartition 0x60 to every host of a data partition; both idempotent on the nodes),
 * then the state is written (tmp + fsync + rename), then the caller gets its answer. Runtime facts
 * (node liveness, inode counts, used sizes) come from heartbeats (0x41, 0x63) every heartbeatMs and are
 * not persisted (a metanode's heartbeat carries the data partitions, for deleting released extents): a data partition with a host that missed its last heartbeat reports Status 1
 * (read-only), a meta partition whose metanode missed it reports -1 (unavailable), until they answer.
 *
 * Raft leaders: a real data partition has a raft leader (LeaderAddr) that serves StreamRead and RandomWrite
 * and is not always Hosts[0]. Here the master plays raft's election: each data partition gets a leader at
 * creation (spread over its hosts, so many are not Hosts[0]), kept in master.json; when the leader misses a
 * heartbeat, the next of its hosts that answers takes over (persisted, logged). Every DataNodeHeartbeat
 * tells a datanode the leaders of its partitions, and a round runs at once after an election, so the
 * datanodes know whom to refuse (datanode.ts). Every replica has every acknowledged write (the leader
 * replicates to all before it answers), so any live replica may lead.
 *
 * Replies copy upstream's shapes key by key (golden/cubefs-real/*.json) and its error convention:
 * HTTP 200 with a non-zero envelope code (7 vol not exists, 34 auth key mismatch, 12 duplicate vol).
 *
 * Admin secret: any local process reaches this port, so what changes the cluster or hands out a volume's
 * credential wants the cluster's secret (header X-CubeFS-Secret, compared in constant time): createVol is
 * refused without it (57, no permission), and getVol answers Owner "" (the owner is the only credential
 * /client/vol checks). A wrong secret is refused on both. What a client needs stays open. createVol is
 * bounded (MAX_VOLUMES, name, owner, capacity, partitions), so even the secret's holder cannot fill the disk
 * with partitions by mistake.
 * The last meta partition ends at 2^63-1; that End is written as exact digits, which JSON.stringify
 * cannot do for a number, so replies are stringified with bigints spliced in as text.
 */
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { Op } from '../proto/opcode.js';
import { ADMIN_SECRET_HEADER } from '../proto/types.js';
import { newPacket } from '../proto/packet.js';
import { Result, resultName } from '../proto/result.js';
import { ConnPool } from '../transport/tcp.js';
import { nextReqId } from '../transport/reqid.js';
import { CubeFSError, ErrorCode } from '../util/errors.js';
import { makeDirs } from '../util/dirs.js';
import { logger, notice, warn } from '../util/log.js';

const log = logger('master-server');

export interface MasterOptions {
  /** Directory for master.json. Created if missing. */
  dir: string;
  /** "host:port" to listen on; default "127.0.0.1:0" (a free port). */
  listen?: string;
  metanodes: string[];
  datanodes: string[];
  /** Cluster name (default "cfs_local"); a reloaded state keeps its own. */
  cluster?: string;
  heartbeatMs?: number;
  /** The cluster's admin secret (DIR/secret): createVol and getVol's Owner want it. */
  secret: string;
}

export interface CreateVolumeOptions {
  capacityGB?: number;
  /** Data partition replicas (default 3, at most the number of datanodes). */
  replicaNum?: number;
  /** Number of data partitions (default 4). */
  dataPartitions?: number;
}

/** Upstream's master error codes (proto/admin_proto.go) that this master sends. */
export const ApiCode = {
  Success: 0,
  InternalError: 1,
  ParamError: 2,
  VolNotExists: 7,
  DuplicateVol: 12,
  AuthKeyMismatch: 34,
  NoPermission: 57,
} as const;

const MAX_INT64 = 9223372036854775807n;
/** Inode range of each meta partition but the last, which is open-ended: [0,4194304], [4194305,8388608], ... */
const MP_SPAN = 4194304n;
const META_PARTITIONS = 3;
const GB = 1024 ** 3;
const VOL_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{1,62}$/;
/** Upstream's owner rule (master's ownerRegexp). */
const OWNER_NAME = /^[A-Za-z][A-Za-z0-9_]{0,20}$/;
/** Bounds on createVol: each volume is partitions (directories, files, heartbeat work) on every node. */
export const MAX_VOLUMES = 64;
export const MAX_DATA_PARTITIONS = 64;
export const MAX_CAPACITY_GB = 1024 * 1024;

interface MpRecord {
  id: number;
  /** Decimal strings: End may be 2^63-1. */
  start: string;
  end: string;
  members: string[];
}

interface DpRecord {
  id: number;
  /** hosts[0] takes appends (CreateExtent, Write) and replicates them to the others. */
  hosts: string[];
  /** The raft leader: StreamRead and RandomWrite go here (may be any of hosts). */
  leader?: string;
}

interface VolRecord {
  id: number;
  name: string;
  owner: string;
  capacityGB: number;
  replicaNum: number;
  /** unix seconds */
  createTime: number;
  accessKey: string;
  secretKey: string;
  txMask: string;
  mps: MpRecord[];
  dps: DpRecord[];
}

interface MasterState {
  version: 1;
  cluster: string;
  createTime: number;
  maxVolId: number;
  maxMpId: number;
  maxDpId: number;
  vols: VolRecord[];
}

interface MpStats {
  InodeCount: number;
  DentryCount: number;
  MaxInodeID: number;
  UsedSize: number;
}

interface DataNodeReport {
  Total: number;
  Used: number;
  Available: number;
}

class ApiError extends Error {
  constructor(readonly apiCode: number, message: string) {
    super(message);
  }
}

export class Master {
  private readonly opts: Required<Omit<MasterOptions, 'cluster' | 'secret'>> & { cluster: string };
  /** sha256 of the admin secret: compared in constant time whatever the length given. */
  private readonly secretHash: Buffer;
  private state: MasterState | null = null;
  private server: http.Server | null = null;
  private pool: ConnPool | null = null;
  private address = '';
  private hbTimer: NodeJS.Timeout | null = null;
  private hbRunning: Promise<void> | null = null;
  private stopped = false;
  /** Serialises createVolume (the only writer of state). */
  private writeChain: Promise<unknown> = Promise.resolve();
  /** addr -> answered its last heartbeat. Nodes count as alive until a heartbeat fails. */
  private readonly alive = new Map<string, boolean>();
  private readonly mpStats = new Map<number, MpStats>();
  private readonly dnReports = new Map<string, DataNodeReport>();

  constructor(opts: MasterOptions) {
    this.opts = {
      dir: opts.dir,
      listen: opts.listen ?? '127.0.0.1:0',
      metanodes: [...opts.metanodes],
      datanodes: [...opts.datanodes],
      cluster: opts.cluster ?? 'cfs_local',
      heartbeatMs: opts.heartbeatMs ?? 2000,
    };
    if (typeof opts.secret !== 'string' || opts.secret.length === 0) throw new CubeFSError(ErrorCode.Invalid, 'the master needs the cluster secret');
    this.secretHash = sha256(opts.secret);
  }

  /** "host:port" the HTTP API listens on (after start). */
  get addr(): string {
    return this.address;
  }

  async start(): Promise<string> {
    if (this.server) return this.address;
    this.stopped = false;
    makeDirs(this.opts.dir);
    this.state = this.load();
    this.pool = new ConnPool(1, Math.max(1000, this.opts.heartbeatMs));
    const { host, port } = listenAddr(this.opts.listen);
    const server = http.createServer((req, res) => this.serve(req, res));
    server.keepAliveTimeout = 30_000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.removeListener('error', reject);
        resolve();
      });
    });
    this.server = server;
    this.address = `${host}:${(server.address() as { port: number }).port}`;
    this.scheduleHeartbeat(0);
    log('master %s up, %d volumes', this.address, this.state.vols.length);
    return this.address;
  }

  /** Stop serving and heartbeating. Idempotent. State is already on disk. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.hbTimer) clearTimeout(this.hbTimer);
    this.hbTimer = null;
    const server = this.server;
    this.server = null;
    if (server) {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
    this.pool?.close();
    this.pool = null;
    await this.hbRunning?.catch(() => undefined);
    await this.writeChain.catch(() => undefined);
  }

  /** Create a volume: 3 meta partitions on the metanodes, N data partitions across the datanodes. */
  async createVolume(name: string, owner: string, opts: CreateVolumeOptions = {}): Promise<void> {
    try {
      await this.createVolumeApi(name, owner, opts);
    } catch (e) {
      if (e instanceof ApiError) throw new CubeFSError(ErrorCode.MasterError, `create volume "${name}": ${e.message} (code ${e.apiCode})`);
      throw e;
    }
  }

  /** Run one heartbeat round now (tests; the timer runs them anyway). */
  heartbeat(): Promise<void> {
    if (!this.hbRunning) {
      this.hbRunning = this.heartbeatRound().finally(() => {
        this.hbRunning = null;
      });
    }
    return this.hbRunning;
  }

  // ---- state ----

  private statePath(): string {
    return path.join(this.opts.dir, 'master.json');
  }

  private load(): MasterState {
    let text: string;
    try {
      text = fs.readFileSync(this.statePath(), 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      return {
        version: 1,
        cluster: this.opts.cluster,
        createTime: Math.floor(Date.now() / 1000),
        maxVolId: 0,
        maxMpId: 0,
        maxDpId: 0,
        vols: [],
      };
    }
    const s = JSON.parse(text) as MasterState;
    if (s.version !== 1 || !Array.isArray(s.vols)) throw new Error(`${this.statePath()}: not a master state file (version ${String(s.version)})`);
    // A state written before leaders were kept: give each data partition its first leader (saved with the next change).
    for (const v of s.vols) for (const dp of v.dps) dp.leader ??= firstLeader(dp.id, dp.hosts);
    return s;
  }

  private persist(s: MasterState): void {
    const file = this.statePath();
    const tmp = `${file}.tmp`;
    const fd = fs.openSync(tmp, 'w', 0o600);
    try {
      fs.writeSync(fd, JSON.stringify(s, null, 1));
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
    try {
      const dfd = fs.openSync(this.opts.dir, 'r');
      try { fs.fsyncSync(dfd); } finally { fs.closeSync(dfd); }
    } catch {
      // directories cannot be fsynced on every platform
    }
  }

  private vol(name: string | null): VolRecord {
    const v = name ? this.state!.vols.find((x) => x.name === name) : undefined;
    if (!v) throw new ApiError(ApiCode.VolNotExists, 'vol not exists');
    return v;
  }

  private createVolumeApi(name: string, owner: string, opts: CreateVolumeOptions): Promise<void> {
    const run = this.writeChain.then(() => this.doCreateVolume(name, owner, opts));
    this.writeChain = run.catch(() => undefined);
    return run;
  }

  private async doCreateVolume(name: string, owner: string, opts: CreateVolumeOptions): Promise<void> {
    const s = this.state;
    if (!s || this.stopped) throw new ApiError(ApiCode.InternalError, 'master is not running');
    if (!owner) throw new ApiError(ApiCode.ParamError, 'parameter owner not found');
    const replicaNum = opts.replicaNum ?? 3;
    const nDps = opts.dataPartitions ?? 4;
    const capacityGB = opts.capacityGB ?? 10;
    const bad = newVolumeProblem(name, owner, capacityGB, nDps);
    if (bad) throw new ApiError(ApiCode.ParamError, bad);
    if (s.vols.some((v) => v.name === name)) throw new ApiError(ApiCode.DuplicateVol, 'duplicate vol');
    if (s.vols.length >= MAX_VOLUMES) throw new ApiError(ApiCode.ParamError, `the embedded cluster holds at most ${MAX_VOLUMES} volumes`);
    const dn = this.opts.datanodes;
    const mn = this.opts.metanodes;
    if (!Number.isInteger(replicaNum) || replicaNum < 1 || replicaNum > dn.length) {
      throw new ApiError(ApiCode.ParamError, `replicaNum ${replicaNum} needs as many datanodes, the cluster has ${dn.length}`);
    }
    if (mn.length === 0) throw new ApiError(ApiCode.InternalError, 'no metanode to create meta partitions');

    const mps: MpRecord[] = [];
    for (let i = 0; i < META_PARTITIONS; i++) {
      const start = i === 0 ? 0n : MP_SPAN * BigInt(i) + 1n;
      const end = i === META_PARTITIONS - 1 ? MAX_INT64 : MP_SPAN * BigInt(i + 1);
      mps.push({ id: s.maxMpId + 1 + i, start: start.toString(), end: end.toString(), members: [mn[i % mn.length]!] });
    }
    const dps: DpRecord[] = [];
    for (let i = 0; i < nDps; i++) {
      const hosts: string[] = [];
      for (let r = 0; r < replicaNum; r++) hosts.push(dn[(i + r) % dn.length]!);
      const id = s.maxDpId + 1 + i;
      dps.push({ id, hosts, leader: firstLeader(id, hosts) });
    }

    for (const mp of mps) {
      const body = `{"VolName":${JSON.stringify(name)},"PartitionID":${mp.id},"Start":${mp.start},"End":${mp.end},"Members":${JSON.stringify(mp.members)}}`;
      for (const addr of mp.members) await this.adminOp(addr, Op.CreateMetaPartition, mp.id, body, `create meta partition ${mp.id}`);
    }
    await Promise.all(dps.flatMap((dp) => {
      const body = JSON.stringify({ VolName: name, PartitionID: dp.id, Hosts: dp.hosts, Leader: dp.leader });
      return dp.hosts.map((addr) => this.adminOp(addr, Op.CreateDataPartition, dp.id, body, `create data partition ${dp.id}`));
    }));

    const vol: VolRecord = {
      id: s.maxVolId + 1,
      name,
      owner,
      capacityGB,
      replicaNum,
      createTime: Math.floor(Date.now() / 1000),
      accessKey: randomKey(16),
      secretKey: randomKey(32),
      txMask: 'rename',
      mps,
      dps,
    };
    // From the state as it is now: an election may have moved leaders while the partitions were created.
    const cur = this.state ?? s;
    const next: MasterState = {
      ...cur,
      maxVolId: vol.id,
      maxMpId: s.maxMpId + mps.length,
      maxDpId: s.maxDpId + dps.length,
      vols: [...cur.vols, vol],
    };
    this.persist(next);
    this.state = next;
    log('created volume %s (owner %s): meta partitions %o, data partitions %o', name, owner, mps.map((m) => m.id), dps.map((d) => d.id));
  }

  private async adminOp(addr: string, op: Op, pid: number, body: string, what: string): Promise<void> {
    const pool = this.pool;
    if (!pool) throw new ApiError(ApiCode.InternalError, 'master is not running');
    const req = newPacket({ opcode: op, partitionId: pid, reqId: nextReqId(), data: Buffer.from(body) });
    let reply;
    try {
      reply = await pool.request(addr, req, { timeoutMs: 10_000 });
    } catch (e) {
      throw new ApiError(ApiCode.InternalError, `${what} on ${addr}: ${(e as Error).message}`);
    }
    if (reply.resultCode !== Result.Ok) {
      throw new ApiError(ApiCode.InternalError, `${what} on ${addr}: ${resultName(reply.resultCode)} ${reply.data.toString('utf8', 0, 200)}`);
    }
  }

  // ---- heartbeats ----

  private scheduleHeartbeat(delay: number): void {
    if (this.stopped || this.hbTimer) return;
    this.hbTimer = setTimeout(() => {
      this.hbTimer = null;
      void this.heartbeat().finally(() => this.scheduleHeartbeat(this.opts.heartbeatMs));
    }, delay);
    this.hbTimer.unref();
  }

  private async heartbeatRound(): Promise<void> {
    const timeoutMs = Math.max(1000, this.opts.heartbeatMs);
    // Metanodes get the data partitions with their heartbeat: they delete released extents there; and each
    // volume's meta partition ids: a metanode holding all of them may look for extents no inode names.
    const dataViews = Buffer.from(JSON.stringify({
      DataPartitions: Object.fromEntries((this.state?.vols ?? []).map((v) => [v.name, v.dps.map((dp) => this.dpView(dp))])),
      MetaPartitionIds: Object.fromEntries((this.state?.vols ?? []).map((v) => [v.name, v.mps.map((mp) => mp.id)])),
    }));
    const one = async (addr: string, op: Op): Promise<unknown> => {
      const pool = this.pool;
      if (!pool) throw new Error('stopped');
      const data = op === Op.MetaNodeHeartbeat ? dataViews : this.leadersFor(addr);
      const reply = await pool.request(addr, newPacket({ opcode: op, reqId: nextReqId(), ...(data ? { data } : {}) }), { timeoutMs });
      if (reply.resultCode !== Result.Ok) throw new Error(`heartbeat answered ${resultName(reply.resultCode)}`);
      return reply.data.length > 0 ? JSON.parse(reply.data.toString('utf8')) : {};
    };
    const mark = (addr: string, ok: boolean, why?: string): void => {
      if (this.stopped) return;
      const was = this.alive.get(addr);
      this.alive.set(addr, ok);
      if (was === ok) return;
      if (!ok) warn('master', `node ${addr} is not answering its heartbeat${why ? ` (${why})` : ''}: its partitions are read-only until it answers`);
      else if (was === false) notice('master', `node ${addr} answers again`);
    };
    await Promise.all([
      ...this.opts.metanodes.map(async (addr) => {
        try {
          const r = (await one(addr, Op.MetaNodeHeartbeat)) as { Partitions?: ({ PartitionID: number } & Partial<MpStats>)[] };
          for (const p of r.Partitions ?? []) {
            this.mpStats.set(p.PartitionID, {
              InodeCount: num(p.InodeCount),
              DentryCount: num(p.DentryCount),
              MaxInodeID: num(p.MaxInodeID),
              UsedSize: num(p.UsedSize),
            });
          }
          mark(addr, true);
        } catch (e) {
          mark(addr, false, (e as Error).message);
        }
      }),
      ...this.opts.datanodes.map(async (addr) => {
        try {
          const r = (await one(addr, Op.DataNodeHeartbeat)) as Partial<DataNodeReport>;
          this.dnReports.set(addr, { Total: num(r.Total), Used: num(r.Used), Available: num(r.Available) });
          mark(addr, true);
        } catch (e) {
          mark(addr, false, (e as Error).message);
        }
      }),
    ]);
    if (this.elect()) {
      // Tell the datanodes now, not a heartbeat later: until then the new leader refuses to lead.
      await Promise.all(this.opts.datanodes.filter((a) => this.isAlive(a)).map((addr) => one(addr, Op.DataNodeHeartbeat).catch(() => undefined)));
    }
  }

  /** DataNodeHeartbeat body: the leader of each data partition `addr` holds. */
  private leadersFor(addr: string): Buffer {
    const leaders: Record<string, string> = {};
    for (const v of this.state?.vols ?? []) for (const dp of v.dps) if (dp.hosts.includes(addr)) leaders[dp.id] = dp.leader ?? '';
    return Buffer.from(JSON.stringify({ Leaders: leaders }));
  }

  /**
   * Data partitions whose leader missed its heartbeat get the next of their hosts that answered as leader
   * (raft's election; any replica will do, as each has every acknowledged write). True when one changed;
   * the state is saved first.
   */
  private elect(): boolean {
    const s = this.state;
    if (!s || this.stopped) return false;
    const moves: string[] = [];
    const vols = s.vols.map((v) => ({
      ...v,
      dps: v.dps.map((dp) => {
        if (dp.leader && this.isAlive(dp.leader)) return dp;
        const from = Math.max(0, dp.hosts.indexOf(dp.leader ?? ''));
        const next = [...dp.hosts.slice(from + 1), ...dp.hosts.slice(0, from + 1)].find((h) => this.isAlive(h));
        if (!next || next === dp.leader) return dp;
        moves.push(`data partition ${dp.id}: leader ${dp.leader ?? '(none)'} not answering, ${next} leads now`);
        return { ...dp, leader: next };
      }),
    }));
    if (moves.length === 0) return false;
    const next: MasterState = { ...s, vols };
    try {
      this.persist(next);
    } catch (e) {
      log('leader election not saved (%s); leaders unchanged', (e as Error).message);
      return false;
    }
    this.state = next;
    for (const m of moves) notice('master', m);
    return true;
  }

  private isAlive(addr: string): boolean {
    return this.alive.get(addr) !== false;
  }

  // ---- views (upstream shapes) ----

  private mpView(mp: MpRecord): Record<string, unknown> {
    const st = this.mpStats.get(mp.id);
    const start = BigInt(mp.start);
    return {
      PartitionID: mp.id,
      Start: start,
      End: BigInt(mp.end),
      MaxInodeID: st ? st.MaxInodeID : Number(start === 0n ? 1n : start),
      InodeCount: st?.InodeCount ?? 0,
      DentryCount: st?.DentryCount ?? 0,
      FreeListLen: 0,
      TxCnt: 0,
      TxRbInoCnt: 0,
      TxRbDenCnt: 0,
      IsRecover: false,
      Members: mp.members,
      LeaderAddr: mp.members[0] ?? '',
      Status: mp.members.every((a) => this.isAlive(a)) ? 2 : -1,
      Freeze: 0,
      LastDelReplicaTime: 0,
    };
  }

  private dpView(dp: DpRecord): Record<string, unknown> {
    return {
      PartitionType: 0,
      PartitionID: dp.id,
      Status: dp.hosts.every((a) => this.isAlive(a)) ? 2 : 1,
      ReplicaNum: dp.hosts.length,
      Hosts: dp.hosts,
      LeaderAddr: dp.leader ?? dp.hosts[0] ?? '',
      Epoch: 0,
      IsRecover: false,
      IsDiscard: false,
      MediaType: 1,
    };
  }

  private volUsage(v: VolRecord): { used: number; inodes: number; dentries: number } {
    let used = 0, inodes = 0, dentries = 0;
    for (const mp of v.mps) {
      const st = this.mpStats.get(mp.id);
      if (!st) continue;
      used += st.UsedSize;
      inodes += st.InodeCount;
      dentries += st.DentryCount;
    }
    return { used, inodes, dentries };
  }

  /**
   * The volume's capacity, or less: what its datanodes can still take. Every data partition has a replica on
   * each of the volume's hosts here, so the fullest host bounds what more can be written; `df` on a mount then
   * shows the disks' real room, not a nominal 100 GB.
   */
  private volTotal(v: VolRecord, used: number): number {
    const hosts = new Set(v.dps.flatMap((dp) => dp.hosts));
    const free = [...hosts].map((h) => this.dnReports.get(h)?.Available).filter((a): a is number => a !== undefined);
    const nominal = v.capacityGB * GB;
    return free.length === 0 ? nominal : Math.min(nominal, used + Math.min(...free));
  }

  private volStat(v: VolRecord): Record<string, unknown> {
    const u = this.volUsage(v);
    const total = this.volTotal(v, u.used);
    return {
      Name: v.name,
      TotalSize: total,
      UsedSize: u.used,
      UsedRatio: (u.used / total).toFixed(2),
      CacheTotalSize: 0,
      CacheUsedSize: 0,
      CacheUsedRatio: '',
      EnableToken: false,
      InodeCount: u.inodes,
      TxCnt: 0,
      TxRbInoCnt: 0,
      TxRbDenCnt: 0,
      DpReadOnlyWhenVolFull: false,
      TrashIntervalV2: 0,
      DefaultStorageClass: 1,
      MetaFollowerRead: false,
      MaximallyRead: false,
      LeaderRetryTimeOut: 0,
      StatByStorageClass: [],
      StatMigrateStorageClass: [],
      StatByDpMediaType: [{ StorageClass: 1, InodeCount: 0, UsedSizeBytes: u.used, QuotaGB: 0 }],
    };
  }

  private clientVol(v: VolRecord): Record<string, unknown> {
    return {
      Name: v.name,
      Owner: v.owner,
      Status: 0,
      FollowerRead: false,
      MetaPartitions: v.mps.map((mp) => this.mpView(mp)),
      DataPartitions: [],
      DomainOn: false,
      OSSSecure: { AccessKey: v.accessKey, SecretKey: v.secretKey },
      CreateTime: v.createTime,
      DeleteLockTime: 0,
      VolType: 0,
    };
  }

  private adminVol(v: VolRecord, showOwner: boolean): Record<string, unknown> {
    const u = this.volUsage(v);
    const rw = v.dps.filter((dp) => dp.hosts.every((a) => this.isAlive(a))).length;
    return {
      ID: v.id,
      Name: v.name,
      Owner: showOwner ? v.owner : '',
      ZoneName: 'default',
      DpReplicaNum: v.replicaNum,
      MpReplicaNum: v.mps[0]?.members.length ?? 1,
      InodeCount: u.inodes,
      DentryCount: u.dentries,
      MaxMetaPartitionID: Math.max(0, ...v.mps.map((m) => m.id)),
      MaxDataPartitionID: Math.max(0, ...v.dps.map((d) => d.id)),
      Status: 0,
      Capacity: v.capacityGB,
      RwDpCnt: rw,
      RwDpOfSSDCnt: rw,
      RwDpOfHDDCnt: 0,
      MpCnt: v.mps.length,
      DpCnt: v.dps.length,
      DpOfSSDCnt: v.dps.length,
      DpOfHDDCnt: 0,
      FollowerRead: false,
      MetaFollowerRead: false,
      DirectRead: false,
      IgnoreTinyRecover: false,
      MaximallyRead: false,
      NeedToLowerReplica: false,
      Authenticate: false,
      CrossZone: false,
      DefaultPriority: false,
      DomainOn: false,
      CreateTime: goDateTime(v.createTime),
      DeleteLockTime: 0,
      LeaderRetryTimeOut: 0,
      EnableToken: false,
      EnablePosixAcl: false,
      EnableQuota: false,
      EnableTransactionV1: v.txMask,
      EnableTransaction: 'off',
      TxTimeout: 1,
      TxConflictRetryNum: 121,
      TxConflictRetryInterval: 500,
      TxOpLimit: 0,
      Description: '',
      DpSelectorName: '',
      DpSelectorParm: '',
      DefaultZonePrior: false,
      DpReadOnlyWhenVolFull: false,
      LeaderRetryTimeout: 0,
      VolType: 0,
      ObjBlockSize: 0,
      Uids: null,
      TrashInterval: 0,
      LatestVer: 0,
      Forbidden: false,
      DisableAuditLog: false,
      DeleteExecTime: '0001-01-01T00:00:00Z',
      DpRepairBlockSize: 131072,
      EnableAutoDpMetaRepair: false,
      AccessTimeInterval: 86400,
      EnablePersistAccessTime: false,
      VolStorageClass: 1,
      AllowedStorageClass: [1],
      ForbidWriteOpOfProtoVer0: true,
      QuotaOfStorageClass: [{ StorageClass: 1, InodeCount: 0, UsedSizeBytes: 0, QuotaGB: 0 }],
      RemoteCacheEnable: false,
      RemoteCachePath: '',
      RemoteCacheAutoPrepare: false,
      RemoteCacheTTL: 432000,
      RemoteCacheReadTimeout: 5,
      RemoteCacheMaxFileSizeGB: 128,
      RemoteCacheOnlyForNotSSD: false,
      RemoteCacheMultiRead: false,
      FlashNodeTimeoutCount: 5,
      RemoteCacheSameZoneTimeout: 400,
      RemoteCacheSameRegionTimeout: 100,
      QosInfo: {
        QosItems: [
          { Name: 'FlowRead', Type: 3, Total: 34359738368, CliUsed: 0 },
          { Name: 'FlowWrite', Type: 4, Total: 34359738368, CliUsed: 0 },
        ],
        QosEnable: false,
      },
      RemoteCacheRemoveDupReq: false,
    };
  }

  private clusterIp(remote: string): Record<string, unknown> {
    return {
      Cluster: this.state!.cluster,
      Ip: remote,
      MetaNodeDeleteBatchCount: 0,
      MetaNodeDeleteWorkerSleepMs: 0,
      DataNodeDeleteLimitRate: 0,
      DataNodeAutoRepairLimitRate: 0,
      DpMaxRepairErrCnt: 0,
      DirChildrenNumLimit: 20000000,
      FlashReadTimeout: 1000,
      FlashKeyFlowLimit: 0,
      EbsAddr: '',
      ServicePath: '',
      ClusterUuid: '',
      ClusterUuidEnable: false,
      ClusterEnableSnapshot: false,
      RaftPartitionCanUsingDifferentPort: false,
    };
  }

  private cluster(): Record<string, unknown> {
    const s = this.state!;
    let id = 1;
    const node = (addr: string, media: number, writable: boolean): Record<string, unknown> => ({
      Addr: addr,
      Status: this.isAlive(addr),
      DomainAddr: '',
      ID: id++,
      IsWritable: writable && this.isAlive(addr),
      MediaType: media,
      ForbidWriteOpOfProtoVer0: false,
    });
    const masters = [node(this.address, 0, false)];
    const metas = this.opts.metanodes.map((a) => node(a, 0, true));
    const datas = this.opts.datanodes.map((a) => node(a, 1, true));
    let dTotal = 0, dUsed = 0, dAvail = 0;
    for (const r of this.dnReports.values()) { dTotal += r.Total; dUsed += r.Used; dAvail += r.Available; }
    const gb = (n: number): number => Math.floor(n / GB);
    const badDps = s.vols.flatMap((v) => v.dps.filter((dp) => !dp.hosts.every((a) => this.isAlive(a))).map((dp) => dp.id));
    return {
      Name: s.cluster,
      CreateTime: goDateTime(s.createTime),
      LeaderAddr: this.address,
      DisableAutoAlloc: false,
      ForbidMpDecommission: false,
      MetaNodeThreshold: 0.75,
      Applied: 0,
      MaxDataPartitionID: s.maxDpId,
      MaxMetaNodeID: id - 1,
      MaxMetaPartitionID: s.maxMpId,
      VolDeletionDelayTimeHour: 48,
      MetaNodeGOGC: 100,
      DataNodeGOGC: 100,
      MarkDiskBrokenThreshold: 0,
      EnableAutoDpMetaRepair: false,
      AutoDpMetaRepairParallelCnt: 100,
      EnableAutoDecommission: false,
      AutoDecommissionDiskInterval: '10s',
      DecommissionFirstHostDiskParallelLimit: 10,
      DecommissionLimit: 10,
      DecommissionDiskLimit: 1,
      DpRepairTimeout: '2h0m0s',
      DpBackupTimeout: '168h0m0s',
      DpTimeout: '5m0s',
      MpTimeout: '1m0s',
      DataNodeStatInfo: {
        TotalGB: gb(dTotal),
        UsedGB: gb(dUsed),
        IncreasedGB: 0,
        UsedRatio: dTotal > 0 ? (dUsed / dTotal).toFixed(3) : '',
        AvailGB: gb(dAvail),
      },
      MetaNodeStatInfo: { TotalGB: 0, UsedGB: 0, IncreasedGB: 0, UsedRatio: '', AvailGB: 0 },
      VolStatInfo: s.vols.map((v) => {
        const st = this.volStat(v);
        return {
          Name: v.name,
          TotalSize: st.TotalSize,
          UsedSize: st.UsedSize,
          UsedRatio: st.UsedRatio,
          CacheTotalSize: 0,
          CacheUsedSize: 0,
          CacheUsedRatio: '',
          EnableToken: false,
          InodeCount: st.InodeCount,
          TxCnt: 0,
          TxRbInoCnt: 0,
          TxRbDenCnt: 0,
          DpReadOnlyWhenVolFull: false,
          TrashIntervalV2: 0,
          DefaultStorageClass: 0,
          MetaFollowerRead: false,
          MaximallyRead: false,
          LeaderRetryTimeOut: 0,
          StatByStorageClass: null,
          StatMigrateStorageClass: null,
          StatByDpMediaType: null,
        };
      }),
      BadPartitionIDs: badDps,
      BadMetaPartitionIDs: [],
      MasterNodes: masters,
      MetaNodes: metas,
      DataNodes: datas,
      StatOfStorageClass: [],
      StatMigrateStorageClass: [],
      ForbidWriteOpOfProtoVer0: false,
      LegacyDataMediaType: 0,
      RaftPartitionCanUsingDifferentPortEnabled: false,
      FlashNodes: [],
      FlashNodeHandleReadTimeout: 1000,
      FlashNodeReadDataNodeTimeout: 3000,
      RemoteCacheTTL: 0,
      RemoteCacheReadTimeout: 0,
      RemoteCacheMultiRead: false,
      FlashNodeTimeoutCount: 0,
      RemoteCacheSameZoneTimeout: 0,
      RemoteCacheSameRegionTimeout: 0,
      FlashHotKeyMissCount: 5,
      FlashReadFlowLimit: 2147483648,
      FlashWriteFlowLimit: 2147483648,
      FlashKeyFlowLimit: 0,
      RemoteClientFlowLimit: 0,
    };
  }

  // ---- HTTP ----

  private serve(req: http.IncomingMessage, res: http.ServerResponse): void {
    const chunks: Buffer[] = [];
    let len = 0;
    req.on('data', (c: Buffer) => {
      len += c.length;
      if (len <= 1 << 20) chunks.push(c);
    });
    req.on('end', () => {
      const url = new URL(req.url ?? '/', 'http://master');
      const params = new URLSearchParams(url.searchParams);
      const ctype = req.headers['content-type'] ?? '';
      if (req.method === 'POST' && ctype.startsWith('application/x-www-form-urlencoded')) {
        for (const [k, v] of new URLSearchParams(Buffer.concat(chunks).toString('utf8'))) if (!params.has(k)) params.set(k, v);
      }
      const remote = (req.socket.remoteAddress ?? '').replace(/^::ffff:/, '');
      const secret = req.headers[ADMIN_SECRET_HEADER.toLowerCase()];
      this.route(url.pathname, params, remote, typeof secret === 'string' ? secret : undefined).then(
        (data) => send(res, 200, envelope(ApiCode.Success, 'success', data)),
        (e: Error) => {
          if (e instanceof NotFound) {
            send(res, 404, '404 page not found\n', 'text/plain; charset=utf-8');
          } else if (e instanceof ApiError) {
            send(res, 200, envelope(e.apiCode, e.message, null));
          } else {
            log('%s %s: %s', req.method, req.url, e.stack ?? e.message);
            send(res, 200, envelope(ApiCode.InternalError, e.message, null));
          }
        },
      );
    });
  }

  /** Whether the request carries the admin secret: false when it carries none, refused when a wrong one. */
  private hasSecret(given: string | undefined): boolean {
    if (given === undefined) return false;
    if (!timingSafeEqual(sha256(given), this.secretHash)) throw new ApiError(ApiCode.NoPermission, 'no permission: wrong cluster secret');
    return true;
  }

  private async route(pathname: string, q: URLSearchParams, remote: string, secret: string | undefined): Promise<unknown> {
    if (!this.state) throw new ApiError(ApiCode.InternalError, 'master is not running');
    switch (pathname) {
      case '/client/vol': {
        const v = this.vol(q.get('name'));
        if (q.get('authKey') !== md5(v.owner)) throw new ApiError(ApiCode.AuthKeyMismatch, 'client and server auth key do not match');
        return this.clientVol(v);
      }
      case '/client/metaPartitions':
        return this.vol(q.get('name')).mps.map((mp) => this.mpView(mp));
      case '/client/partitions': {
        const v = this.vol(q.get('name'));
        return { DataPartitions: v.dps.map((dp) => this.dpView(dp)), VolReadOnly: false, StatByClass: null };
      }
      case '/client/volStat':
        return this.volStat(this.vol(q.get('name')));
      case '/admin/getIp':
        return this.clusterIp(remote);
      case '/admin/getVol': {
        const shown = this.hasSecret(secret);
        return this.adminVol(this.vol(q.get('name')), shown);
      }
      case '/admin/getCluster':
        return this.cluster();
      case '/admin/createVol': {
        if (!this.hasSecret(secret)) {
          throw new ApiError(ApiCode.NoPermission, `no permission: createVol needs the cluster secret (header ${ADMIN_SECRET_HEADER}; the embedded cluster keeps it in DIR/secret)`);
        }
        const name = q.get('name') ?? '';
        const owner = q.get('owner') ?? '';
        const opts: CreateVolumeOptions = {};
        const cap = q.get('capacity');
        if (cap !== null) opts.capacityGB = Number(cap);
        const rn = q.get('replicaNum');
        if (rn !== null && rn !== '') opts.replicaNum = Number(rn);
        const dpc = q.get('dpCount') ?? q.get('dataPartitions');
        if (dpc !== null && dpc !== '') opts.dataPartitions = Number(dpc);
        await this.createVolumeApi(name, owner, opts);
        const v = this.vol(name);
        return `create vol[${name}] successfully, has allocate [${v.dps.length}] data partitions`;
      }
      default:
        throw new NotFound();
    }
  }
}

class NotFound extends Error {}

/** What is wrong with a new volume's name, owner, capacity or partition count, or undefined (the launcher asks first). */
export function newVolumeProblem(name: string, owner: string, capacityGB: number, dataPartitions: number): string | undefined {
  if (!VOL_NAME.test(name)) return `parameter name not legal: "${name.slice(0, 80)}" (2-63 letters, digits, _ . -)`;
  if (!OWNER_NAME.test(owner)) return `parameter owner not legal: "${owner.slice(0, 80)}" (a letter, then up to 20 letters, digits or _)`;
  if (!Number.isInteger(capacityGB) || capacityGB < 1 || capacityGB > MAX_CAPACITY_GB) return `bad capacity ${capacityGB} (whole GB, 1..${MAX_CAPACITY_GB})`;
  if (!Number.isInteger(dataPartitions) || dataPartitions < 1 || dataPartitions > MAX_DATA_PARTITIONS) {
    return `bad data partition count ${dataPartitions} (1..${MAX_DATA_PARTITIONS})`;
  }
  return undefined;
}

/** The leader a new data partition starts with: its hosts in turn by partition id, so Hosts[0] leads only some. */
function firstLeader(id: number, hosts: string[]): string {
  return hosts[id % hosts.length] ?? '';
}

/** "host:port" where port may be 0 (any free port). */
function listenAddr(a: string): { host: string; port: number } {
  const i = a.lastIndexOf(':');
  const port = Number(a.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new CubeFSError(ErrorCode.Invalid, `bad listen address "${a}" (want HOST:PORT)`);
  }
  return { host: a.slice(0, i).replace(/^\[|\]$/g, ''), port };
}

function sha256(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

function md5(s: string): string {
  return createHash('md5').update(s).digest('hex');
}

function randomKey(n: number): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  const b = randomBytes(n);
  let s = '';
  for (let i = 0; i < n; i++) s += alphabet[b[i]! % alphabet.length];
  return s;
}

function num(v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : 0;
}

/** Go's "2006-01-02 15:04:05" in UTC. */
function goDateTime(unix: number): string {
  return new Date(unix * 1000).toISOString().slice(0, 19).replace('T', ' ');
}

const BIG = '\u0001bigint:';

/** JSON text with bigints written as exact digits. */
export function stringifyWithBigints(v: unknown): string {
  const text = JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? `${BIG}${x.toString()}` : x));
  return text.replace(/"\\u0001bigint:(-?\d+)"/g, '$1');
}

function envelope(code: number, msg: string, data: unknown): string {
  return `{"code":${code},"msg":${JSON.stringify(msg)},"data":${data === undefined ? 'null' : stringifyWithBigints(data)}}`;
}

function send(res: http.ServerResponse, status: number, body: string, ctype = 'application/json'): void {
  const b = Buffer.from(body);
  res.writeHead(status, { 'Content-Type': ctype, 'Content-Length': b.length });
  res.end(b);
}
