/**
 * Which datanode a data request goes to, and how it moves on when that one will not serve it: upstream's
 * rules (sdk/data/stream/stream_conn.go, datanode wrap_operator.go), which a real cluster enforces.
 *
 * - StreamRead and RandomWrite are served by the partition's raft leader (LeaderAddr in /client/partitions),
 *   which is not always Hosts[0]; any other replica answers TryOtherAddr ("raft is not the leader") and
 *   closes the connection. A RandomWrite goes with RemainingFollowers 0 and no Arg: the leader replicates
 *   it itself.
 * - Appends (CreateExtent, Write, tiny writes) go to Hosts[0] with the followers in Arg.
 * - Follower read (the `followerRead` option, or a volume with FollowerRead): StreamFollowerRead, served by
 *   any replica, spread over the healthy ones round robin; with `nearRead` the nearest healthy one first.
 *
 * When the host tried answers TryOtherAddr or cannot be reached, the request goes on to the partition's
 * other hosts at once (healthy ones first), with no sleep in between, while the partition view is
 * refreshed in the background; the host that serves a leader request is remembered as the leader until the
 * view says otherwise. Only a round in which no host served it costs a sleep (growing, 100 ms to 2 s) and
 * a refresh before the next.
 */
import net from 'node:net';
import os from 'node:os';
import type { DataPartitionView } from '../proto/index.js';
import { Result } from '../proto/index.js';
import { CubeFSError, ErrorCode, sleep } from '../util/errors.js';
import { splitAddr } from '../transport/tcp.js';
import { backoffMs, log, type DataCore } from './partitions.js';

/** A host that could not be reached is tried after the others for this long. */
const HOST_DOWN_MS = 10_000;

export interface RouteOptions {
  /** Reads with StreamFollowerRead from any replica (upstream's followerRead). */
  followerRead?: boolean;
  /** With followerRead: the nearest replica first (upstream's nearRead). */
  nearRead?: boolean;
}

/** What a failed attempt means for the request. */
export type Verdict =
  /** Try the next host now (TryOtherAddr, unreachable, a dead connection). */
  | 'next'
  /** Nobody can serve it now: sleep, refresh, try again while the budget lasts (Again, Err, ...). */
  | 'later'
  /** Give up: the error is the answer (NotExist, ArgMismatch, ...). */
  | 'final';

export class Router {
  followerRead: boolean;
  readonly nearRead: boolean;
  /** Leaders learned from answers: partition -> the leader, and the view's LeaderAddr it overrides. */
  private readonly leaders = new Map<number, { addr: string; viewLeader: string }>();
  private readonly downUntil = new Map<string, number>();
  private epoch = Math.floor(Math.random() * 1024);
  private localIps: string[] | null = null;
  /** TryOtherAddr answers, requests served by another host than the first tried, rounds that had to sleep. */
  readonly counters = { tryOtherAddr: 0, failovers: 0, backoffs: 0 };

  constructor(opts: RouteOptions = {}) {
    this.followerRead = opts.followerRead ?? false;
    this.nearRead = opts.nearRead ?? false;
  }

  /** The partition's leader as far as this client knows. */
  leaderOf(dp: DataPartitionView): string {
    const hint = this.leaders.get(dp.PartitionID);
    const viewLeader = dp.LeaderAddr ?? '';
    if (hint && hint.viewLeader === viewLeader && dp.Hosts.includes(hint.addr)) return hint.addr;
    if (hint) this.leaders.delete(dp.PartitionID);
    return viewLeader !== '' ? viewLeader : dp.Hosts[0] ?? '';
  }

  /** `addr` served a leader-only request of `dp`. */
  servedAsLeader(dp: DataPartitionView, addr: string): void {
    if (addr === (dp.LeaderAddr ?? '')) this.leaders.delete(dp.PartitionID);
    else this.leaders.set(dp.PartitionID, { addr, viewLeader: dp.LeaderAddr ?? '' });
  }

  hostDown(addr: string): void {
    this.downUntil.set(addr, Date.now() + HOST_DOWN_MS);
  }

  hostUp(addr: string): void {
    this.downUntil.delete(addr);
  }

  isUp(addr: string): boolean {
    const t = this.downUntil.get(addr);
    if (t === undefined) return true;
    if (t > Date.now()) return false;
    this.downUntil.delete(addr);
    return true;
  }

  /** Hosts in Hosts order, the healthy ones first (upstream's sortByStatus with selectAll). */
  byStatus(dp: DataPartitionView): string[] {
    const hosts = this.nearRead && this.followerRead ? this.nearest(dp.Hosts) : dp.Hosts;
    return [...hosts.filter((h) => this.isUp(h)), ...hosts.filter((h) => !this.isUp(h))];
  }

  /** The first host of a follower read: the nearest healthy one (nearRead), else round robin. */
  followerHost(dp: DataPartitionView): string {
    const up = this.byStatus(dp).filter((h) => this.isUp(h));
    if (up.length === 0) return dp.Hosts[0] ?? '';
    if (this.nearRead) return up[0]!;
    return up[this.epoch++ % up.length]!;
  }

  /** Hosts by distance from this machine: same address first, then the longest common IPv4 prefix. */
  private nearest(hosts: string[]): string[] {
    this.localIps ??= Object.values(os.networkInterfaces()).flat().filter((i) => i && i.family === 'IPv4').map((i) => i!.address);
    const distance = (h: string): number => {
      let ip: string;
      try { ip = splitAddr(h).host; } catch { return 5; }
      if (!net.isIPv4(ip)) return 5;
      const a = ip.split('.');
      let best = 4;
      for (const l of this.localIps!) {
        const b = l.split('.');
        let same = 0;
        while (same < 4 && a[same] === b[same]) same++;
        best = Math.min(best, 4 - same);
      }
      return best;
    };
    return [...hosts].sort((x, y) => distance(x) - distance(y));
  }
}

/** How an error from one host counts (see Verdict). */
export function verdictOf(e: unknown): Verdict {
  if (!(e instanceof CubeFSError)) return 'later';
  if (e.code === ErrorCode.Network || e.code === ErrorCode.Timeout) return 'next';
  if (e.code === ErrorCode.Closed || e.code === ErrorCode.Invalid) return 'final';
  if (e.result === Result.TryOtherAddr) return 'next';
  return e.retryable ? 'later' : 'final';
}

export interface PartitionRequest<T> {
  pid: number;
  /** Said in logs and errors. */
  what: string;
  /** Epoch ms: retried until then. */
  deadline: number;
  /** The first host of each round; default the partition's leader. */
  first?: (dp: DataPartitionView) => string;
  /** One attempt on one host. */
  attempt: (host: string, dp: DataPartitionView) => Promise<T>;
  /** How a failure counts; default verdictOf. */
  judge?: (e: unknown, host: string) => Verdict;
  /** The host that served it (default: remembered as the leader). */
  served?: (host: string, dp: DataPartitionView) => void;
}

/**
 * One request to a partition, host after host as upstream's StreamConn sends it (see the header). Throws
 * the last failure once the deadline has passed or a failure is final.
 */
export async function toPartition<T>(core: DataCore, r: PartitionRequest<T>): Promise<T> {
  const judge = r.judge ?? verdictOf;
  let lastErr: unknown;
  for (let round = 0; ; round++) {
    const tried = new Set<string>();
    let refreshing: Promise<void> | null = null;
    for (;;) {
      // The latest view each time: a refresh started by a TryOtherAddr may have named the new leader.
      const dp = await core.parts.get(r.pid);
      const first = (r.first ?? ((v) => core.route.leaderOf(v)))(dp);
      const host = !tried.has(first) && first !== '' ? first : core.route.byStatus(dp).find((h) => !tried.has(h));
      if (host === undefined) break;
      tried.add(host);
      try {
        const out = await r.attempt(host, dp);
        if (tried.size > 1 || round > 0) core.route.counters.failovers++;
        core.route.hostUp(host);
        (r.served ?? ((h, v) => core.route.servedAsLeader(v, h)))(host, dp);
        return out;
      } catch (e) {
        lastErr = e;
        const v = judge(e, host);
        log('%s on %s: %s (%s)', r.what, host, (e as Error).message, v);
        if (v === 'final') throw e;
        if (v === 'later') break;
        if (e instanceof CubeFSError && e.result === Result.TryOtherAddr) {
          core.route.counters.tryOtherAddr++;
          refreshing ??= core.parts.refresh().catch((x: Error) => log('refresh after TryOtherAddr: %s', x.message));
        }
      }
    }
    if (Date.now() >= r.deadline) throw lastErr ?? new CubeFSError(ErrorCode.Timeout, `${r.what}: retry budget spent`, { retryable: true });
    core.route.counters.backoffs++;
    await sleep(Math.max(1, Math.min(backoffMs(round), r.deadline - Date.now())));
    await (refreshing ?? core.parts.refresh()).catch((x: Error) => log('refresh data partitions: %s', x.message));
  }
}
