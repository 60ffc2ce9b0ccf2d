#!/usr/bin/env node
// Runs the tap suite on the compiled tests and ends with one line of counts: "N passed, N failed, N skipped".
// A "test" is one t.test() at the top of a test file; a file that fails outside any subtest counts as one
// failure. The full TAP stream goes to test-results.tap; this prints files, subtests and failure details.
//
// Tests under test/rdma-vm/ need a real RDMA device: after the host's tests this boots the RDMA VM once
// (scripts/rdma-vm/run-vm.sh, prepared by scripts/setup.sh), runs them there (`--inside-vm`: only those
// files, TAP to test-results-vm.tap), streams their lines prefixed "[vm]" and adds the VM's counts to the
// final line. A VM that cannot start (no kernel prepared, no qemu, timeout) is one failure, said plainly.
// `--no-vm` (or CUBEFS_NO_VM=1) skips the VM and says so. CUBEFS_RDMA_VM_TIMEOUT: seconds (default 900).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const args = process.argv.slice(2);
const pick = args.filter((a) => !a.startsWith('-'));
const insideVm = args.includes('--inside-vm');
const noVm = args.includes('--no-vm') || !!process.env.CUBEFS_NO_VM;
const isVmTest = (f) => f.includes(`${path.sep}rdma-vm${path.sep}`);
const findTests = (dir) => fs.existsSync(dir)
  ? fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? findTests(p) : e.name.endsWith('.test.js') ? [p] : [];
  })
  : [];
let files = findTests(path.join(root, 'dist', 'test')).sort();
// Filters match the path below dist/ ("test/posix/apps.test.js"), not where the checkout happens to live.
const rel = (f) => path.relative(path.join(root, 'dist'), f);
if (pick.length) files = files.filter((f) => pick.some((p) => rel(f).includes(p)));
const vmFiles = files.filter(isVmTest);
if (insideVm) files = vmFiles;
else if (!process.env.CUBEFS_RDMA_VM) files = files.filter((f) => !isVmTest(f));
const runVm = !insideVm && !process.env.CUBEFS_RDMA_VM && vmFiles.length > 0;
if (files.length === 0 && !runVm) {
  console.log('no test files found (did the build run?)');
  console.log('0 passed, 1 failed');
  process.exit(1);
}

const tap = path.join(root, 'node_modules', '.bin', 'tap');
const out = fs.createWriteStream(path.join(root, insideVm ? 'test-results-vm.tap' : 'test-results.tap'));
const child = files.length === 0 || insideVm ? null : spawn(tap, ['--disable-coverage', '--reporter=tap', '--timeout=1200',
  `--jobs=${process.env.TEST_JOBS ?? 2}`, ...files], {
  cwd: root, stdio: ['ignore', 'pipe', 'inherit'],
});

let passed = 0, failed = 0, skipped = 0;
let fileSubtests = 0;
let fileFailed = false;
let yaml = false;
let buf = '';
const onLine = (line) => {
  out.write(line + '\n');
  // YAML diagnostics of a failed assertion: print until its closing "...".
  if (yaml && !/^( {4})?(not ok|ok) \d+ - /.test(line)) {
    console.log(line);
    if (/^\s+\.\.\.$/.test(line)) yaml = false;
    return;
  }
  yaml = false;
  const sub = /^ {4}(not ok|ok) \d+ - (.*)$/.exec(line);
  const top = /^(not ok|ok) \d+ - (.*)$/.exec(line);
  const name = (s) => s.replace(/ # time=.*$/, '');
  if (sub) {
    fileSubtests++;
    if (/# SKIP/i.test(sub[2])) skipped++;
    else if (sub[1] === 'ok') passed++;
    else { failed++; fileFailed = true; }
    console.log(`  ${sub[1] === 'ok' ? 'ok  ' : 'FAIL'} ${name(sub[2])}`);
  } else if (top) {
    // A file counts on its own when it has no subtests, or when it failed outside them (crash, timeout).
    if (fileSubtests === 0) top[1] === 'ok' ? passed++ : failed++;
    else if (top[1] === 'not ok' && !fileFailed) failed++;
    console.log(`${top[1] === 'ok' ? 'ok  ' : 'FAIL'} ${name(top[2])}`);
    fileSubtests = 0;
    fileFailed = false;
  } else if (/^\s+not ok /.test(line)) {
    console.log(line);
    yaml = true;
  } else if (/^\s*Bail out!/.test(line)) {
    console.log(line);
  }
};
/**
 * Inside the VM the tap runner alone costs ~100 s (its loaders under emulation): each file runs as plain
 * `node FILE` instead, one after the other, its TAP indented as the runner would nest it.
 */
async function runDirect() {
  let status = 0, n = 0;
  for (const f of files) {
    const code = await new Promise((resolve) => {
      // tap's root timeout for a plain `node FILE` run is 30 s unless TAP_TIMEOUT says otherwise: far too short
      // for a file of several tests under emulation, so each file gets the runner's own per-file budget.
      const env = { ...process.env, TAP_TIMEOUT: process.env.TAP_TIMEOUT ?? '1200' };
      const c = spawn(process.execPath, [f], { cwd: root, env, stdio: ['ignore', 'pipe', 'inherit'] });
      let b = '';
      c.stdout.on('data', (d) => {
        b += d.toString();
        let i;
        while ((i = b.indexOf('\n')) >= 0) { onLine(`    ${b.slice(0, i)}`); b = b.slice(i + 1); }
      });
      c.on('close', (code, sig) => { if (b) onLine(`    ${b}`); resolve(sig ? 1 : code ?? 1); });
    });
    onLine(`${code === 0 ? 'ok' : 'not ok'} ${++n} - ${path.relative(root, f)}`);
    if (code !== 0) status = 1;
  }
  out.end();
  return status;
}

const hostDone = insideVm ? runDirect() : child === null ? Promise.resolve(0) : new Promise((resolve) => {
  child.stdout.on('data', (d) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      onLine(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
  child.on('close', (code) => {
    if (buf) onLine(buf);
    out.end();
    if (code !== 0 && failed === 0) failed++;
    resolve(code ?? 1);
  });
});

/** Boots the RDMA VM once, runs the rdma-vm tests in it, and adds its counts. Resolves to a status. */
function vmTests() {
  const vmDir = process.env.CUBEFS_RDMA_VM_DIR ?? '/tmp/cubefs-rdma-vm';
  const runVmSh = path.join(root, 'scripts', 'rdma-vm', 'run-vm.sh');
  const cantStart = (why) => {
    console.log(`FAIL rdma-vm: the RDMA VM cannot start: ${why}`);
    failed++;
    return Promise.resolve(1);
  };
  const onPath = (bin) => (process.env.PATH ?? '').split(':').some((d) => fs.existsSync(path.join(d, bin)));
  if (!onPath('qemu-system-x86_64')) return cantStart('qemu-system-x86_64 is not installed (run scripts/setup.sh)');
  if (!fs.existsSync(path.join(vmDir, 'kernel', 'initrd.gz'))) {
    return cantStart(`no kernel and initramfs in ${vmDir}/kernel (run scripts/setup.sh)`);
  }
  const timeout = Number(process.env.CUBEFS_RDMA_VM_TIMEOUT ?? 900);
  console.log(`rdma-vm: booting the VM for ${vmFiles.length} file(s) (timeout ${timeout} s)`);
  const t0 = Date.now();
  const picked = vmFiles.map(rel);
  const vm = spawn(runVmSh, ['--rw', root, '--timeout', String(timeout), '-e', 'CUBEFS_RDMA_VM=1', '-e', 'DEBUG', '--',
    `node scripts/run-tests.mjs --inside-vm ${picked.join(' ')}`], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  let counts = null, vbuf = '', ebuf = '';
  const line = (l) => {
    const m = /^(\d+) passed, (\d+) failed(?:, (\d+) skipped)?$/.exec(l.trim());
    if (m) counts = m.slice(1).map((x) => Number(x ?? 0));
    else if (l.trim()) console.log(`[vm] ${l}`);
  };
  vm.stdout.on('data', (d) => {
    vbuf += d.toString().replace(/\r/g, '');
    let i;
    while ((i = vbuf.indexOf('\n')) >= 0) { line(vbuf.slice(0, i)); vbuf = vbuf.slice(i + 1); }
  });
  vm.stderr.on('data', (d) => { ebuf += d.toString(); process.stderr.write(d); });
  return new Promise((resolve) => {
    vm.on('close', (code) => {
      if (vbuf) line(vbuf);
      const secs = ((Date.now() - t0) / 1000).toFixed(1);
      if (counts) {
        passed += counts[0]; failed += counts[1]; skipped += counts[2];
        console.log(`rdma-vm: ${counts[0]} passed, ${counts[1]} failed in the VM (${secs} s with boot)`);
        if (code !== 0 && counts[1] === 0) { console.log(`FAIL rdma-vm: the VM run exited ${code}`); failed++; }
        resolve(code ?? 1);
        return;
      }
      const said = ebuf.split('\n').filter((l) => l.startsWith('run-vm.sh: ')).pop()?.slice(11);
      const why = said ?? (code === 125 ? `the VM failed (${secs} s)` : `no result from the tests in the VM (exit ${code})`);
      resolve(cantStart(why));
    });
  });
}

const code = await hostDone;
let vmCode = 0;
if (runVm) {
  if (noVm) console.log(`rdma-vm: skipped (--no-vm / CUBEFS_NO_VM): ${vmFiles.length} file(s) not run`);
  else vmCode = await vmTests();
}
console.log('');
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
process.exit(failed === 0 && code === 0 && vmCode === 0 ? 0 : 1);
