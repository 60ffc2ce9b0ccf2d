// The benchmark command end to end (quick mode, one cheap workload), so it cannot rot. It checks the shape
// of the results file, never its numbers: benchmarks are not tests.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

interface Run { code: number; out: string }

function bench(args: string[]): Promise<Run> {
  // Without tap's NODE_OPTIONS (its hooks would ride along into the mount and cluster processes).
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  return new Promise((resolve) => {
    execFile('npm', ['run', '--silent', 'bench', '--', ...args], { cwd: ROOT, env, timeout: 85000, maxBuffer: 8 << 20 },
      (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
        resolve({ code, out: stdout + stderr });
      });
  });
}

t.test('npm run bench -- --quick --only seq-write-j1 measures the three targets and writes the JSON', async (t) => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'cubefs-bench-test-'));
  t.teardown(() => fs.rmSync(out, { recursive: true, force: true }));
  const r = await bench(['--quick', '--only', 'seq-write-j1', '--out', out]);
  t.equal(r.code, 0, `exit 0 (output:\n${r.out})`);
  for (const name of ['mount', 'B0 tmpfs', 'B1 nullfs']) t.match(r.out, new RegExp(`seq-write-j1\\s+${name}\\s+\\S+ MB/s`), `a progress line for ${name}`);
  t.match(r.out, /\| workload\s+\| metric\s+\| unit\s+\| mount\s+\| B0 tmpfs \| B1 nullfs \| mount\/B0 \| mount\/B1 \|/, 'the table header');

  const files = fs.readdirSync(out).sort();
  t.equal(files.length, 2, `a timestamped file and latest.json (${files.join(', ')})`);
  t.ok(files.includes('latest.json'), 'latest.json');
  const doc = JSON.parse(fs.readFileSync(path.join(out, 'latest.json'), 'utf8'));
  const stamped = JSON.parse(fs.readFileSync(path.join(out, files.find((f) => f !== 'latest.json')!), 'utf8'));
  t.same(stamped, doc, 'latest.json is the same document');

  t.equal(doc.schema, 1);
  t.equal(doc.mode, 'quick');
  t.match(doc.machine, { cores: Number, kernel: String, node: process.version, cpuModel: String, memBytes: Number });
  t.match(doc.fio, { version: /^fio-/ });
  for (const id of ['mount', 'b0', 'b1']) t.match(doc.targets[id], { status: 'ok', mountpoint: String }, `target ${id} came up`);
  t.match(doc.targets.mount, { cluster: { master: String, vol: String, replicas: 3, transport: 'tcp' } }, 'the mount ran on the embedded cluster');
  t.match(doc.targets.mount.stats, { session: { requests: Object, maxWriteSeen: Number } }, 'the mount process reported its counters');

  t.equal(doc.workloads.length, 1, 'only the workload asked for');
  const w = doc.workloads[0];
  t.equal(w.id, 'seq-write-j1');
  for (const id of ['mount', 'b0', 'b1']) {
    const c = w.results[id];
    t.equal(c.status, 'ok', `${id}: ok (${c.error ?? ''})`);
    t.type(c.metrics.bw, 'number', `${id}: a bandwidth`);
    t.match(c.raw, { jobname: 'seq-write-j1', write: { bw_bytes: Number, io_bytes: Number } }, `${id}: fio's raw job`);
    t.match(c.command, ['fio'], `${id}: the fio command line`);
  }
  t.equal(doc.table.length, 1, 'one table row');
  t.match(doc.table[0], { workload: 'seq-write-j1', unit: 'MB/s', values: { mount: Number, b0: Number, b1: Number }, mountOverB0: Number, mountOverB1: Number });
});

t.test('an unknown workload is refused with the list of known ones', async (t) => {
  const r = await bench(['--only', 'no-such-workload']);
  t.equal(r.code, 2, 'exit 2');
  t.match(r.out, /unknown workload no-such-workload; known: seq-write-j1/, 'names the known workloads');
});
