/**
 * The embedded DataNode: upstream's data packet protocol over TCP (datanode/wrap_operator.go semantics).
 *
 * One PacketServer; partitions come from the master's CreateDataPartition (0x60) and are reported by
 * DataNodeHeartbeat (0x63). Each partition is an ExtentStore under dir/<partition>/.
 *
 * Replication of appends: a request whose RemainingFollowers > 0 and whose Arg names followers
 * ("h:p/h:p/") is a leader request (it goes to Hosts[0]). The leader checks it, forwards a copy (Arg
 * empty, RemainingFollowers 0, as upstream's leader does in the capture; for tiny writes with the chosen
 * extent and offset filled in) to every follower in parallel over pooled connections, persists locally,
 * and answers Ok only when all three have persisted. Any follower failure answers IntraGroupNet naming the
 * follower. Replies leave in request order per connection (PacketServer).
 *
 * Raft leader (upstream: each data partition's raft group; here the master elects, master.ts): the master
 * tells each datanode the leader of its partitions (CreateDataPartition, every DataNodeHeartbeat). Only
 * the leader serves StreamRead, Read and RandomWrite; any other replica answers TryOtherAddr "raft is not
 * the leader" (as does a datanode that has not heard from the master since it started). The leader applies
 * a RandomWrite and replicates it to the other hosts itself (ReplicateRandomWrite, in place of raft's log),
 * overlapping ones one after another so every replica applies them in the same order, and answers Ok when
 * all have it. StreamFollowerRead is served by any replica. As upstream's datanode does, a connection that
 * carried an error reply is closed right after it.
 *
 * Valid replies per op: CreateExtent Ok(ExtentID) | NotExist | DiskNoSpace | IntraGroupNet | Err;
 * Write/SyncWrite/RandomWrite/SyncRandomWrite Ok | NotExist | DiskNoSpace | IntraGroupNet | Err;
 * Read/StreamRead several Ok packets of <= 128 KiB (etype 0x01, koff 0) | NotExist | Err;
 * MarkDelete Ok (no replica asked keeps it) | NotExist (a replica asked alone, without it). Capacity is
 * checked before anything is written or forwarded, so a DiskNoSpace never leaves a half-acknowledged write.
 *
 * RDMA (docs/rdma.md "Flows"): when the host has an RDMA device (rdmaDevices() non-empty, option rdma not
 * 'off'), the node also listens for rdma_cm on the same host and the same port number as its TCP server (the
 * rdma_cm port space is not the kernel's). It has one Pool and two RdmaContexts over it: "front" (the
 * listener: clients, and leaders replicating to this node) and "repl" (this node's QPs to its followers),
 * separate PDs, QPs and MRs. Over RDMA it serves Write/SyncWrite/RandomWrite/SyncRandomWrite (the payload is
 * RDMA-Read from the sender's descriptor into a pool buffer, CRC-checked, persisted from that buffer; a
 * leader then sends each follower a request block with the descriptor of that same buffer in the repl MR)
 * and Read/StreamRead (the range is read into a pool buffer, RDMA-Written into the client's buffer, then
 * answered on the same QP with Size and the CRC of the whole range). Everything else (CreateExtent, tiny
 * writes, admin) stays on TCP. Every pool buffer is freed on every path.
 */
import fsp from 'node:fs/promises';
import { crc32, ExtentType, MAX_PACKET_DATA, newReply, Op, Result, type Packet } from '../proto/index.js';
import { Pool } from '../pool/index.js';
import { RdmaConnection, RdmaContext, RdmaListener, rdmaDevices, type RdmaRequestBlock } from '../transport/rdma.js';
import { nextReqId } from '../transport/reqid.js';
import { PacketServer, type RequestContext } from '../transport/server.js';
import { ConnPool } from '../transport/tcp.js';
import { logger, warn } from '../util/log.js';
import { makeDirs } from '../util/dirs.js';
import { EXTENT_SIZE_LIMIT, ExtentNotExist, ExtentStore, isTinyExtent } from './extent-store.js';

const log = logger('datanode');

/** Largest read one request may ask for; the reply is cut into <= 128 KiB packets. */
const MAX_READ_REQUEST = 16 * 1024 * 1024;
/** An RDMA read is loaded and RDMA-Written in chunks of this size, so disk and wire overlap. */
const RDMA_READ_CHUNK = 256 * 1024;
const NO_TINY_TEXT = 'GetAvailableTinyExtent error no available extent';
/** How often the free space of the disk is looked at again. */
const CAPACITY_REFRESH_MS = 1_000;
/** What a replica that is not the raft leader answers, as upstream's datanode words it (action_error). */
const NOT_LEADER_READ = 'ActionStreamRead_raft is not the leader.';
const NOT_LEADER_WRITE = 'ActionWrite:_raft is not the leader.';

export interface DataNodeOptions {
  dir: string;
  /** "host:port"; default "127.0.0.1:0". */
  listen?: string;
  /** Bytes this node may hold in extents; default: the free space of the disk under dir at start. */
  capacityBytes?: number;
  /** Serve tiny extents (ExtentID 0 writes); off answers DiskNoSpace as a fresh upstream node did. */
  tinyExtents?: boolean;
  /** Deadline for a forwarded request to a follower. */
  forwardTimeoutMs?: number;
  /** Serve RDMA too: 'auto' (default) when the host has a device, 'off' never. */
  rdma?: 'auto' | 'off';
  /** Size of the registered pool RDMA payloads land in, MiB (default 64). */
  rdmaPoolMB?: number;
}

interface RdmaServing {
  pool: Pool;
  front: RdmaContext;
  repl: RdmaContext;
  listener: RdmaListener;
  peers: Map<string, Promise<RdmaConnection>>;
}

export interface DataNodeStats {
  partitions: number;
  extents: number;
  usedBytes: number;
  capacityBytes: number;
  requests: number;
  writes: number;
  reads: number;
  forwarded: number;
  errors: number;
  /** StreamRead/Read/RandomWrite refused with TryOtherAddr: this node is not the partition's leader. */
  notLeader: number;
  /** TCP connections accepted since start (clients, peers, the master). */
  accepted: number;
  /** Requests served over RDMA (writes and reads), forwards sent to followers over RDMA. */
  rdmaWrites: number;
  rdmaReads: number;
  rdmaForwards: number;
}

interface CreateDataPartitionReq {
  VolName: string;
  PartitionID: number;
  Hosts: string[];
  /** The raft leader (master.ts); absent from an older master: Hosts[0]. */
  Leader?: string;
}

class NoSpace extends Error {}

export class DataNode {
  private readonly opts: DataNodeOptions;
  private server: PacketServer | null = null;
  private pool: ConnPool | null = null;
  private readonly parts = new Map<number, ExtentStore>();
  private address = '';
  private capacity = 0;
  private capacityTimer: NodeJS.Timeout | null = null;
  private readonly counters = { requests: 0, writes: 0, reads: 0, forwarded: 0, errors: 0, notLeader: 0, rdmaWrites: 0, rdmaReads: 0, rdmaForwards: 0 };
  private rdma: RdmaServing | null = null;
  private readonly tiny: boolean;
  /** Partition -> its raft leader, as the master last said. Unknown (after a start) means: not us. */
  private readonly leaders = new Map<number, string>();
  /** RandomWrites in flight at this leader, per extent (overlapping ones run one after another). */
  private readonly overwrites = new Map<string, { start: number; end: number; done: Promise<unknown> }[]>();

  constructor(opts: DataNodeOptions) {
    this.opts = opts;
    this.tiny = opts.tinyExtents ?? true;
  }

  get addr(): string {
    return this.address;
  }

  /** "host:port" of the RDMA listener, or null when this node does not serve RDMA. */
  get rdmaAddr(): string | null {
    return this.rdma ? this.rdma.listener.addr : null;
  }

  /** The RDMA pool's counters (in use must be 0 when idle), or null without RDMA. */
  rdmaPoolStats(): ReturnType<Pool['stats']> | null {
    return this.rdma ? this.rdma.pool.stats() : null;
  }

  get stats(): DataNodeStats {
    let extents = 0;
    for (const p of this.parts.values()) extents += p.extentCount;
    return { partitions: this.parts.size, extents, usedBytes: this.used(), capacityBytes: this.capacity, ...this.counters, accepted: this.server?.accepted ?? 0 };
  }

  /** Directory of a partition's extent files (tests compare replicas through it). */
  extentPath(partitionId: number, extentId: number): string | undefined {
    return this.parts.get(partitionId)?.file(extentId);
  }

  async start(): Promise<string> {
    if (this.server) return this.address;
    makeDirs(this.opts.dir);
    for (const name of await fsp.readdir(this.opts.dir)) {
      if (!/^\d+$/.test(name)) continue;
      try {
        const st = await ExtentStore.open(this.opts.dir, { VolName: '', PartitionID: Number(name), Hosts: [] }, false);
        this.parts.set(st.meta.PartitionID, st);
      } catch (e) {
        // A CreateDataPartition cut short before its meta.json (the master retries it): nothing to load.
        const empty = (e as NodeJS.ErrnoException).code === 'ENOENT' && (await fsp.readdir(`${this.opts.dir}/${name}`).catch(() => ['?'])).length === 0;
        if (empty) log('%s: data partition %s was never made whole (empty directory): skipped', this.opts.dir, name);
        else warn('datanode', `${this.opts.dir}: data partition ${name} not loaded: ${(e as Error).message}`);
      }
    }
    await this.refreshCapacity();
    this.capacityTimer = setInterval(() => void this.refreshCapacity(), CAPACITY_REFRESH_MS);
    this.capacityTimer.unref();
    this.pool = new ConnPool(4);
    const server = new PacketServer('datanode', (req, ctx) => this.handle(req, ctx), { closeAfterError: true });
    const { host, port } = parseListen(this.opts.listen ?? '127.0.0.1:0');
    this.address = await server.listen(host, port);
    this.server = server;
    if ((this.opts.rdma ?? 'auto') !== 'off' && rdmaDevices().length > 0) {
      try {
        this.startRdma(this.address);
      } catch (e) {
        log('datanode %s: RDMA not served: %s', this.address, (e as Error).message);
      }
    }
    log('datanode %s serving %d partitions from %s', this.address, this.parts.size, this.opts.dir);
    return this.address;
  }

  /**
   * What this node may still hold: its extents plus the file system's free space now (a disk that other files
   * fill is full for us too), and never more than a configured capacityBytes. A write that would pass it is
   * answered DiskNoSpace at once.
   */
  private async refreshCapacity(): Promise<void> {
    try {
      const s = await fsp.statfs(this.opts.dir);
      const real = s.bavail * s.bsize + this.used();
      this.capacity = this.opts.capacityBytes !== undefined ? Math.min(this.opts.capacityBytes, real) : real;
    } catch (e) {
      if (this.opts.capacityBytes !== undefined) this.capacity = this.opts.capacityBytes;
      log('statfs %s: %s', this.opts.dir, (e as Error).message);
    }
  }

  async stop(): Promise<void> {
    if (this.capacityTimer) clearInterval(this.capacityTimer);
    this.capacityTimer = null;
    const server = this.server;
    if (!server) return;
    this.server = null;
    this.stopRdma();
    await server.close();
    this.pool?.close();
    this.pool = null;
    for (const p of this.parts.values()) await p.close();
    this.parts.clear();
  }

  private used(): number {
    let n = 0;
    for (const p of this.parts.values()) n += p.used;
    return n;
  }

  private async handle(req: Packet, _ctx: RequestContext): Promise<Packet | Packet[] | null> {
    this.counters.requests++;
    try {
      const out = await this.dispatch(req);
      const list = Array.isArray(out) ? out : [out];
      if (list.some((p) => p.resultCode !== Result.Ok)) this.counters.errors++;
      return out;
    } catch (e) {
      this.counters.errors++;
      if (e instanceof ExtentNotExist) return errReply(req, Result.NotExist, e.message);
      if (e instanceof FollowerError) return errReply(req, Result.IntraGroupNet, `datanode ${this.address}: ${e.message}`);
      if (e instanceof NoSpace || (e as NodeJS.ErrnoException).code === 'ENOSPC') {
        this.full((e as Error).message);
        return errReply(req, Result.DiskNoSpace, `datanode ${this.address}: no space: ${(e as Error).message}`);
      }
      log('%s: op 0x%s failed: %s', this.address, req.opcode.toString(16), (e as Error).message);
      return errReply(req, Result.Err, `datanode ${this.address}: ${(e as Error).message}`);
    }
  }

  /** Said once a minute while it lasts: writes are answered DiskNoSpace, reads and overwrites go on. */
  private full(why: string): void {
    warn('datanode', `${this.address}: disk full (${this.opts.dir}; ${why}): new data is refused with DiskNoSpace, reads and overwrites go on`, { key: `full-${this.address}` });
  }

  private async dispatch(req: Packet): Promise<Packet | Packet[]> {
    switch (req.opcode) {
      case Op.CreateDataPartition:
        return this.createPartition(req);
      case Op.DataNodeHeartbeat:
        return this.heartbeat(req);
    }
    const part = this.parts.get(req.partitionId);
    if (!part) return errReply(req, Result.NotExist, `datanode ${this.address}: data partition ${req.partitionId} does not exist`);
    switch (req.opcode) {
      case Op.CreateExtent:
        return this.createExtent(part, req);
      case Op.Write:
      case Op.SyncWrite:
      case Op.ReplicateRandomWrite:
      case Op.ReplicateSyncRandomWrite:
        return this.write(part, req);
      case Op.RandomWrite:
      case Op.SyncRandomWrite:
        if (!this.leads(part)) return this.notLeader(req, NOT_LEADER_WRITE);
        return this.overwrite(part, req, req.data, (followers, fwd) => this.forward(followers, fwd));
      case Op.Read:
      case Op.StreamRead:
        if (!this.leads(part)) return this.notLeader(req, NOT_LEADER_READ);
        return this.read(part, req);
      case Op.StreamFollowerRead:
        return this.read(part, req);
      case Op.MarkDelete:
        return this.markDelete(part, req);
      case Op.GetAllWatermarks:
        return this.watermarks(part, req);
      default:
        return errReply(req, Result.Err, `datanode ${this.address}: unsupported opcode 0x${req.opcode.toString(16)}`);
    }
  }

  private async createPartition(req: Packet): Promise<Packet> {
    const body = JSON.parse(req.data.toString('utf8')) as CreateDataPartitionReq;
    if (!Number.isInteger(body.PartitionID) || body.PartitionID <= 0 || !Array.isArray(body.Hosts)) {
      return errReply(req, Result.ArgMismatch, 'CreateDataPartition: want {VolName, PartitionID, Hosts[]}');
    }
    if (!this.parts.has(body.PartitionID)) {
      const st = await ExtentStore.open(this.opts.dir, { VolName: body.VolName, PartitionID: body.PartitionID, Hosts: body.Hosts }, true);
      this.parts.set(body.PartitionID, st);
    }
    this.leaders.set(body.PartitionID, typeof body.Leader === 'string' && body.Leader !== '' ? body.Leader : body.Hosts[0] ?? '');
    return newReply(req, Result.Ok);
  }

  /** This node is the partition's raft leader. */
  private leads(part: ExtentStore): boolean {
    return this.leaders.get(part.meta.PartitionID) === this.address;
  }

  private notLeader(req: Packet, text: string): Packet {
    this.counters.notLeader++;
    return errReply(req, Result.TryOtherAddr, text);
  }

  /** The master's heartbeat: takes the leaders it names, answers capacity and partitions. */
  private heartbeat(req: Packet): Packet {
    if (req.data.length > 0) {
      let leaders: unknown;
      try {
        leaders = (JSON.parse(req.data.toString('utf8')) as { Leaders?: unknown }).Leaders;
      } catch {
        return errReply(req, Result.ArgMismatch, 'DataNodeHeartbeat: body is not JSON');
      }
      if (leaders && typeof leaders === 'object') {
        for (const [pid, addr] of Object.entries(leaders as Record<string, unknown>)) {
          if (typeof addr === 'string') this.leaders.set(Number(pid), addr);
        }
      }
    }
    const used = this.used();
    const body = {
      Total: this.capacity,
      Used: used,
      Available: Math.max(0, this.capacity - used),
      Partitions: [...this.parts.values()].map((p) => ({ PartitionID: p.meta.PartitionID, Used: p.used, ExtentCount: p.extentCount, IsLeader: this.leads(p) })),
      // Ours, for operators and tests (the master ignores it): what this node served and refused.
      Stats: this.stats,
    };
    return newReply(req, Result.Ok, Buffer.from(JSON.stringify(body)));
  }

  private async createExtent(part: ExtentStore, req: Packet): Promise<Packet> {
    const followers = leaderFollowers(req);
    if (req.extentId !== 0 && followers.length === 0) {
      await part.create(req.extentId);
      return newReply(req, Result.Ok, undefined, { extentId: req.extentId });
    }
    if (this.used() >= this.capacity) throw new NoSpace(`used ${this.used()} of ${this.capacity} bytes`);
    const id = await part.allocExtentId();
    const fwd = { ...req, extentId: id, arg: Buffer.alloc(0), remainingFollowers: 0 };
    await Promise.all([part.create(id), followers.length > 0 ? this.forward(followers, fwd) : undefined]);
    return newReply(req, Result.Ok, undefined, { extentId: id });
  }

  /**
   * Write `data` here and to `followers` (default: those a leader request names in Arg) through `forward`;
   * Ok when all have it.
   */
  private async write(part: ExtentStore, req: Packet, data: Buffer = req.data,
    forward: (followers: string[], fwd: Packet) => Promise<void> = (f, fwd) => this.forward(f, fwd),
    followers: string[] = leaderFollowers(req)): Promise<Packet> {
    this.counters.writes++;
    if (data.length !== req.size) return errReply(req, Result.Err, `write size ${req.size} but ${data.length} data bytes`);
    const crc = crc32(data);
    if (crc !== req.crc >>> 0) {
      return errReply(req, Result.Err, `datanode ${this.address}: crc mismatch: packet 0x${(req.crc >>> 0).toString(16)}, data 0x${crc.toString(16)}`);
    }
    const random = req.opcode === Op.RandomWrite || req.opcode === Op.SyncRandomWrite
      || req.opcode === Op.ReplicateRandomWrite || req.opcode === Op.ReplicateSyncRandomWrite;
    const sync = req.opcode === Op.SyncWrite || req.opcode === Op.SyncRandomWrite || req.opcode === Op.ReplicateSyncRandomWrite;
    let extentId = req.extentId;
    let extentOffset = req.extentOffset;
    const tinyAlloc = !random && extentId === 0 && !(req.extentType & ExtentType.Normal);
    if (tinyAlloc) {
      if (!this.tiny) return errReply(req, Result.DiskNoSpace, NO_TINY_TEXT);
    } else {
      if (extentOffset < 0) return errReply(req, Result.ArgMismatch, `negative extent offset ${extentOffset}`);
      if (!part.has(extentId) && !isTinyExtent(extentId)) throw new ExtentNotExist(extentId);
      if (extentOffset + data.length > EXTENT_SIZE_LIMIT) {
        return errReply(req, Result.Err, `extent ${extentId}: write [${extentOffset}, ${extentOffset + data.length}) exceeds the extent size limit ${EXTENT_SIZE_LIMIT}`);
      }
      if (random && extentOffset + data.length > (part.sizeOf(extentId) ?? 0)) {
        return errReply(req, Result.Err, `extent ${extentId}: random write [${extentOffset}, ${extentOffset + data.length}) outside the extent (size ${part.sizeOf(extentId) ?? 0})`);
      }
    }
    const growth = tinyAlloc ? data.length + 4095 : part.growth(extentId, extentOffset, data.length);
    if (growth > 0 && this.used() + growth > this.capacity) {
      const why = `${this.used()} of ${this.capacity} bytes used, write needs ${growth} more`;
      this.full(why);
      return errReply(req, Result.DiskNoSpace, `datanode ${this.address}: disk full: ${why}`);
    }
    if (tinyAlloc) {
      try {
        ({ id: extentId, offset: extentOffset } = part.reserveTiny(data.length));
      } catch (e) {
        return errReply(req, Result.DiskNoSpace, (e as Error).message);
      }
    }
    // the store grows the extent's size before its first await, so the next packet's check sees it
    const local = part.write(extentId, extentOffset, data, sync);
    if (followers.length > 0) {
      const fwd: Packet = { ...req, extentId, extentOffset, arg: Buffer.alloc(0), remainingFollowers: 0 };
      // Both settle before we return: the caller frees `data` (an RDMA pool buffer) right after.
      const [l, f] = await Promise.allSettled([local, forward(followers, fwd)]);
      if (l.status === 'rejected') throw l.reason;
      if (f.status === 'rejected') throw f.reason;
    } else {
      await local;
    }
    return newReply(req, Result.Ok, undefined, { extentId, extentOffset, remainingFollowers: req.remainingFollowers });
  }

  /**
   * A RandomWrite at the raft leader: applied here and replicated to every other host (ReplicateRandomWrite),
   * Ok once all have it. Overlapping overwrites of one extent run one after another, so the replicas apply
   * them in the same order (raft's log order, upstream).
   */
  private async overwrite(part: ExtentStore, req: Packet, data: Buffer,
    forward: (followers: string[], fwd: Packet) => Promise<void>): Promise<Packet> {
    const followers = part.meta.Hosts.filter((h) => h !== this.address);
    const repl = req.opcode === Op.SyncRandomWrite ? Op.ReplicateSyncRandomWrite : Op.ReplicateRandomWrite;
    const start = req.extentOffset, end = req.extentOffset + data.length;
    const key = `${part.meta.PartitionID}/${req.extentId}`;
    let list = this.overwrites.get(key);
    if (!list) this.overwrites.set(key, (list = []));
    const before = list.filter((o) => o.start < end && start < o.end).map((o) => o.done.catch(() => undefined));
    const done = Promise.all(before).then(() => this.write(part, req, data, (f, fwd) => forward(f, { ...fwd, opcode: repl }), followers));
    const entry = { start, end, done };
    list.push(entry);
    try {
      return await done;
    } finally {
      const i = list.indexOf(entry);
      if (i >= 0) list.splice(i, 1);
      if (list.length === 0) this.overwrites.delete(key);
    }
  }

  /** An error reply for a read request that cannot be served, or null. */
  private checkRead(part: ExtentStore, req: Packet, max: number): Packet | null {
    const size = part.sizeOf(req.extentId);
    if (size === undefined) throw new ExtentNotExist(req.extentId);
    const want = req.size;
    if (want <= 0 || want > max || req.extentOffset < 0) {
      return errReply(req, Result.ArgMismatch, `bad read: offset ${req.extentOffset} size ${want} (at most ${max})`);
    }
    if (req.extentOffset + want > size) {
      return errReply(req, Result.Err, `extent ${req.extentId}: read [${req.extentOffset}, ${req.extentOffset + want}) past its end ${size}`);
    }
    return null;
  }

  private async read(part: ExtentStore, req: Packet): Promise<Packet | Packet[]> {
    this.counters.reads++;
    const bad = this.checkRead(part, req, MAX_READ_REQUEST);
    if (bad) return bad;
    const want = req.size;
    const buf = await part.read(req.extentId, req.extentOffset, want);
    const out: Packet[] = [];
    for (let o = 0; o < want; o += MAX_PACKET_DATA) {
      const chunk = buf.subarray(o, Math.min(want, o + MAX_PACKET_DATA));
      out.push(newReply(req, Result.Ok, chunk, {
        extentType: ExtentType.Normal,
        extentOffset: req.extentOffset + o,
        kernelOffset: 0,
        crc: crc32(chunk),
        remainingFollowers: 0,
      }));
    }
    return out;
  }

  /**
   * GetAllWatermarks: the partition's extents of the asked type as upstream's []storage.ExtentInfo (only
   * normal extents are listed; tiny ones are shared and have no owner to look for).
   */
  private watermarks(part: ExtentStore, req: Packet): Packet {
    const normal = (req.extentType & ExtentType.Normal) !== 0;
    const list = normal ? part.normalExtents().map((e) => ({
      fileId: e.id, size: e.size, Crc: 0, deleted: false, modTime: Math.floor(e.mtimeMs / 1000), accessTime: Math.floor(e.mtimeMs / 1000),
      src: '', snapSize: 0, snapPreAllocSize: 0, applyID: 0,
    })) : [];
    return newReply(req, Result.Ok, Buffer.from(JSON.stringify(list)));
  }

  private async markDelete(part: ExtentStore, req: Packet): Promise<Packet> {
    let off = req.extentOffset;
    let len = 0;
    if (isTinyExtent(req.extentId) && req.data.length > 0) {
      try {
        const ek = JSON.parse(req.data.toString('utf8')) as { ExtentOffset?: number; Size?: number };
        off = ek.ExtentOffset ?? off;
        len = ek.Size ?? 0;
      } catch {
        return errReply(req, Result.ArgMismatch, 'MarkDelete: tiny extent key is not JSON');
      }
    }
    // Deletes are idempotent on every replica: a leader without the extent (deleted in an earlier try whose
    // forward failed, a follower down then) still has the followers delete theirs, and a follower that has
    // none counts as done. Otherwise a replica down during a delete would keep its copy for ever.
    const here = part.has(req.extentId);
    const followers = leaderFollowers(req);
    if (!here && followers.length === 0) return errReply(req, Result.NotExist, `extent ${req.extentId} does not exist`);
    const local = here ? part.markDelete(req.extentId, off, len) : Promise.resolve();
    if (followers.length > 0) await Promise.all([local, this.forward(followers, { ...req, arg: Buffer.alloc(0), remainingFollowers: 0 }, Result.NotExist)]);
    else await local;
    return newReply(req, Result.Ok);
  }

  // ---- RDMA ----

  private startRdma(addr: string): void {
    const { host, port } = parseListen(addr);
    const pool = new Pool({ capacity: (this.opts.rdmaPoolMB ?? 64) * 1024 * 1024 });
    let front: RdmaContext | null = null, repl: RdmaContext | null = null;
    try {
      front = new RdmaContext({ pool });
      repl = new RdmaContext({ pool, device: front.device });
      const listener = RdmaListener.listen(front, host, port, { onRequest: (b) => this.onRdmaRequest(b) });
      this.rdma = { pool, front, repl, listener, peers: new Map() };
      log('datanode %s: RDMA on %s (%s)', addr, listener.addr, front.device);
    } catch (e) {
      repl?.close();
      front?.close();
      pool.close();
      throw e;
    }
  }

  private stopRdma(): void {
    const r = this.rdma;
    if (!r) return;
    this.rdma = null;
    for (const p of r.peers.values()) p.then((c) => c.close(), () => undefined);
    r.repl.close();
    r.front.close();
    r.pool.close();
  }

  private onRdmaRequest(b: RdmaRequestBlock): void {
    this.counters.requests++;
    this.rdmaHandle(b).then((reply) => {
      if (reply === null) return;
      if (reply.resultCode !== Result.Ok) this.counters.errors++;
      b.conn.respond(b, reply);
    }, (e: Error) => {
      this.counters.errors++;
      b.conn.respond(b, this.errorReply(b.packet, e));
    });
  }

  private errorReply(req: Packet, e: Error): Packet {
    if (e instanceof ExtentNotExist) return errReply(req, Result.NotExist, e.message);
    if (e instanceof FollowerError) return errReply(req, Result.IntraGroupNet, `datanode ${this.address}: ${e.message}`);
    if (e instanceof NoSpace || (e as NodeJS.ErrnoException).code === 'ENOSPC') {
      return errReply(req, Result.DiskNoSpace, `datanode ${this.address}: no space: ${e.message}`);
    }
    log('%s: op 0x%s failed: %s', this.address, req.opcode.toString(16), e.message);
    return errReply(req, Result.Err, `datanode ${this.address}: ${e.message}`);
  }

  /**
   * One request that came over RDMA (docs/rdma.md "Flows"); the pool buffer is freed on every path. Null:
   * already answered (a read answers right after posting its RDMA Write).
   */
  private async rdmaHandle(b: RdmaRequestBlock): Promise<Packet | null> {
    const r = this.rdma;
    const req = b.packet;
    if (!r) return errReply(req, Result.Err, `datanode ${this.address}: stopping`);
    const part = this.parts.get(req.partitionId);
    if (!part) return errReply(req, Result.NotExist, `datanode ${this.address}: data partition ${req.partitionId} does not exist`);
    const timeoutMs = this.opts.forwardTimeoutMs ?? 10_000;
    switch (req.opcode) {
      case Op.Write:
      case Op.SyncWrite:
      case Op.RandomWrite:
      case Op.SyncRandomWrite:
      case Op.ReplicateRandomWrite:
      case Op.ReplicateSyncRandomWrite: {
        const overwrite = req.opcode === Op.RandomWrite || req.opcode === Op.SyncRandomWrite;
        if (overwrite && !this.leads(part)) return this.notLeader(req, NOT_LEADER_WRITE);
        if (!b.desc) return errReply(req, Result.Err, `datanode ${this.address}: a write over RDMA needs a descriptor`);
        if (req.size <= 0 || req.size > b.desc.len || req.size > r.pool.maxBlock) {
          return errReply(req, Result.ArgMismatch, `datanode ${this.address}: write of ${req.size} bytes (descriptor ${b.desc.len}, at most ${r.pool.maxBlock})`);
        }
        this.counters.rdmaWrites++;
        const buf = await poolBuffer(r.pool, req.size, timeoutMs);
        try {
          await b.conn.read(b.desc, buf, { len: req.size, timeoutMs });
          const forward = (followers: string[], fwd: Packet): Promise<void> => this.forwardRdma(followers, fwd, buf);
          if (overwrite) return await this.overwrite(part, { ...req, data: buf }, buf, forward);
          return await this.write(part, { ...req, data: buf }, buf, forward);
        } finally {
          r.pool.free(buf);
        }
      }
      case Op.Read:
      case Op.StreamRead:
      case Op.StreamFollowerRead: {
        if (req.opcode !== Op.StreamFollowerRead && !this.leads(part)) return this.notLeader(req, NOT_LEADER_READ);
        if (!b.desc) return errReply(req, Result.Err, `datanode ${this.address}: a read over RDMA needs a descriptor`);
        this.counters.reads++;
        const bad = this.checkRead(part, req, Math.min(r.pool.maxBlock, b.desc.len));
        if (bad) return bad;
        this.counters.rdmaReads++;
        const want = req.size;
        const buf = await poolBuffer(r.pool, want, timeoutMs);
        const writes: Promise<void>[] = [];
        try {
          // In chunks, so loading the next chunk from disk overlaps the RDMA Write of the one before (TCP's
          // StreamRead overlaps the same way, packet by packet); the CRC covers the whole range.
          let crc = 0;
          for (let o = 0; o < want; o += RDMA_READ_CHUNK) {
            const n = Math.min(RDMA_READ_CHUNK, want - o);
            const chunk = buf.subarray(o, o + n);
            await part.readInto(req.extentId, req.extentOffset + o, n, chunk);
            crc = crc32(chunk, crc);
            writes.push(b.conn.write(chunk, { addr: b.desc.addr + BigInt(o), len: n, rkey: b.desc.rkey }, { len: n, timeoutMs }));
          }
          // The response goes right behind the Writes on the same QP (native/rdma never lets a block overtake
          // an earlier op; RC ordering lands the Writes first): no wait for their completions in between.
          // The buffer is ours until those completions.
          b.conn.respond(b, newReply(req, Result.Ok, undefined, {
            extentType: ExtentType.Normal, extentOffset: req.extentOffset, kernelOffset: 0, size: want, crc, remainingFollowers: 0,
          }));
          return null;
        } finally {
          await Promise.all(writes.map((w) => w.catch((e: Error) => log('%s: RDMA write of a read to %s failed: %s', this.address, b.conn.peer, e.message))));
          r.pool.free(buf);
        }
      }
      default:
        return errReply(req, Result.Err, `datanode ${this.address}: opcode 0x${req.opcode.toString(16)} is not served over RDMA (use TCP)`);
    }
  }

  /** The replication connection (repl context) to a follower's RDMA listener; null if it has none. */
  private async replConn(follower: string): Promise<RdmaConnection | null> {
    const r = this.rdma;
    if (!r) return null;
    let p = r.peers.get(follower);
    if (!p) {
      p = RdmaConnection.connect(r.repl, follower, { qps: 2, timeoutMs: 3_000 });
      r.peers.set(follower, p);
      p.catch(() => { if (r.peers.get(follower) === p) r.peers.delete(follower); });
    }
    try {
      const c = await p;
      return c.closed ? null : c;
    } catch (e) {
      log('datanode %s: no RDMA to follower %s (%s): forwarding over TCP', this.address, follower, (e as Error).message);
      return null;
    }
  }

  /**
   * Replication of an RDMA write: each follower gets a request block with the descriptor of `buf` (this
   * node's pool buffer, the repl MR) and RDMA-Reads the payload from it. A follower without RDMA gets the
   * packet over TCP, its data being the same buffer.
   */
  private async forwardRdma(followers: string[], fwd: Packet, buf: Buffer): Promise<void> {
    this.counters.forwarded += followers.length;
    const timeoutMs = this.opts.forwardTimeoutMs ?? 10_000;
    const one = async (f: string): Promise<Packet> => {
      const conn = await this.replConn(f);
      if (!conn) {
        const pool = this.pool;
        if (!pool) throw new Error('datanode stopped');
        return pool.request(f, { ...fwd, data: buf }, { timeoutMs });
      }
      this.counters.rdmaForwards++;
      return conn.request({ ...fwd, data: Buffer.alloc(0), size: buf.length, reqId: nextReqId() }, { desc: { buf }, timeoutMs });
    };
    const results = await Promise.allSettled(followers.map(one));
    checkForwards(followers, results);
  }

  /**
   * Send `fwd` to every follower; rejects naming the first follower that did not persist it. `alsoOk`: a
   * result that counts as done too (NotExist for a delete).
   */
  private async forward(followers: string[], fwd: Packet, alsoOk?: Result): Promise<void> {
    const pool = this.pool;
    if (!pool) throw new Error('datanode stopped');
    this.counters.forwarded += followers.length;
    const timeoutMs = this.opts.forwardTimeoutMs ?? 10_000;
    const results = await Promise.allSettled(followers.map((f) => pool.request(f, { ...fwd }, { timeoutMs })));
    checkForwards(followers, results, alsoOk);
  }
}

/**
 * A pool buffer: at once when a block is free (the common case: no trip through libuv's thread pool, which
 * the extent files' I/O needs), else waiting up to waitMs off the main thread.
 */
function poolBuffer(pool: Pool, size: number, waitMs: number): Promise<Buffer> | Buffer {
  try {
    return pool.alloc(size, 0);
  } catch {
    return pool.allocAsync(size, waitMs);
  }
}

/** Rejects naming the first follower that did not persist its copy. */
function checkForwards(followers: string[], results: PromiseSettledResult<Packet>[], alsoOk?: Result): void {
  for (let i = 0; i < followers.length; i++) {
    const r = results[i]!;
    if (r.status === 'rejected') throw new FollowerError(followers[i]!, (r.reason as Error).message);
    if (r.value.resultCode !== Result.Ok && r.value.resultCode !== alsoOk) {
      const text = r.value.data.toString('utf8');
      if (r.value.resultCode === Result.DiskNoSpace) throw new NoSpace(`follower ${followers[i]}: ${text}`);
      throw new FollowerError(followers[i]!, `result 0x${r.value.resultCode.toString(16)} ${text}`);
    }
  }
}

class FollowerError extends Error {
  constructor(readonly follower: string, detail: string) {
    super(`follower ${follower}: ${detail}`);
  }
}

/** Followers named in a leader request's Arg; none for a follower request. */
function leaderFollowers(req: Packet): string[] {
  if (req.remainingFollowers === 0 || req.arg.length === 0) return [];
  return req.arg.toString('utf8').split('/').filter((s) => s.length > 0);
}

function errReply(req: Packet, rc: number, text: string): Packet {
  return newReply(req, rc, Buffer.from(text));
}

function parseListen(s: string): { host: string; port: number } {
  const i = s.lastIndexOf(':');
  const port = Number(s.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`bad listen address "${s}" (want HOST:PORT)`);
  return { host: s.slice(0, i).replace(/^\[|\]$/g, ''), port };
}
