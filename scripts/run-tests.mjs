#!/usr/bin/env node
// Runs the tap suite on the compiled tests and ends with one line of counts: "N passed, N failed, N skipped".
// A "test" is one t.test() at the top of a test file; a file that fails outside any subtest counts as one
// failure. The full TAP stream goes to test-results.tap; this prints files, subtests and failure details.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const args = process.argv.slice(2);
const pick = args.filter((a) => !a.startsWith('-'));
const findTests = (dir) => fs.existsSync(dir)
  ? fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? findTests(p) : e.name.endsWith('.test.js') ? [p] : [];
  })
  : [];
let files = findTests(path.join(root, 'dist', 'test')).sort();
if (pick.length) files = files.filter((f) => pick.some((p) => f.includes(p)));
if (!process.env.CUBEFS_RDMA_VM) files = files.filter((f) => !f.includes(`${path.sep}rdma-vm${path.sep}`));
if (files.length === 0) {
  console.log('no test files found (did the build run?)');
  console.log('0 passed, 1 failed');
  process.exit(1);
}

const tap = path.join(root, 'node_modules', '.bin', 'tap');
const out = fs.createWriteStream(path.join(root, 'test-results.tap'));
const child = spawn(tap, ['--disable-coverage', '--reporter=tap', '--timeout=1200', `--jobs=${process.env.TEST_JOBS ?? 2}`, ...files], {
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
  console.log('');
  console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
  process.exit(failed === 0 && code === 0 ? 0 : 1);
});
