/**
 * `cubefs-mount cluster` as a user runs it: the command starts the embedded cluster, prints where it is,
 * serves a client, and stops cleanly on SIGTERM without leaving node processes behind.
 */
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { MasterClient } from '../../src/master/client.js';
import { CubeFSClient } from '../../src/sdk/client.js';
import { tempDir } from '../support/cluster.js';

const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../bin/cubefs-mount');

function startCli(args: string[]): { child: ChildProcess; ready: Promise<Record<string, string>> } {
  const child = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const ready = new Promise<Record<string, string>>((resolve, reject) => {
    const fields: Record<string, string> = {};
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
    readline.createInterface({ input: child.stdout! }).on('line', (line) => {
      const m = /^\s+(\w+):\s+(.*)$/.exec(line);
      if (m) fields[m[1]!] = m[2]!;
      if (line.startsWith('stop with')) resolve(fields);
    });
    child.on('exit', (code) => reject(new Error(`cubefs-mount cluster exited ${code}: ${stderr}`)));
  });
  return { child, ready };
}

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

t.test('cubefs-mount cluster starts, serves, and stops on SIGTERM', async (t) => {
  const dir = tempDir(t);
  const { child, ready } = startCli(['cluster', '--dir', dir, '--master-port', '0', '--vol', 'demo', '--owner', 'alice']);
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  const info = await ready;
  t.match(info.master, /^127\.0\.0\.1:\d+$/, 'prints the master address on loopback');
  t.equal(info.volume, 'demo');
  t.equal(info.owner, 'alice');
  const layout = JSON.parse(fs.readFileSync(path.join(dir, 'cluster.json'), 'utf8'));
  t.equal(layout.datanodes.length, 3, 'three datanodes');

  const secretFile = path.join(dir, 'secret');
  t.match(info.secret, `${secretFile} (the admin API wants it`, 'says where the admin secret is');
  t.equal(fs.statSync(secretFile).mode & 0o777, 0o600, 'the secret file is 0600');
  const secret = fs.readFileSync(secretFile, 'utf8').trim();
  const anon = new MasterClient(info.master!);
  const admin = new MasterClient(info.master!, { adminSecret: secret });
  t.teardown(() => { anon.close(); admin.close(); });
  t.equal((await admin.getVolumeAdmin('demo')).Owner, 'alice', 'the CLI created its volume with the secret; getVol with it shows the owner');
  t.equal((await anon.getVolumeAdmin('demo')).Owner, '', 'and hides it without');
  await t.rejects(anon.createVolume('more', 'bob'), /needs the cluster's admin secret/, 'createVol without the secret is refused');
  await admin.createVolume('more', 'bob', { capacityGB: 1, dataPartitions: 1 });
  t.pass('createVol with the secret works');

  const client = await CubeFSClient.connect({ masters: info.master!, vol: 'demo', owner: 'alice' });
  await client.writeFile('/hello.txt', 'hello from the cli test\n');
  t.equal((await client.readFile('/hello.txt')).toString(), 'hello from the cli test\n', 'a client reads back what it wrote');
  await client.close();

  const nodePids = fs.readFileSync(`/proc/${child.pid}/task/${child.pid}/children`, 'utf8').trim().split(/\s+/).map(Number);
  t.equal(nodePids.length, 5, 'five node processes');
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  child.kill('SIGTERM');
  t.equal(await exited, 0, 'exits 0 on SIGTERM');
  t.same(nodePids.filter(alive), [], 'no node process left behind');
});

t.test('cubefs-mount cluster explains a bad port', async (t) => {
  const dir = tempDir(t);
  const child = spawn(BIN, ['cluster', '--dir', dir, '--master-port', 'x'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
  const code = await new Promise<number | null>((r) => child.once('exit', r));
  t.not(code, 0, 'fails');
  t.match(err, /master-port/, 'names the option');
});

t.test('cubefs-mount cluster refuses a volume it cannot create before it starts anything', async (t) => {
  const dir = tempDir(t);
  for (const [args, why] of [[['--owner', 'not an owner'], /owner not legal/], [['--capacity', '1.5'], /whole number of GB/]] as const) {
    const child = spawn(BIN, ['cluster', '--dir', dir, '--master-port', '0', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    const code = await new Promise<number | null>((r) => child.once('exit', r));
    t.equal(code, 1, `${args.join(' ')}: exit 1`);
    t.match(err.split('\n')[0], why, `${args.join(' ')}: says why on its first line`);
  }
  t.notOk(fs.existsSync(path.join(dir, 'cluster.json')), 'no layout written: a good start later creates the volume');
});
