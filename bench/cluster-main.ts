/**
 * Benchmark child: the embedded cluster (master, metanode, three datanodes, 3 replicas over TCP; each node
 * its own process under this launcher). Writes its addresses to --ready FILE, stops on SIGTERM/SIGINT, and
 * stops by itself when the benchmark process goes away, unless --keep.
 *
 *   node dist/bench/cluster-main.js --dir DIR --ready FILE [--keep]
 */
import { EmbeddedCluster } from '../src/cluster/launcher.js';
import { argValue, need, writeJson } from './args.js';

const argv = process.argv.slice(2);
const dir = need(argv, '--dir');
const ready = need(argv, '--ready');
const keep = argv.includes('--keep');
const parent = process.ppid;

const cluster = await EmbeddedCluster.start({
  dir, processes: true, masterPort: Number(argValue(argv, '--master-port') ?? 0),
});
let stopping = false;
const stop = (why: string): void => {
  if (stopping) return;
  stopping = true;
  process.stderr.write(`cluster: stopping (${why})\n`);
  void cluster.stop().finally(() => process.exit(0));
};
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
if (!keep) setInterval(() => { if (process.ppid !== parent) stop('the benchmark process is gone'); }, 1000);
else setInterval(() => undefined, 1 << 30);

await writeJson(ready, {
  pid: process.pid, dir: cluster.dir, master: cluster.masterAddr, vol: cluster.vol, owner: cluster.owner,
  metanode: cluster.metanodeAddr, datanodes: cluster.datanodeAddrs,
});
