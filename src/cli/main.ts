/**
 * The cubefs-mount command line.
 *
 *   cubefs-mount cluster --dir DIR     start the embedded cluster in the foreground
 */
import { Command, InvalidArgumentError } from 'commander';
import { EmbeddedCluster } from '../cluster/launcher.js';

function port(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError('a port number 0-65535');
  return n;
}

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('cubefs-mount')
    .description('A FUSE client for CubeFS, with an embedded cluster for local use.')
    .showHelpAfterError();

  program
    .command('cluster')
    .description('Start the embedded CubeFS cluster (master, metanode, three datanodes) and keep it running.')
    .requiredOption('--dir <dir>', 'data directory (created if missing; reused on restart)')
    .option('--host <addr>', 'address to listen on (loopback unless you say otherwise)', '127.0.0.1')
    .option('--master-port <port>', 'master HTTP port (0: any free port)', port, 17010)
    .option('--vol <name>', 'volume to create on first start', 'cubefs')
    .option('--owner <owner>', 'owner of that volume', 'cubefs')
    .option('--capacity <GB>', 'volume capacity in GB', (v) => Number(v), 100)
    .addHelpText('after', '\nExample:\n  cubefs-mount cluster --dir /var/lib/cubefs-embedded\n')
    .action(async (o: { dir: string; host: string; masterPort: number; vol: string; owner: string; capacity: number }) => {
      if (!['127.0.0.1', 'localhost', '::1'].includes(o.host)) {
        process.stderr.write(`warning: the embedded cluster listens on ${o.host}; it has no authentication beyond the owner name\n`);
      }
      const cluster = await EmbeddedCluster.start({
        dir: o.dir, host: o.host, masterPort: o.masterPort, vol: o.vol, owner: o.owner, capacityGB: o.capacity,
      });
      process.stdout.write(
        `embedded CubeFS cluster running (data in ${cluster.dir})\n` +
        `  master:    ${cluster.masterAddr}\n  volume:    ${cluster.vol}\n  owner:     ${cluster.owner}\n` +
        `  metanode:  ${cluster.metanodeAddr}\n  datanodes: ${cluster.datanodeAddrs.join(' ')}\n` +
        'stop with Ctrl-C\n',
      );
      await new Promise<void>((resolve) => {
        const stop = (): void => { void cluster.stop().then(resolve); };
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
    });
  return program;
}

buildProgram().parseAsync(process.argv).catch((e: Error) => {
  process.stderr.write(`cubefs-mount: ${e.message}\n`);
  process.exit(1);
});
