/**
 * One embedded-cluster node as a process of its own, so a test (or a person) can kill it.
 *
 *   node dist/src/cluster/node-main.js ROLE --dir DIR --listen HOST:PORT [--metanodes A] [--datanodes A,B,C]
 *       [--secret-file FILE]   (the master: the cluster's admin secret, read from a file so no process list shows it)
 *
 * Prints one JSON line {"role","addr"} on stdout when it serves, and stops cleanly on SIGTERM/SIGINT.
 */
import { parseArgs } from 'node:util';
import { DataNode } from './datanode.js';
import { Master } from './master.js';
import { MetaNode } from './metanode.js';
import { readSecret } from './secret.js';

interface Node { start(): Promise<string>; stop(): Promise<void> }

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      dir: { type: 'string' },
      listen: { type: 'string', default: '127.0.0.1:0' },
      metanodes: { type: 'string', default: '' },
      datanodes: { type: 'string', default: '' },
      capacity: { type: 'string' },
      'heartbeat-ms': { type: 'string' },
      rdma: { type: 'string' },
      'secret-file': { type: 'string' },
    },
  });
  const role = positionals[0];
  const dir = values.dir;
  if (!dir) throw new Error('--dir is required');
  const list = (s: string): string[] => s.split(',').filter(Boolean);
  let node: Node;
  switch (role) {
    case 'master':
      if (!values['secret-file']) throw new Error('the master needs --secret-file FILE (the cluster\'s admin secret)');
      node = new Master({
        secret: readSecret(values['secret-file']),
        dir, listen: values.listen, metanodes: list(values.metanodes), datanodes: list(values.datanodes),
        ...(values['heartbeat-ms'] ? { heartbeatMs: Number(values['heartbeat-ms']) } : {}),
      });
      break;
    case 'metanode':
      node = new MetaNode({
        dir, listen: values.listen,
        // What is on disk is not known after a failed fdatasync: exit, and the restart replays the disk.
        onBrokenLog: () => setTimeout(() => process.exit(75), 100).unref(),
      });
      break;
    case 'datanode':
      if (values.rdma !== undefined && values.rdma !== 'auto' && values.rdma !== 'off') throw new Error('--rdma must be auto or off');
      node = new DataNode({
        dir, listen: values.listen, ...(values.capacity ? { capacityBytes: Number(values.capacity) } : {}),
        ...(values.rdma ? { rdma: values.rdma as 'auto' | 'off' } : {}),
      });
      break;
    default:
      throw new Error(`unknown role "${role}" (want master, metanode or datanode)`);
  }
  const addr = await node.start();
  process.stdout.write(JSON.stringify({ role, addr }) + '\n');
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    node.stop().then(() => process.exit(0), (e: Error) => {
      process.stderr.write(`${role}: stop failed: ${e.message}\n`);
      process.exit(1);
    });
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  // The launcher closes our stdin when it goes away: a node never outlives its cluster.
  process.stdin.on('end', stop);
  process.stdin.resume();
}

main().catch((e: Error) => {
  process.stderr.write(`cubefs node: ${e.message}\n`);
  process.exit(1);
});
