/**
 * npm run bench:table [-- --out DIR] [--doc DIR]
 *
 * The table of the issue "Be a true CubeFS client on a real cluster", measured on the embedded cluster
 * (child processes, 3 replicas over TCP) through a mount, beside the figures upstream's client (cfs-client)
 * had on a real cluster (from the issue; not measured here). Prints the table and writes
 * bench-results/upstream-table-<timestamp>.json with every raw number (fio's JSON, the latencies).
 *
 * Rows: overwrite 4 KiB + fsync (latency); a cold read of 4 KiB files (latency, through a fresh mount);
 * 4 KiB random reads QD 16 and 1 MiB sequential reads by 4 jobs (direct); 4 KiB random direct writes at
 * QD 1 in an 8 MiB file written before and into a new sparse 1 GiB file, with the connections the datanodes
 * accepted per 1,000 writes; diff -r of a copy of --doc (default /usr/share/doc) through a fresh mount; an
 * empty file truncated up, stat from a fresh mount; O_DIRECT writes visible to another client before close;
 * the extent keys of a 5 MiB file written in 1 MiB writes.
 */
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { sumDataNodeStats } from '../src/cluster/probe.js';
import { CubeFSClient } from '../src/sdk/client.js';
import { argValue } from './args.js';
import { mountAgain, startMount, type ClusterHandle, type Target } from './targets.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const MiB = 1 << 20;
const PY = process.env.CUBEFS_BENCH_PYTHON ?? '/usr/bin/python3';

interface Row {
  what: string;
  ours: string;
  upstream: string;
  raw: unknown;
}

function sh(cmd: string): SpawnSyncReturns<string> {
  const r = spawnSync('bash', ['-euo', 'pipefail', '-c', cmd], { encoding: 'utf8', maxBuffer: 256 * MiB });
  if (r.status !== 0) throw new Error(`${cmd.slice(0, 120)}: exit ${r.status}: ${r.stderr.slice(-1500)}`);
  return r;
}

function fio(args: string[]): { read: { iops: number; bw_bytes: number }; write: { iops: number; bw_bytes: number } } {
  const r = spawnSync('fio', [...args, '--output-format=json'], { encoding: 'utf8', maxBuffer: 64 * MiB });
  if (r.status !== 0) throw new Error(`fio ${args.join(' ')}: ${r.stderr.slice(-1500)}`);
  const j = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: { error: number; read: never; write: never }[] };
  if (j.jobs[0]!.error !== 0) throw new Error(`fio job error ${j.jobs[0]!.error}`);
  return j.jobs[0]!;
}

/** Latencies (ms) of a python loop, each iteration timed: mean, p50, p99. */
function pyLatencies(code: string): { n: number; meanMs: number; p50Ms: number; p99Ms: number } {
  const r = spawnSync(PY, ['-c', `import os, sys, time, random\nlat = []\n${code}\nprint(' '.join(str(x) for x in lat))`], { encoding: 'utf8', maxBuffer: 64 * MiB });
  if (r.status !== 0) throw new Error(`python: ${r.stderr.slice(-1500)}`);
  const lat = r.stdout.trim().split(/\s+/).map(Number).sort((a, b) => a - b);
  const q = (p: number): number => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))]!;
  return { n: lat.length, meanMs: lat.reduce((a, b) => a + b, 0) / lat.length, p50Ms: q(0.5), p99Ms: q(0.99) };
}

const f1 = (n: number): string => n.toFixed(1);
const f0 = (n: number): string => Math.round(n).toLocaleString('en-US');

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const out = path.resolve(argValue(argv, '--out') ?? path.join(ROOT, 'bench-results'));
  const doc = argValue(argv, '--doc') ?? '/usr/share/doc';
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'cubefs-table-'));
  const rows: Row[] = [];
  const targets: Target[] = [];
  let cluster: ClusterHandle | null = null;
  const t0 = Date.now();
  try {
    const started = await startMount(work, false);
    cluster = started.cluster;
    targets.push(started.target);
    if (!started.target.dir || !cluster) throw new Error(started.target.error ?? 'no mount');
    const mnt = started.target.dir;
    const info = cluster.info as { master: string; vol: string; owner: string; datanodes: string[] };
    const sdk = await CubeFSClient.connect({ masters: info.master, vol: info.vol, owner: info.owner });
    const dn = (): ReturnType<typeof sumDataNodeStats> => sumDataNodeStats(info.datanodes);
    const say = (r: Row): void => { rows.push(r); console.log(`${r.what}: ${r.ours}   (upstream's client: ${r.upstream})`); };

    // 1. overwrite 4 KiB inside an existing file, then fsync
    sh(`head -c ${8 * MiB} /dev/urandom > ${mnt}/ow`);
    const ow = pyLatencies(`fd = os.open('${mnt}/ow', os.O_RDWR)\nb = os.urandom(4096)\nfor i in range(300):\n    t = time.perf_counter(); os.pwrite(fd, b, random.randrange(2048) * 4096); os.fsync(fd); lat.append((time.perf_counter() - t) * 1000)\nos.close(fd)`);
    say({ what: 'overwrite 4 KiB inside an existing file, then fsync (mean / p99)', ours: `${f1(ow.meanMs)} / ${f1(ow.p99Ms)} ms`, upstream: '1.5-8 ms', raw: ow });

    // 2. a cold read of 4 KiB files (each: open, read, close), through a fresh mount
    sh(`mkdir ${mnt}/small && for i in $(seq 1 500); do head -c 4096 /dev/urandom > ${mnt}/small/f$i; done`);
    const cold = await mountAgain(work, cluster, 'cold1');
    targets.push(cold);
    if (!cold.dir) throw new Error(cold.error ?? 'no cold mount');
    const before = await dn();
    const rd = pyLatencies(`for i in range(1, 501):\n    t = time.perf_counter()\n    with open('${cold.dir}/small/f%d' % i, 'rb') as f: f.read()\n    lat.append((time.perf_counter() - t) * 1000)`);
    const rdN = await dn();
    say({ what: 'read a 4 KiB file, cold (mean / p99)', ours: `${f1(rd.meanMs)} / ${f1(rd.p99Ms)} ms (${rdN.notLeader - before.notLeader} TryOtherAddr, ${rdN.reads - before.reads} reads for 500 files)`, upstream: '2.1 / 4.0 ms', raw: { ...rd, datanodes: { before, after: rdN } } });

    // 3-4. reads, direct
    sh(`head -c ${256 * MiB} /dev/urandom > ${mnt}/rd`);
    const rr = fio([`--name=rr`, `--filename=${mnt}/rd`, '--size=256m', '--rw=randread', '--bs=4k', '--direct=1', '--ioengine=libaio', '--iodepth=16', '--runtime=15', '--time_based', '--ramp_time=2']);
    say({ what: '4 KiB random read, QD 16, direct', ours: `${f0(rr.read.iops)} IOPS`, upstream: '1,029-1,106 IOPS', raw: rr });
    const sr = fio([`--name=sr`, `--filename=${mnt}/rd`, '--size=256m', '--rw=read', '--bs=1m', '--direct=1', '--ioengine=psync', '--numjobs=4', '--group_reporting=1', '--runtime=15', '--time_based']);
    say({ what: '1 MiB sequential read, 4 jobs, direct', ours: `${f0(sr.read.bw_bytes / MiB)} MiB/s`, upstream: '192-237 MiB/s', raw: sr });

    // 5. random direct writes in an 8 MiB file written before (they land on written blocks)
    sh(`head -c ${8 * MiB} /dev/urandom > ${mnt}/w8`);
    const w8 = fio([`--name=w8`, `--filename=${mnt}/w8`, '--size=8m', '--rw=randwrite', '--bs=4k', '--direct=1', '--ioengine=psync', '--runtime=15', '--time_based']);
    say({ what: '4 KiB random writes, direct, QD 1, in an 8 MiB file', ours: `${f0(w8.write.iops)} IOPS`, upstream: '694 IOPS', raw: w8 });

    // 6. into a new sparse 1 GiB file; connections the datanodes accepted per 1,000 writes
    sh(`truncate -s 1G ${mnt}/sparse`);
    const c0 = await dn();
    const sp = fio([`--name=sp`, `--filename=${mnt}/sparse`, '--size=1g', '--rw=randwrite', '--bs=4k', '--direct=1', '--ioengine=psync', '--number_ios=3000']);
    const c1 = await dn();
    const per1000 = ((c1.accepted - c0.accepted) / 3000) * 1000;
    say({ what: '4 KiB random writes, direct, QD 1, into a new sparse 1 GiB file', ours: `${f0(sp.write.iops)} IOPS, ${f1(per1000)} connections per 1,000 writes`, upstream: '307-347 IOPS, pooled connections', raw: { fio: sp, datanodes: { before: c0, after: c1 } } });

    // 7. diff -r of a copy, read through a fresh mount
    const entries = Number(sh(`find ${doc} | wc -l`).stdout.trim());
    sh(`cp -r ${doc} ${mnt}/doc`);
    const cold2 = await mountAgain(work, cluster, 'cold2');
    targets.push(cold2);
    if (!cold2.dir) throw new Error(cold2.error ?? 'no cold mount');
    const d0 = Date.now();
    sh(`diff -r --no-dereference ${doc} ${cold2.dir}/doc`);
    const diffS = (Date.now() - d0) / 1000;
    say({ what: `diff -r of a copy of ${doc} (${f0(entries)} entries) through a fresh mount`, ours: `${f1(diffS)} s`, upstream: '15 s (6,567 entries)', raw: { entries, seconds: diffS } });

    // 8. truncate an empty file up, stat from a fresh mount
    sh(`: > ${mnt}/grown && truncate -s 1234567 ${mnt}/grown`);
    const cold3 = await mountAgain(work, cluster, 'cold3');
    targets.push(cold3);
    const size = fs.statSync(path.join(cold3.dir!, 'grown')).size;
    say({ what: 'create empty, truncate to 1,234,567, stat from a fresh mount', ours: f0(size), upstream: '0 once its cache expires', raw: size });

    // 9. O_DIRECT writes visible to another client while the writer still holds the file open
    const py = spawn(PY, ['-c', `import mmap, os, sys\nfd = os.open('${mnt}/direct', os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)\nb = mmap.mmap(-1, 4096)\nos.write(fd, b)\nprint('ok', flush=True)\nsys.stdin.readline()\nos.close(fd)`], { stdio: ['pipe', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      py.stdout!.on('data', (d: Buffer) => { if (d.toString().includes('ok')) resolve(); });
      py.on('exit', (code) => reject(new Error(`python exited ${code} before writing`)));
    });
    const seen = (await sdk.meta.listExtents(await sdk.resolve('/direct'))).size;
    py.stdin!.end('\n');
    say({ what: 'O_DIRECT writes recorded at the metanode', ours: seen === 4096 ? 'after each write' : `not before close (size ${seen})`, upstream: 'after each write', raw: seen });

    // 10. extent keys of a 5 MiB file written in 1 MiB writes
    sh(`dd if=/dev/urandom of=${mnt}/five bs=1M count=5 status=none`);
    const keys = (await sdk.meta.listExtents(await sdk.resolve('/five'))).extents;
    say({ what: 'extent keys of a 5 MiB file written in 1 MiB writes', ours: `${keys.length} (${keys.filter((k) => k.ExtentId <= 64).length} tiny)`, upstream: '2 (1 tiny)', raw: keys });
    await sdk.close();
  } finally {
    for (const t of targets.reverse()) await t.stop().catch(() => undefined);
    await cluster?.stop().catch(() => undefined);
    fs.rmSync(work, { recursive: true, force: true });
  }
  fs.mkdirSync(out, { recursive: true });
  const file = path.join(out, `upstream-table-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(file, JSON.stringify({ when: new Date().toISOString(), seconds: (Date.now() - t0) / 1000, cores: os.cpus().length, kernel: os.release(), node: process.version, rows }, null, 2));
  console.log(`\n| what | this client, embedded cluster | upstream's client, real cluster (the issue) |\n|---|---|---|`);
  for (const r of rows) console.log(`| ${r.what} | ${r.ours} | ${r.upstream} |`);
  console.log(`\nresults: ${file}`);
}

main().catch((e: Error) => {
  console.error(`bench:table: ${e.stack ?? e.message}`);
  process.exit(1);
});
