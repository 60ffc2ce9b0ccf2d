/**
 * The workloads: fio jobs (run synchronously, JSON output) and the PyTorch checkpoint script. Each one runs
 * in a target's directory and gives named metrics plus the raw numbers it came from.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TargetId } from './targets.js';

const MiB = 1 << 20;
export const TORCH_SCRIPT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bench/torch_ckpt.py');
export const PYTHON = process.env.CUBEFS_BENCH_PYTHON ?? '/usr/bin/python3';

export type Unit = 'MB/s' | 'IOPS' | 'µs';

export interface Metric {
  key: string;
  label: string;
  unit: Unit;
  higherIsBetter: boolean;
}

export interface Sizes {
  /** Bytes per job for the sequential jobs, and their time cap (s). */
  seqPerJob: number;
  seqCap: number;
  /** Random jobs: file size, run time and ramp (s). */
  randSize: number;
  randRuntime: number;
  randRamp: number;
  /** fdatasync job: run time and ramp (s). */
  syncRuntime: number;
  syncRamp: number;
  /** Checkpoint size (MiB). */
  torchMiB: number;
}

export const FULL: Sizes = {
  seqPerJob: 512 * MiB, seqCap: 20, randSize: 256 * MiB, randRuntime: 15, randRamp: 3,
  syncRuntime: 15, syncRamp: 2, torchMiB: 1024,
};
export const QUICK: Sizes = {
  seqPerJob: 64 * MiB, seqCap: 5, randSize: 32 * MiB, randRuntime: 3, randRamp: 1,
  syncRuntime: 3, syncRamp: 1, torchMiB: 128,
};

export interface Ctx {
  sizes: Sizes;
  /** Where fio's JSON goes (a scratch dir outside the targets). */
  scratch: string;
}

export interface CellOutcome {
  metrics: Record<string, number>;
  /** Untimed preparation: files brought to their size before fio (bytes written, seconds). */
  prep?: { bytes: number; seconds: number };
  /** The raw numbers: fio's job JSON, the torch script's output. */
  raw: unknown;
  command?: string[];
}

export interface Workload {
  id: string;
  title: string;
  metrics: Metric[];
  /** Why this workload means nothing on this target (the cell is reported n/a), or null. */
  notApplicable?(target: TargetId): string | null;
  run(ctx: Ctx, dir: string, target: TargetId): CellOutcome;
}

// ---- fio ----

export function fioVersion(): string | null {
  const r = spawnSync('fio', ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

interface FioJob {
  jobname: string;
  error: number;
  read: FioDir;
  write: FioDir;
  sync?: { total_ios: number; lat_ns: FioLat };
  job_runtime: number;
  [k: string]: unknown;
}
interface FioLat { min: number; max: number; mean: number; N?: number; percentile?: Record<string, number> }
interface FioDir { io_bytes: number; bw_bytes: number; iops: number; runtime: number; clat_ns: FioLat; lat_ns: FioLat; total_ios: number }

function runFio(ctx: Ctx, name: string, dir: string, opts: Record<string, string | number>, timeoutS: number): { job: FioJob; command: string[]; version: string } {
  const out = path.join(ctx.scratch, `${name}-${Date.now()}.json`);
  const args = [
    `--name=${name}`, `--directory=${dir}`, '--output-format=json', `--output=${out}`, '--group_reporting=1',
    '--fallocate=none', ...Object.entries(opts).map(([k, v]) => `--${k}=${v}`),
  ];
  const r = spawnSync('fio', args, { encoding: 'utf8', timeout: timeoutS * 1000, killSignal: 'SIGKILL', maxBuffer: 16 * MiB });
  if (r.error) {
    const e = r.error as NodeJS.ErrnoException;
    throw new Error(e.code === 'ENOENT' ? 'fio is not installed (./scripts/setup.sh installs it)'
      : e.code === 'ETIMEDOUT' ? `fio did not finish within ${timeoutS} s (killed)` : e.message);
  }
  let text = '';
  try {
    text = fs.readFileSync(out, 'utf8');
  } catch {
    // no output file: the error is on stderr
  }
  const brace = text.indexOf('{');
  if (r.status !== 0 || brace < 0) {
    const why = (r.stderr || r.stdout || '').trim().split('\n').slice(-4).join(' | ');
    throw new Error(`fio exited ${r.status ?? r.signal}: ${why || '(no message)'}`);
  }
  const json = JSON.parse(text.slice(brace)) as { 'fio version': string; jobs: FioJob[] };
  const job = json.jobs[0];
  if (!job) throw new Error('fio gave no job results');
  if (job.error) throw new Error(`fio job error ${job.error}: ${(r.stderr || '').trim().split('\n').slice(-2).join(' | ')}`);
  fs.rmSync(out, { force: true });
  return { job, command: ['fio', ...args], version: json['fio version'] };
}

/** Removes the files a job family left in the target dir (fresh appends, not overwrites). */
function removeFiles(dir: string, prefix: string): void {
  for (const f of fs.readdirSync(dir)) if (f.startsWith(prefix)) fs.rmSync(path.join(dir, f), { force: true, recursive: true });
}

/**
 * Brings `file` to `size` bytes with 1 MiB writes (appending only what is missing), so a read job or an
 * overwrite job finds its file complete. Otherwise fio lays it out itself with writes of the job's block
 * size: 4 KiB for the random jobs, which on a FUSE mount costs far more than the measurement.
 */
function ensureFiles(files: string[], size: number): { bytes: number; seconds: number } {
  const t0 = Date.now();
  let bytes = 0;
  const buf = randomBytes(MiB);
  for (const file of files) {
    let have = 0;
    try {
      have = fs.statSync(file).size;
    } catch {
      // missing: written from 0
    }
    if (have >= size) continue;
    const fd = fs.openSync(file, have > 0 ? 'r+' : 'w');
    try {
      for (let off = have; off < size; off += MiB) fs.writeSync(fd, buf, 0, Math.min(MiB, size - off), off);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    bytes += size - have;
  }
  return { bytes, seconds: (Date.now() - t0) / 1000 };
}

const pct = (l: FioLat | undefined, p: string): number => {
  const v = l?.percentile?.[p];
  if (v === undefined) throw new Error(`fio gave no ${p} percentile`);
  return v / 1000;
};

function seq(rw: 'write' | 'read', jobs: 1 | 4, direct: boolean): Workload {
  const id = `seq-${rw}${direct ? '-direct' : ''}-j${jobs}`;
  return {
    id,
    title: `1 MiB sequential ${rw}, ${jobs} job${jobs > 1 ? 's' : ''}, ${direct ? 'direct=1' : 'buffered'}`,
    metrics: [{ key: 'bw', label: 'MB/s', unit: 'MB/s', higherIsBetter: true }],
    run(ctx, dir) {
      const s = ctx.sizes;
      if (rw === 'write') removeFiles(dir, 'seq.');
      // A capped write job may have left its files short: complete them, untimed.
      const prep = rw === 'read' ? ensureFiles(Array.from({ length: jobs }, (_, j) => path.join(dir, `seq.${j}.0`)), s.seqPerJob) : undefined;
      const { job, command } = runFio(ctx, id, dir, {
        ioengine: 'psync', rw, bs: '1m', size: s.seqPerJob, numjobs: jobs, direct: direct ? 1 : 0,
        runtime: s.seqCap, filename_format: 'seq.$jobnum.$filenum',
        ...(rw === 'write' ? { end_fsync: 1 } : {}),
      }, s.seqCap * 4 + 300);
      const d = job[rw];
      if (!d.io_bytes) throw new Error('fio moved no data');
      return { metrics: { bw: d.bw_bytes / 1e6 }, raw: job, command, ...(prep ? { prep } : {}) };
    },
  };
}

function rand(rw: 'randread' | 'randwrite'): Workload {
  const id = rw === 'randread' ? 'rand-read-4k' : 'rand-write-4k';
  return {
    id,
    title: `4 KiB random ${rw === 'randread' ? 'read' : 'write'}, libaio iodepth 16, direct=1`,
    metrics: [{ key: 'iops', label: 'IOPS', unit: 'IOPS', higherIsBetter: true }],
    run(ctx, dir) {
      const s = ctx.sizes;
      // The file is complete before the job (untimed), so random writes overwrite, as on a real data file.
      const prep = ensureFiles([path.join(dir, 'rand.0.0')], s.randSize);
      const { job, command } = runFio(ctx, id, dir, {
        ioengine: 'libaio', iodepth: 16, direct: 1, rw, bs: '4k', size: s.randSize, numjobs: 1,
        time_based: 1, runtime: s.randRuntime, ramp_time: s.randRamp, overwrite: 1, filename_format: 'rand.$jobnum.$filenum',
      }, s.randRuntime + s.randRamp + 600);
      const d = rw === 'randread' ? job.read : job.write;
      if (!d.total_ios) throw new Error('fio completed no I/O');
      return { metrics: { iops: d.iops, p50: pct(d.clat_ns, '50.000000'), p99: pct(d.clat_ns, '99.000000') }, raw: job, command, prep };
    },
  };
}

const fdatasync: Workload = {
  id: 'fdatasync-4k',
  title: '4 KiB write + fdatasync (sync engine, queue depth 1)',
  metrics: [
    { key: 'syncP50', label: 'fdatasync p50', unit: 'µs', higherIsBetter: false },
    { key: 'syncP99', label: 'fdatasync p99', unit: 'µs', higherIsBetter: false },
    { key: 'writeP50', label: 'write p50', unit: 'µs', higherIsBetter: false },
    { key: 'writeP99', label: 'write p99', unit: 'µs', higherIsBetter: false },
    { key: 'cycle', label: 'write+sync mean', unit: 'µs', higherIsBetter: false },
  ],
  run(ctx, dir) {
    removeFiles(dir, 'fsync.');
    const s = ctx.sizes;
    const { job, command } = runFio(ctx, 'fdatasync-4k', dir, {
      ioengine: 'sync', rw: 'write', bs: '4k', size: 64 * MiB, fdatasync: 1, numjobs: 1,
      time_based: 1, runtime: s.syncRuntime, ramp_time: s.syncRamp, filename_format: 'fsync.$jobnum.$filenum',
    }, s.syncRuntime + s.syncRamp + 300);
    if (!job.write.total_ios) throw new Error('fio completed no writes');
    return {
      metrics: {
        syncP50: pct(job.sync?.lat_ns, '50.000000'), syncP99: pct(job.sync?.lat_ns, '99.000000'),
        writeP50: pct(job.write.clat_ns, '50.000000'), writeP99: pct(job.write.clat_ns, '99.000000'),
        cycle: 1e6 / job.write.iops,
      },
      raw: job, command,
    };
  },
};

// ---- PyTorch checkpoint ----

interface TorchOut { seconds: number; bytes: number; checksum: number; torch: string; [k: string]: unknown }

function torchRun(mode: 'save' | 'load', file: string, mib: number): { out: TorchOut; command: string[] } {
  const command = [PYTHON, TORCH_SCRIPT, mode, file, String(mib)];
  // A clean environment for Debian's interpreter: no PYTHONPATH/PYTHONHOME from a pyenv or venv shell.
  const env = { ...process.env };
  delete env.PYTHONPATH;
  delete env.PYTHONHOME;
  const r = spawnSync(command[0]!, command.slice(1), { encoding: 'utf8', timeout: 900000, killSignal: 'SIGKILL', env, maxBuffer: 16 * MiB });
  if (r.error) {
    const e = r.error as NodeJS.ErrnoException;
    throw new Error(e.code === 'ENOENT' ? `${PYTHON} not found` : e.code === 'ETIMEDOUT' ? `torch ${mode} did not finish in 900 s` : e.message);
  }
  if (r.status !== 0) {
    const err = (r.stderr || '').trim();
    if (/No module named .?torch/.test(err)) throw new Error(`${PYTHON} has no torch module (apt-get install python3-torch)`);
    throw new Error(`torch ${mode} exited ${r.status ?? r.signal}: ${err.split('\n').slice(-3).join(' | ')}`);
  }
  const line = r.stdout.trim().split('\n').pop() ?? '';
  return { out: JSON.parse(line) as TorchOut, command };
}

export function torchVersion(): string | null {
  const env = { ...process.env };
  delete env.PYTHONPATH;
  delete env.PYTHONHOME;
  const r = spawnSync(PYTHON, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8', env, timeout: 60000 });
  return r.status === 0 ? r.stdout.trim() : null;
}

const CKPT = 'ckpt.pt';
/** Checksums of what each target's torch-save wrote, for torch-load to compare with. */
const saved = new Map<TargetId, number>();

const torchSave: Workload = {
  id: 'torch-save',
  title: 'torch.save of a float32 state dict (+fsync)',
  metrics: [{ key: 'bw', label: 'MB/s', unit: 'MB/s', higherIsBetter: true }],
  run(ctx, dir, target) {
    const file = path.join(dir, CKPT);
    fs.rmSync(file, { force: true });
    const { out, command } = torchRun('save', file, ctx.sizes.torchMiB);
    saved.set(target, out.checksum);
    return { metrics: { bw: out.bytes / out.seconds / 1e6, seconds: out.seconds }, raw: out, command };
  },
};

const torchLoad: Workload = {
  id: 'torch-load',
  title: 'torch.load of that checkpoint (cold page cache)',
  metrics: [{ key: 'bw', label: 'MB/s', unit: 'MB/s', higherIsBetter: true }],
  notApplicable: (t) => (t === 'b1' ? 'the null fs reads back zeros, not a checkpoint' : null),
  run(ctx, dir, target) {
    const file = path.join(dir, CKPT);
    if (!fs.existsSync(file) || !saved.has(target)) saved.set(target, torchRun('save', file, ctx.sizes.torchMiB).out.checksum);
    const { out, command } = torchRun('load', file, ctx.sizes.torchMiB);
    if (out.checksum !== saved.get(target)) {
      throw new Error(`loaded tensors differ from the saved ones (checksum ${out.checksum}, saved ${saved.get(target)})`);
    }
    return { metrics: { bw: out.bytes / out.seconds / 1e6, seconds: out.seconds }, raw: out, command };
  },
};

/** Every workload, in the order they run (writes before the reads that reuse their files). */
export const WORKLOADS: Workload[] = [
  seq('write', 1, false), seq('write', 4, false), seq('write', 1, true), seq('write', 4, true),
  seq('read', 1, false), seq('read', 4, false), seq('read', 1, true), seq('read', 4, true),
  rand('randwrite'), rand('randread'),
  fdatasync,
  torchSave, torchLoad,
];

/** --only: exact ids, or a prefix family ("seq-write" picks seq-write-j1, seq-write-direct-j4, ...). */
export function selectWorkloads(only: string[] | null): Workload[] {
  if (!only) return WORKLOADS;
  const unknown = only.filter((o) => !WORKLOADS.some((w) => w.id === o || w.id.startsWith(o + '-')));
  if (unknown.length) {
    throw new Error(`unknown workload ${unknown.join(', ')}; known: ${WORKLOADS.map((w) => w.id).join(', ')}`);
  }
  return WORKLOADS.filter((w) => only.some((o) => w.id === o || w.id.startsWith(o + '-')));
}

/** Where files are left between workloads: removed from a target when the run is over. */
export const FILE_PREFIXES = ['seq.', 'rand.', 'fsync.', CKPT];
