/**
 * RDMA against TCP through a FUSE mount, inside the RDMA VM (npm run bench:rdma boots it and runs this).
 *
 * One embedded cluster on $RXE_IP (node processes; datanodes serve TCP and RDMA on the same port number),
 * two mounts of the same volume: one with rdma 'off', one with rdma 'on'. For 4 KiB, 128 KiB and 1 MiB,
 * buffered and direct, write then read: a short time_based fio run (psync, one job, a small file) on each
 * mount, repeated --reps times with the order of TCP and RDMA alternating (each repetition on new files).
 * Prints a table of medians (MB/s, RDMA/TCP) and writes bench-results/rdma-vm-<ts>.json with every figure
 * and the mounts' counters. Soft-RoCE is RDMA in software: the point is the client and datanode work per
 * request (sends per request, copies, JS work), not the wire.
 *
 *   node dist/bench/rdma-vm.js [--runtime S] [--size MB] [--bs 4k,128k,1m] [--reps N]
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { EmbeddedCluster } from '../src/cluster/launcher.js';
import { rdmaDevices } from '../src/transport/rdma.js';
import { mountRdma, runAsync, type MountEnd, type RdmaMount } from '../test/rdma-vm/support.js';

const IP = process.env.RXE_IP ?? '192.0.2.1';

interface Row {
  bs: string;
  mode: 'buffered' | 'direct';
  rw: 'write' | 'read';
  /** Medians over the repetitions. */
  tcpMBs: number | null;
  rdmaMBs: number | null;
  ratio: number | null;
  tcpRuns: number[];
  rdmaRuns: number[];
  errors?: string[];
}

async function fio(dir: string, file: string, rw: 'write' | 'read', bs: string, direct: boolean, sizeMB: number, runtime: number): Promise<{ mbs: number | null; err?: string }> {
  const args = [`--name=b`, `--directory=${dir}`, `--filename=${file}`, `--rw=${rw}`, `--bs=${bs}`, `--size=${sizeMB}m`,
    '--ioengine=psync', `--direct=${direct ? 1 : 0}`, '--time_based', `--runtime=${runtime}`, '--output-format=json'];
  if (rw === 'write') args.push('--end_fsync=1', '--fsync_on_close=1');
  const r = await runAsync('fio', args, (runtime + 120) * 1000);
  if (r.status !== 0) return { mbs: null, err: r.out.slice(-500) };
  try {
    const j = JSON.parse(r.out.slice(r.out.indexOf('{'), r.out.lastIndexOf('}') + 1)) as { jobs: { read: { bw_bytes: number }; write: { bw_bytes: number } }[] };
    return { mbs: j.jobs[0]![rw].bw_bytes / 1e6 };
  } catch (e) {
    return { mbs: null, err: `fio output: ${(e as Error).message}` };
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { runtime: { type: 'string', default: '6' }, size: { type: 'string', default: '32' }, bs: { type: 'string', default: '4k,128k,1m' }, reps: { type: 'string', default: '3' } } });
  const runtime = Number(values.runtime), sizeMB = Number(values.size), reps = Math.max(1, Number(values.reps));
  const sizes = values.bs!.split(',');
  if (rdmaDevices().length === 0) throw new Error('no RDMA device: run this inside the RDMA VM (npm run bench:rdma)');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cubefs-bench-rdma-'));
  const rows: Row[] = [];
  const counters: { bs: string; mode: string; tcp: MountEnd | null; rdma: MountEnd | null }[] = [];
  try {
    for (const bs of sizes) {
      for (const mode of ['buffered', 'direct'] as const) {
        // A fresh cluster per bs and mode: the runs write new files each time and the VM's /tmp is RAM.
        const cdir = path.join(dir, `${bs}-${mode}`);
        const cluster = await EmbeddedCluster.start({ dir: path.join(cdir, 'cluster'), host: IP, masterPort: 0, processes: true, heartbeatMs: 1000 });
        const mounts: Record<'tcp' | 'rdma', RdmaMount | null> = { tcp: null, rdma: null };
        const ends: { tcp: MountEnd | null; rdma: MountEnd | null } = { tcp: null, rdma: null };
        try {
          mounts.tcp = await mountRdma(path.join(cdir, 'tcp'), cluster.masterAddr, cluster.vol, cluster.owner, 'off');
          mounts.rdma = await mountRdma(path.join(cdir, 'rdma'), cluster.masterAddr, cluster.vol, cluster.owner, 'on', 256);
          for (const rw of ['write', 'read'] as const) rows.push(await cell(mounts, bs, mode, rw));
        } finally {
          for (const k of ['tcp', 'rdma'] as const) ends[k] = (await mounts[k]?.stop().catch(() => null)) ?? null;
          await cluster.stop();
          fs.rmSync(cdir, { recursive: true, force: true });
        }
        counters.push({ bs, mode, ...ends });
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }

  /** One row: `reps` fio runs per transport, alternating which goes first; medians. */
  async function cell(mounts: Record<'tcp' | 'rdma', RdmaMount | null>, bs: string, mode: 'buffered' | 'direct', rw: 'write' | 'read'): Promise<Row> {
    const row: Row = { bs, mode, rw, tcpMBs: null, rdmaMBs: null, ratio: null, tcpRuns: [], rdmaRuns: [] };
    for (let rep = 0; rep < reps; rep++) {
      // alternate who goes first, so a slow phase of the VM does not always land on the same transport
      for (const kind of rep % 2 === 0 ? (['tcp', 'rdma'] as const) : (['rdma', 'tcp'] as const)) {
        const r = await fio(mounts[kind]!.mnt, `${kind}-${rep}`, rw, bs, mode === 'direct', sizeMB, runtime);
        if (r.err) (row.errors ??= []).push(`${kind}: ${r.err}`);
        if (r.mbs !== null) (kind === 'tcp' ? row.tcpRuns : row.rdmaRuns).push(r.mbs);
      }
    }
    row.tcpMBs = median(row.tcpRuns);
    row.rdmaMBs = median(row.rdmaRuns);
    row.ratio = row.tcpMBs && row.rdmaMBs ? row.rdmaMBs / row.tcpMBs : null;
    process.stdout.write(`${bs.padStart(5)} ${mode.padEnd(8)} ${rw.padEnd(5)}  TCP ${fmt(row.tcpMBs)} MB/s  RDMA ${fmt(row.rdmaMBs)} MB/s  ratio ${row.ratio?.toFixed(2) ?? '-'}${row.errors ? `  errors: ${row.errors.join(' | ').slice(0, 300)}` : ''}\n`);
    return row;
  }
  const lines = [`| bs | mode | op | TCP MB/s | RDMA MB/s | RDMA/TCP | RDMA/TCP per repetition (${reps}) |`, '|---|---|---|---:|---:|---:|---|'];
  for (const r of rows) {
    const per = r.tcpRuns.map((x, i) => (r.rdmaRuns[i] !== undefined && x > 0 ? (r.rdmaRuns[i]! / x).toFixed(2) : '-')).join(', ');
    lines.push(`| ${r.bs} | ${r.mode} | ${r.rw} | ${fmt(r.tcpMBs)} | ${fmt(r.rdmaMBs)} | ${r.ratio?.toFixed(2) ?? '-'} | ${per} |`);
  }
  console.log('\n' + lines.join('\n'));
  for (const c of counters) {
    for (const k of ['tcp', 'rdma'] as const) console.log(`${c.bs} ${c.mode} ${k} mount counters: ${JSON.stringify(c[k]?.stats ?? null)}; pool in use at the end: ${c[k]?.pool?.inUseBytes ?? '-'}`);
  }
  const out = path.join(process.cwd(), 'bench-results');
  fs.mkdirSync(out, { recursive: true });
  const file = path.join(out, `rdma-vm-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(file, JSON.stringify({ when: new Date().toISOString(), host: IP, device: rdmaDevices()[0]?.name, runtime, sizeMB, reps, rows, counters }, null, 2));
  console.log(`\nwrote ${path.relative(process.cwd(), file)}`);
}

function median(xs: number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function fmt(n: number | null): string {
  return n === null ? '-' : n >= 100 ? n.toFixed(0) : n >= 1 ? n.toFixed(1) : n.toFixed(3);
}

main().catch((e: Error) => {
  console.error(`bench:rdma: ${e.stack ?? e.message}`);
  process.exit(1);
});
