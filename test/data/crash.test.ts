import { spawn } from 'node:child_process';
import readline from 'node:readline';
import t from 'tap';
import { DataNode } from '../../src/cluster/datanode.js';
import { DataClient } from '../../src/data/index.js';
import { createPartition, FakeMeta, pattern, StaticSource, tellLeaders, tmpdir, view } from './helpers.js';

t.test('acknowledged data and extent ids survive kill -9 of the datanode process', async (t) => {
  const dir = tmpdir(t);
  const mod = new URL('../../src/cluster/datanode.js', import.meta.url).href;
  const script = `const { DataNode } = await import(${JSON.stringify(mod)});
    const n = new DataNode({ dir: ${JSON.stringify(dir)} });
    console.log(await n.start());
    setInterval(() => {}, 1000);`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  const addr = await new Promise<string>((resolve, reject) => {
    readline.createInterface({ input: child.stdout! }).once('line', resolve);
    child.once('exit', (c) => reject(new Error(`datanode child exited ${c}`)));
  });
  await createPartition(addr, 1, [addr]);
  const source = new StaticSource([view(1, [addr])]);
  const meta = new FakeMeta();
  const w = new DataClient({ source, meta });
  const big = pattern(3 * 1024 * 1024 + 17, 61);
  const s = w.open(1);
  await s.write(0, big);
  await s.release();
  const tiny = w.open(2);
  await tiny.write(0, Buffer.from('small'));
  await tiny.release();
  await w.close();
  const before = meta.files.get(1)!.keys.map((k) => k.ExtentId);

  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;

  const node = new DataNode({ dir, listen: addr });
  t.teardown(() => node.stop());
  await node.start();
  await tellLeaders(addr, source.views);
  const r = new DataClient({ source, meta });
  t.teardown(() => r.close());
  const rs = r.open(1);
  t.ok((await rs.read(0, big.length)).equals(big), 'normal extent data back');
  const rt = r.open(2);
  t.equal((await rt.read(0, 100)).toString(), 'small', 'tiny extent data back');
  await rs.write(big.length + 1024 * 1024, Buffer.from('x'));
  await rs.release();
  await rt.release();
  const after = meta.files.get(1)!.keys.map((k) => k.ExtentId);
  t.ok(Math.min(...after.filter((id) => !before.includes(id))) > Math.max(...before), `new extent id after restart (${before} -> ${after})`);
});
