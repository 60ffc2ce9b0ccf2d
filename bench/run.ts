/**
 * npm run bench [-- --quick] [--only ID,...] [--targets mount,b0,b1] [--keep] [--out DIR]
 *
 * Measures the mount (embedded cluster, 3 replicas over TCP, mounted with mountVolume) against B0 (tmpfs)
 * and B1 (the null FUSE file system on our binding) with fio and a PyTorch checkpoint script, prints one
 * line per workload and target while it runs, then a table, and writes bench-results/<timestamp>.json and
 * bench-results/latest.json. A workload that fails is reported with its error; the others still run.
 * Exit status: 0 when every cell ran (or was n/a), 1 when some failed, 2 on bad arguments, 130 if interrupted.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { argValue } from './args.js';
import { ratio, renderTable, fmtValue, type Cell, type Row } from './report.js';
import { TARGET_IDS, TARGET_NAMES, startMount, startNull, startTmpfs, type ClusterHandle, type Target, type TargetId } from './targets.js';
import {
  FILE_PREFIXES, FULL, QUICK, PYTHON, TORCH_SCRIPT, fioVersion, selectWorkloads, torchVersion, type Workload,
} from './workloads.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const MiB = 1 << 20;

const USAGE = `usage: npm run bench -- [--quick] [--only ID[,ID...]] [--targets mount,b0,b1] [--keep] [--out DIR]

  --quick     small sizes and short runs (about 2 minutes)
  --only      workloads by id or family prefix (seq, seq-write, seq-read-direct, rand, torch, ...)
  --targets   which of mount, b0 (tmpfs), b1 (null FUSE fs) to measure (default all three)
  --keep      leave the embedded cluster running at the end (prints its address and how to stop it)
  --out DIR   where the JSON results go (default bench-results/ in the repository)

workloads: ${selectWorkloads(null).map((w) => w.id).join(', ')}`;

interface Options { quick: boolean; only: string[] | null; targets: TargetId[]; keep: boolean; out: string }

function parseArgs(argv: string[]): Options {
  const known = new Set(['--quick', '--only', '--targets', '--keep', '--out', '--help', '-h']);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const name = a.includes('=') ? a.slice(0, a.indexOf('=')) : a;
    if (!known.has(name)) throw new Error(`unknown argument ${a}`);
    if (['--only', '--targets', '--out'].includes(a)) i++;
  }
  if (argv.includes('--help') || argv.includes('-h')) {
    console.log(USAGE);
    process.exit(0);
  }
  const list = (v: string | undefined): string[] | null => (v === undefined ? null : v.split(',').map((s) => s.trim()).filter(Boolean));
  const targets = list(argValue(argv, '--targets')) ?? TARGET_IDS;
  const bad = targets.filter((t) => !TARGET_IDS.includes(t as TargetId));
  if (bad.length) throw new Error(`unknown target ${bad.join(', ')} (mount, b0, b1)`);
  return {
    quick: argv.includes('--quick'),
    only: list(argValue(argv, '--only')),
    targets: TARGET_IDS.filter((t) => targets.includes(t)),
    keep: argv.includes('--keep'),
    out: path.resolve(argValue(argv, '--out') ?? path.join(ROOT, 'bench-results')),
  };
}

function machine(): Record<string, unknown> {
  const cpus = os.cpus();
  const git = spawnSync('git', ['rev-parse', 'HEAD'], { cwd: ROOT, encoding: 'utf8' });
  return {
    cores: cpus.length, cpuModel: cpus[0]?.model ?? 'unknown', memBytes: os.totalmem(),
    kernel: os.release(), os: `${os.type()} ${os.version()}`, arch: os.arch(), node: process.version,
    commit: git.status === 0 ? git.stdout.trim() : null,
  };
}

const fmtS = (s: number): string => `${s.toFixed(1)} s`;

function summary(w: Workload, c: Cell): string {
  if (c.status === 'ok') {
    return w.metrics.map((m) => `${w.metrics.length > 1 ? m.label + ' ' : ''}${fmtValue(c.metrics![m.key]!, m.unit)} ${m.unit}`).join(', ');
  }
  return `${c.status.toUpperCase()}${c.error ? `: ${c.error}` : ''}`;
}

async function main(): Promise<number> {
  let opts: Options;
  let workloads: Workload[];
  try {
    opts = parseArgs(process.argv.slice(2));
    workloads = selectWorkloads(opts.only);
  } catch (e) {
    console.error(`bench: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  const sizes = opts.quick ? QUICK : FULL;
  const startedAt = new Date();
  const t0 = Date.now();
  const fio = fioVersion();
  const usesTorch = workloads.some((w) => w.id.startsWith('torch'));
  const torch = usesTorch ? torchVersion() : null;
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'cubefs-bench-'));
  const scratch = path.join(work, 'fio-out');
  fs.mkdirSync(scratch);

  let interrupted = false;
  const onSignal = (sig: string): void => {
    if (!interrupted) console.log(`\n${sig}: stopping after the current workload, then cleaning up`);
    interrupted = true;
  };
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGTERM', () => onSignal('SIGTERM'));

  const cells = workloads.length * opts.targets.length;
  console.log(`cubefs-mount bench (${opts.quick ? 'quick' : 'full'}): ${workloads.length} workload(s) x ${opts.targets.length} target(s), `
    + `${os.cpus().length} cores, kernel ${os.release()}, node ${process.version}, ${fio ?? 'fio MISSING'}`
    + `${usesTorch ? `, torch ${torch ?? 'MISSING'}` : ''}`);
  console.log(`work dir ${work}`);

  // ---- targets ----
  const targets = new Map<TargetId, Target>();
  let cluster: ClusterHandle | null = null;
  const up = (t: Target): void => {
    targets.set(t.id, t);
    console.log(t.error
      ? `  ${TARGET_NAMES[t.id].padEnd(9)} FAILED to come up: ${t.error}`
      : `  ${TARGET_NAMES[t.id].padEnd(9)} ready at ${t.dir} (${fmtS(t.setupSeconds ?? 0)})`);
  };
  const tmpfsBytes = 4 * sizes.seqPerJob + sizes.randSize + 64 * MiB + Math.ceil(sizes.torchMiB * 1.1) * MiB + 512 * MiB;
  if (opts.targets.includes('mount')) {
    const m = await startMount(work, opts.keep);
    cluster = m.cluster;
    up(m.target);
  }
  if (opts.targets.includes('b0')) up(await startTmpfs(work, tmpfsBytes));
  if (opts.targets.includes('b1')) up(await startNull(work));

  // ---- workloads ----
  const results: Record<string, Record<string, Cell>> = {};
  let n = 0;
  let failed = 0;
  const width = Math.max(...workloads.map((w) => w.id.length));
  for (const w of workloads) {
    results[w.id] = {};
    for (const tid of opts.targets) {
      n++;
      const t = targets.get(tid)!;
      let cell: Cell;
      const started = Date.now();
      if (interrupted) cell = { status: 'skipped', error: 'interrupted' };
      else if (!t.dir) cell = { status: 'failed', error: `target not available: ${t.error}` };
      else {
        const na = w.notApplicable?.(tid) ?? null;
        if (na) cell = { status: 'n/a', error: na };
        else {
          try {
            const o = w.run({ sizes, scratch }, t.dir, tid);
            cell = { status: 'ok', metrics: o.metrics, raw: o.raw, ...(o.command ? { command: o.command } : {}), ...(o.prep ? { prep: o.prep } : {}) };
          } catch (e) {
            cell = { status: 'failed', error: (e as Error).message };
          }
          cell.seconds = (Date.now() - started) / 1000;
        }
      }
      if (cell.status === 'failed') failed++;
      results[w.id]![tid] = cell;
      console.log(`[${String(n).padStart(String(cells).length)}/${cells}] ${w.id.padEnd(width)}  ${TARGET_NAMES[tid].padEnd(9)}  `
        + `${summary(w, cell)}${cell.seconds !== undefined ? `  (${fmtS(cell.seconds)}`
          + `${cell.prep?.bytes ? `, ${fmtS(cell.prep.seconds)} of it writing ${Math.round(cell.prep.bytes / MiB)} MiB of input first` : ''})` : ''}`);
      await new Promise((r) => setImmediate(r)); // let a signal handler run
    }
  }

  // ---- clean up ----
  for (const t of targets.values()) {
    if (!t.dir) continue;
    try {
      for (const f of fs.readdirSync(t.dir)) {
        if (FILE_PREFIXES.some((p) => f.startsWith(p))) fs.rmSync(path.join(t.dir, f), { force: true, recursive: true });
      }
    } catch (e) {
      console.log(`  cleaning ${TARGET_NAMES[t.id]}: ${(e as Error).message}`);
    }
  }
  for (const t of targets.values()) await t.stop();
  if (cluster) {
    if (opts.keep) {
      cluster.release();
      const i = cluster.info;
      console.log(`\nembedded cluster left running (--keep): master ${i.master}, volume ${i.vol}, owner ${i.owner}, data in ${i.dir}`
        + `\n  mount it:  node dist/bench/mount-main.js --kind cubefs --mnt MNT --ready /tmp/r.json --stats /tmp/s.json `
        + `--masters ${i.master} --vol ${i.vol} --owner ${i.owner}\n  stop it:   kill ${i.pid}  (then rm -rf ${work})`);
    } else {
      await cluster.stop();
    }
  }
  if (!opts.keep) fs.rmSync(work, { recursive: true, force: true });

  // ---- report ----
  const rows: Row[] = [];
  for (const w of workloads) {
    for (const m of w.metrics) {
      const values = {} as Record<TargetId, number | null>;
      const status = {} as Record<TargetId, Cell['status']>;
      for (const tid of TARGET_IDS) {
        const c = results[w.id]![tid];
        status[tid] = c?.status ?? 'skipped';
        values[tid] = c?.status === 'ok' ? c.metrics?.[m.key] ?? null : null;
      }
      rows.push({
        workload: w.id, metric: m.label, unit: m.unit, higherIsBetter: m.higherIsBetter, values, status,
        mountOverB0: ratio(values.mount, values.b0), mountOverB1: ratio(values.mount, values.b1),
      });
    }
  }
  console.log(`\n${renderTable(rows)}\n`);
  console.log('MB/s = 10^6 bytes/s; ratios are mount value / baseline value (for µs rows, above 1 means the mount is slower).');
  const failures = Object.entries(results).flatMap(([wid, byT]) => Object.entries(byT)
    .filter(([, c]) => c.status === 'failed').map(([tid, c]) => `  ${wid} on ${TARGET_NAMES[tid as TargetId]}: ${c.error}`));
  if (failures.length) console.log(`failed:\n${failures.join('\n')}`);

  const doc = {
    schema: 1,
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    seconds: (Date.now() - t0) / 1000,
    mode: opts.quick ? 'quick' : 'full',
    argv: process.argv.slice(2),
    interrupted,
    machine: machine(),
    fio: { version: fio },
    torch: usesTorch ? { python: PYTHON, script: path.relative(ROOT, TORCH_SCRIPT), version: torch } : null,
    sizes,
    targets: Object.fromEntries([...targets.values()].map((t) => [t.id, {
      name: TARGET_NAMES[t.id], status: t.dir ? 'ok' : 'failed', ...(t.error ? { error: t.error } : {}),
      setupSeconds: t.setupSeconds ?? null, ...t.info,
    }])),
    workloads: workloads.map((w) => ({
      id: w.id, title: w.title, metrics: w.metrics, results: results[w.id],
    })),
    table: rows,
  };
  fs.mkdirSync(opts.out, { recursive: true });
  const file = path.join(opts.out, `${startedAt.toISOString().replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(file, JSON.stringify(doc, null, 2) + '\n');
  fs.writeFileSync(path.join(opts.out, 'latest.json'), JSON.stringify(doc, null, 2) + '\n');
  const rel = path.relative(process.cwd(), file);
  console.log(`results: ${rel.startsWith('..') ? file : rel} (and latest.json), ${fmtS(doc.seconds)} in all`);
  return interrupted ? 130 : failed ? 1 : 0;
}

main().then((code) => process.exit(code), (e: Error) => {
  console.error(`bench: ${e.stack ?? e.message}`);
  process.exit(1);
});
