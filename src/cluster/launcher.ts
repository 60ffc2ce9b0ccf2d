/**
 * The embedded cluster: one master, one metanode, three datanodes on loopback, each a child process
 * (or, for fast tests, in this process). The layout lives in DIR/cluster.json so a restart comes back on
 * the same ports with the same data. A node that dies unexpectedly is restarted by the launcher, as a
 * service manager would, so a killed datanode comes back and writes resume.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { MasterClient } from '../master/client.js';
import { CubeFSError, ErrorCode, sleep } from '../util/errors.js';
import { makeDirs, makeDirsReason } from '../util/dirs.js';
import { logger, notice, warn } from '../util/log.js';
import { DataNode } from './datanode.js';
import { Master, newVolumeProblem } from './master.js';
import { MetaNode } from './metanode.js';
import { ensureSecret, secretPath } from './secret.js';

const log = logger('cluster');
const NODE_MAIN = path.join(path.dirname(fileURLToPath(import.meta.url)), 'node-main.js');

export type Role = 'master' | 'metanode' | 'datanode';

export interface ClusterOptions {
  dir: string;
  /** Address the nodes listen on. Loopback unless the user asks otherwise. */
  host?: string;
  /** Master port; 0 picks a free one. Other nodes get free ports. Reused on restart. */
  masterPort?: number;
  vol?: string;
  owner?: string;
  capacityGB?: number;
  dataPartitions?: number;
  /** Child processes (default) or in this process. */
  processes?: boolean;
  /** Restart a node process that exits unexpectedly (default true with processes). */
  supervise?: boolean;
  /** Datanode capacity in bytes (tests of a full disk). */
  datanodeCapacity?: number;
  heartbeatMs?: number;
  /**
   * Datanodes serve RDMA too when the host has a device ('auto', default): rdma_cm on the same address and
   * the same port number as their TCP server (clients use rdmaPort 'same'). 'off': TCP only.
   */
  rdma?: 'auto' | 'off';
}

interface Layout {
  host: string;
  master: string;
  metanode: string;
  datanodes: string[];
  vol: string;
  owner: string;
  /** The volume is not known to exist yet: written before createVol, dropped once it succeeded. */
  volumePending?: boolean;
}

interface Running {
  role: Role;
  index: number;
  dir: string;
  addr: string;
  child?: ChildProcess;
  /** The command line of a node process (revive() starts it again). */
  args?: string[];
  inproc?: { stop(): Promise<void> };
  stopping: boolean;
}

export class EmbeddedCluster {
  readonly dir: string;
  private readonly opts: ClusterOptions;
  private layout!: Layout;
  private readonly nodes: Running[] = [];
  private stopped = false;
  private secret = '';

  private constructor(opts: ClusterOptions) {
    this.opts = opts;
    this.dir = path.resolve(opts.dir);
  }

  get masterAddr(): string { return this.layout.master; }
  get metanodeAddr(): string { return this.layout.metanode; }
  get datanodeAddrs(): string[] { return [...this.layout.datanodes]; }
  get vol(): string { return this.layout.vol; }
  get owner(): string { return this.layout.owner; }
  /** DIR/secret: the admin secret the master wants for createVol and getVol's Owner. */
  get secretFile(): string { return secretPath(this.dir); }
  get adminSecret(): string { return this.secret; }

  static async start(opts: ClusterOptions): Promise<EmbeddedCluster> {
    const c = new EmbeddedCluster(opts);
    try {
      await c.boot();
    } catch (e) {
      await c.stop();
      throw e;
    }
    return c;
  }

  private layoutFile(): string {
    return path.join(this.dir, 'cluster.json');
  }

  private async boot(): Promise<void> {
    try {
      makeDirs(this.dir, 0o700);
    } catch (e) {
      throw new CubeFSError(ErrorCode.Invalid, `cannot create the cluster directory ${this.dir}: ${makeDirsReason(e)}`, { cause: e });
    }
    // A cluster directory from before the secret existed gets one now.
    this.secret = ensureSecret(this.dir);
    const saved: Layout | null = fs.existsSync(this.layoutFile()) ? JSON.parse(fs.readFileSync(this.layoutFile(), 'utf8')) : null;
    if (!saved) {
      // Said before anything starts: a volume the master would refuse is not left pending in cluster.json.
      const bad = newVolumeProblem(this.opts.vol ?? 'cubefs', this.opts.owner ?? 'cubefs', this.opts.capacityGB ?? 100, this.opts.dataPartitions ?? 4);
      if (bad) throw new CubeFSError(ErrorCode.Invalid, `the cluster's volume: ${bad}`);
    }
    const host = saved?.host ?? this.opts.host ?? '127.0.0.1';
    const at = (addr: string | undefined): string => addr ?? `${host}:0`;
    const meta = await this.startNode('metanode', 0, at(saved?.metanode));
    const datas: string[] = [];
    for (let i = 0; i < 3; i++) datas.push(await this.startNode('datanode', i, at(saved?.datanodes[i])));
    const masterListen = saved?.master ?? `${host}:${this.opts.masterPort ?? 0}`;
    const master = await this.startNode('master', 0, masterListen, { metanodes: [meta], datanodes: datas });
    const pending = !saved || saved.volumePending === true;
    this.layout = {
      host, master, metanode: meta, datanodes: datas,
      vol: saved?.vol ?? this.opts.vol ?? 'cubefs', owner: saved?.owner ?? this.opts.owner ?? 'cubefs',
    };
    // The nodes' addresses are kept before the volume is made (the next start must find the same nodes);
    // the volume is marked pending until createVol succeeded, so a start that failed in between makes it then.
    this.writeLayout(pending ? { ...this.layout, volumePending: true } : this.layout);
    if (pending) {
      const mc = new MasterClient(master, { adminSecret: this.secret });
      try {
        // A start killed after the master had recorded the volume finds it there.
        if (!saved || !(await volumeExists(mc, this.layout.vol))) {
          await mc.createVolume(this.layout.vol, this.layout.owner, {
            capacityGB: this.opts.capacityGB ?? 100,
            replicaNum: 3,
            ...(this.opts.dataPartitions !== undefined ? { dataPartitions: this.opts.dataPartitions } : {}),
          });
        }
      } catch (e) {
        throw new CubeFSError(ErrorCode.MasterError,
          `creating volume "${this.layout.vol}" failed: ${(e as Error).message} (the next start of this cluster directory tries again)`,
          { cause: e, ...(e instanceof CubeFSError && e.errno !== undefined ? { errno: e.errno } : {}) });
      } finally {
        mc.close();
      }
      this.writeLayout(this.layout);
    }
  }

  /** DIR/cluster.json, replaced whole; 0600: it names the volume's owner, the credential /client/vol checks. */
  private writeLayout(layout: Layout): void {
    const tmp = this.layoutFile() + '.tmp';
    fs.writeFileSync(tmp, JSON.stringify(layout, null, 2), { mode: 0o600 });
    fs.chmodSync(tmp, 0o600);
    fs.renameSync(tmp, this.layoutFile());
  }

  private nodeDir(role: Role, index: number): string {
    return path.join(this.dir, role === 'datanode' ? `datanode${index + 1}` : role);
  }

  private async startNode(role: Role, index: number, listen: string, peers?: { metanodes: string[]; datanodes: string[] }): Promise<string> {
    const dir = this.nodeDir(role, index);
    makeDirs(dir, 0o700);
    // The nodes' files are every volume's data and metadata: for this user only, also in an older DIR.
    fs.chmodSync(dir, 0o700);
    const run: Running = { role, index, dir, addr: listen, stopping: false };
    if (this.opts.processes === false) {
      const node =
        role === 'master' ? new Master({ dir, listen, secret: this.secret, metanodes: peers!.metanodes, datanodes: peers!.datanodes, ...(this.opts.heartbeatMs ? { heartbeatMs: this.opts.heartbeatMs } : {}) })
        : role === 'metanode' ? new MetaNode({ dir, listen })
        : new DataNode({ dir, listen, ...(this.opts.datanodeCapacity ? { capacityBytes: this.opts.datanodeCapacity } : {}), ...(this.opts.rdma ? { rdma: this.opts.rdma } : {}) });
      run.addr = await node.start();
      run.inproc = node;
    } else {
      const args = [NODE_MAIN, role, '--dir', dir, '--listen', listen];
      if (peers) args.push('--metanodes', peers.metanodes.join(','), '--datanodes', peers.datanodes.join(','));
      if (role === 'master') args.push('--secret-file', secretPath(this.dir));
      if (role === 'datanode' && this.opts.datanodeCapacity) args.push('--capacity', String(this.opts.datanodeCapacity));
      if (role === 'datanode' && this.opts.rdma) args.push('--rdma', this.opts.rdma);
      if (role === 'master' && this.opts.heartbeatMs) args.push('--heartbeat-ms', String(this.opts.heartbeatMs));
      run.args = args;
      run.addr = await this.spawnNode(run, args);
    }
    this.nodes.push(run);
    log('%s%s serving on %s', role, role === 'datanode' ? index + 1 : '', run.addr);
    return run.addr;
  }

  private spawnNode(run: Running, args: string[]): Promise<string> {
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'pipe'], env: process.env });
      run.child = child;
      let stderr = '';
      let ready = false;
      // A node's warnings are the operator's (a torn log cut at start, a full disk): always passed on.
      child.stderr!.on('data', (d: Buffer) => {
        stderr = (stderr + d.toString()).slice(-4000);
        process.stderr.write(d);
      });
      readline.createInterface({ input: child.stdout! }).on('line', (line) => {
        if (ready) return;
        try {
          const msg = JSON.parse(line) as { addr: string };
          ready = true;
          resolve(msg.addr);
        } catch {
          log('%s: %s', run.role, line);
        }
      });
      child.on('exit', (code, signal) => {
        if (!ready) {
          reject(new CubeFSError(ErrorCode.Invalid, `${run.role} failed to start (exit ${code ?? signal}): ${stderr.trim()}`));
          return;
        }
        if (run.stopping || this.stopped || this.opts.supervise === false) return;
        warn('cluster', `${run.role}${run.role === 'datanode' ? run.index + 1 : ''} at ${run.addr} exited (${code ?? signal}); restarting it`);
        void this.restart(run, args);
      });
    });
  }

  /** Starts a node that died again, until it stays up; each failure said, the wait growing to 30 s. */
  private async restart(run: Running, args: string[]): Promise<void> {
    const name = `${run.role}${run.role === 'datanode' ? run.index + 1 : ''}`;
    for (let attempt = 0; !this.stopped && !run.stopping; attempt++) {
      await sleep(Math.min(200 * 2 ** attempt, 30_000));
      if (this.stopped || run.stopping) return;
      const listenAt = args.indexOf('--listen');
      args[listenAt + 1] = run.addr;
      try {
        await this.spawnNode(run, args);
        notice('cluster', `${name} back on ${run.addr}${attempt > 0 ? ` after ${attempt + 1} attempts` : ''}`);
        return;
      } catch (e) {
        warn('cluster', `${name} did not start again (attempt ${attempt + 1}; trying again in ${Math.min(200 * 2 ** (attempt + 1), 30_000) / 1000} s): ${(e as Error).message}`, { key: `restart-${name}`, everyMs: 0 });
      }
    }
  }

  /** An in-process datanode (processes: false), for its counters; undefined in processes mode. */
  datanode(index: number): DataNode | undefined {
    const n = this.nodes.find((x) => x.role === 'datanode' && x.index === index);
    return n?.inproc instanceof DataNode ? n.inproc : undefined;
  }

  /** The process of a node (tests kill it). */
  pid(role: Role, index = 0): number | undefined {
    return this.nodes.find((n) => n.role === role && n.index === index)?.child?.pid;
  }

  /** Start a node process again that was killed without supervision (same address, same data). */
  async revive(role: Role, index = 0): Promise<void> {
    const n = this.nodes.find((x) => x.role === role && x.index === index);
    if (!n?.child || !n.args) throw new CubeFSError(ErrorCode.Invalid, `no ${role} ${index} process to revive`);
    if (n.child.exitCode === null && n.child.signalCode === null) throw new CubeFSError(ErrorCode.Invalid, `${role} ${index} is still running`);
    const args = [...n.args];
    args[args.indexOf('--listen') + 1] = n.addr;
    await this.spawnNode(n, args);
  }

  /** Send a signal to a node process; with supervision on, it comes back by itself. */
  kill(role: Role, index = 0, signal: NodeJS.Signals = 'SIGKILL'): void {
    const n = this.nodes.find((x) => x.role === role && x.index === index);
    if (!n?.child) throw new CubeFSError(ErrorCode.Invalid, `no ${role} ${index} process to kill`);
    n.child.kill(signal);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    // Reverse order of start: master first, then data and meta nodes.
    for (const n of [...this.nodes].reverse()) {
      n.stopping = true;
      if (n.inproc) await n.inproc.stop();
      else if (n.child && n.child.exitCode === null && n.child.signalCode === null) {
        const done = new Promise<void>((r) => n.child!.once('exit', () => r()));
        n.child.kill('SIGTERM');
        const t = setTimeout(() => n.child!.kill('SIGKILL'), 5000);
        await done;
        clearTimeout(t);
      }
    }
  }
}

/** Whether the master knows volume `name` (getVol: VolNotExists is no). */
async function volumeExists(mc: MasterClient, name: string): Promise<boolean> {
  try {
    await mc.get('/admin/getVol', { name });
    return true;
  } catch (e) {
    if (e instanceof CubeFSError && e.code === ErrorCode.VolNotExist) return false;
    throw e;
  }
}
