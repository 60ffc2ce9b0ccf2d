/**
 * The cubefs-mount command line.
 *
 *   cubefs-mount MOUNTPOINT --master H:P --vol V --owner O [-o OPTS] [-f]   mount a volume (mount.ts)
 *   cubefs-mount -c fuse.json                                              the same from upstream's config (config.ts)
 *   cubefs-mount umount MOUNTPOINT                                         unmount
 *   cubefs-mount demo [--stop]                                             embedded cluster + mount in the background (demo.ts)
 *   cubefs-mount cluster --dir DIR                                         the embedded cluster in the foreground
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { EmbeddedCluster } from '../cluster/launcher.js';
import { MAX_CAPACITY_GB } from '../cluster/master.js';
import { CliError, OWNER_ENV, resolveSettings, type MountFlags } from './config.js';
import { hasParentChannel, notifyParent } from './daemon.js';
import { DEMO_DIR, DEMO_MOUNTPOINT, demo } from './demo.js';
import { oneLine, runBackground, runForeground, unmount } from './mount.js';

function port(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError('a port number 0-65535');
  return n;
}

function capacityGB(v: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < 1 || n > MAX_CAPACITY_GB) throw new InvalidArgumentError(`a whole number of GB, 1..${MAX_CAPACITY_GB}`);
  return n;
}

const collect = (v: string, prev: string[] | undefined): string[] => [...(prev ?? []), v];
const warn = (msg: string): void => { process.stderr.write(`cubefs-mount: warning: ${msg}\n`); };

const MOUNT_HELP = `
Mounts run in the background: the command returns once the volume is mounted (or prints why it could not
be) and the mount lives on in its own process, logging to LOGDIR/VOL.log (default
/var/log/cubefs-mount/VOL.log). -f keeps it in the foreground, logging to stderr; Ctrl-C or SIGTERM unmounts.
The owner may come from the environment instead (CUBEFS_OWNER), out of sight of ps.

-o options (comma-separated, as in fstab):
  master=H:P[;H:P]  vol=NAME  owner=OWNER   the volume (same as the flags; ';' between masters)
  config=FILE                               read an upstream fuse.json
  attrValid=SEC  lookupValid=SEC            kernel attribute / name cache time (default 1 s)
  ro (or rdonly)  fsyncOnClose              read-only mount; sync data to the replicas on close
  writecache=true|false                     FUSE writeback cache (default false): small writes are
                                            gathered by the kernel; close and fsync still wait; sizes
                                            other clients give cached files are not seen
  followerRead  nearRead                    read from any replica (default: the partition's raft leader,
                                            or any replica if the volume has FollowerRead); nearest first
  flushInterval=SEC                         record a file's written extents at least this often while it
                                            stays open (default 2; 0: only at fsync and close), which
                                            bounds what a killed mount loses
  rdma=auto|on|off  rdmaPort=N|same         data path (as --rdma); the datanodes' RDMA port (default 17360;
  rdmaPoolMB=MB                             "same": their TCP port, as the embedded cluster); pool (256)
  noatime nosuid nodev noexec ...           FUSE and VFS mount options, passed to the kernel
  defaults _netdev nofail noauto x-* ...    mount(8)'s own options, ignored here

fuse.json (upstream's keys): masterAddr, mountPoint, volName, owner, logDir, logLevel (debug, info, warn,
error), attrValid, lookupValid, rdonly, fsyncOnClose, writecache, followerRead, nearRead, and ours: writeBehind,
flushInterval, rdma, rdmaPort, rdmaPoolMB. Flags on the command line override the file.

Examples:
  cubefs-mount /mnt/cubefs --master 127.0.0.1:17010 --vol cubefs --owner cubefs
  cubefs-mount /mnt/cubefs --master 10.0.0.1:17010,10.0.0.2:17010 --vol models --owner ai -o ro,noatime
  cubefs-mount -c /etc/cubefs/fuse.json
  cubefs-mount /mnt/cubefs -c fuse.json -f                    (foreground, e.g. under systemd)
  mount -t fuse.cubefs cubefs /mnt/cubefs -o master=127.0.0.1:17010,owner=cubefs
  /etc/fstab:  cubefs  /mnt/cubefs  fuse.cubefs  master=127.0.0.1:17010,owner=cubefs,_netdev  0 0
  cubefs-mount umount /mnt/cubefs
  cubefs-mount demo                                           (a local cluster, mounted at /mnt/cubefs)

DEBUG=cubefs:* logs every part (DEBUG=cubefs:fs,cubefs:data ... for some).
`;

interface MountCliOptions {
  master?: string;
  vol?: string;
  owner?: string;
  config?: string;
  options?: string[];
  foreground?: boolean;
  readOnly?: boolean;
  logDir?: string;
  logLevel?: string;
  logFile?: string;
  rdma?: string;
  sloppy?: boolean;
}

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('cubefs-mount')
    .usage('MOUNTPOINT --master HOST:PORT[,HOST:PORT] --vol NAME --owner OWNER [-o OPTS] [-f]\n'
      + '       cubefs-mount -c fuse.json [MOUNTPOINT] [-f]\n'
      + '       cubefs-mount umount MOUNTPOINT\n'
      + '       cubefs-mount demo [--dir DIR] [--mountpoint MNT] [--stop]\n'
      + '       cubefs-mount cluster --dir DIR')
    .description('Mount a CubeFS volume with FUSE (libfuse 3). Also runs an embedded cluster for local use.')
    .argument('[mountpoint]', 'directory to mount the volume on')
    .option('--master <addrs>', 'master address(es), HOST:PORT, comma-separated')
    .option('--vol <name>', 'volume name')
    .option('--owner <owner>', 'volume owner (the authentication upstream uses)')
    .option('-c, --config <file>', 'upstream-style fuse.json (masterAddr, mountPoint, volName, owner, ...)')
    .option('-o, --options <opts>', 'mount options, comma-separated (see below); may repeat', collect)
    .option('-f, --foreground', 'stay in the foreground, log to stderr; Ctrl-C unmounts')
    .option('-r, --read-only', 'mount read-only (same as -o ro)')
    .option('--log-dir <dir>', 'directory for the background log VOL.log (default /var/log/cubefs-mount)')
    .option('--log-level <level>', 'debug, info, warn or error (sets DEBUG when it is unset)')
    .option('--rdma <mode>', 'data path to the datanodes: auto (RDMA where a device and the datanode allow, else TCP), on (RDMA required), off (TCP); default auto')
    .addOption(new Option('--log-file <file>', 'log file of the background mount').hideHelp())
    .addOption(new Option('--sloppy', 'unknown -o options are warnings (mount -s)').hideHelp())
    .enablePositionalOptions()
    .showHelpAfterError('(cubefs-mount --help shows usage and examples)')
    .addHelpText('after', MOUNT_HELP)
    .action(async (mountpoint: string | undefined, o: MountCliOptions) => {
      const flags: MountFlags = { options: o.options ?? [] };
      if (mountpoint !== undefined) flags.mountpoint = mountpoint;
      for (const k of ['master', 'vol', 'owner', 'config', 'logDir', 'logLevel', 'logFile', 'readOnly', 'sloppy', 'rdma'] as const) {
        if (o[k] !== undefined) (flags as Record<string, unknown>)[k] = o[k];
      }
      if (process.env[OWNER_ENV]) flags.envOwner = process.env[OWNER_ENV];
      const s = resolveSettings(flags, warn);
      if (o.foreground) process.exitCode = await runForeground(s);
      else await runBackground(s);
    });

  program
    .command('umount')
    .alias('unmount')
    .description('Unmount a CubeFS mount and wait for its process to finish.')
    .argument('<mountpoint>')
    .option('-l, --lazy', 'detach now even if files are open (they stay readable until closed)')
    .addHelpText('after', '\nExample:\n  cubefs-mount umount /mnt/cubefs\n')
    .action(async (mountpoint: string, o: { lazy?: boolean }) => {
      await unmount(mountpoint, { lazy: o.lazy ?? false });
    });

  program
    .command('demo')
    .description('Start the embedded cluster in the background and mount its volume (idempotent); --stop undoes it.')
    .option('--dir <dir>', 'cluster data, pid and logs', DEMO_DIR)
    .option('--mountpoint <dir>', `where to mount (default ${DEMO_MOUNTPOINT}, or where the last demo mounted)`)
    .option('--master-port <port>', 'master HTTP port on first start (0: any free port)', port, 17010)
    .option('--stop', 'unmount and stop the cluster (data stays)')
    .addHelpText('after', '\nExamples:\n  cubefs-mount demo\n  cubefs-mount demo --stop\n'
      + '  cubefs-mount demo --dir /tmp/demo --mountpoint /tmp/demo-mnt --master-port 0\n')
    .action(async (o: { dir: string; mountpoint?: string; masterPort: number; stop?: boolean }) => {
      await demo({
        dir: o.dir, masterPort: o.masterPort, stop: o.stop ?? false,
        ...(o.mountpoint !== undefined ? { mountpoint: o.mountpoint } : {}),
      });
    });

  program
    .command('cluster')
    .description('Start the embedded CubeFS cluster (master, metanode, three datanodes) and keep it running.')
    .requiredOption('--dir <dir>', 'data directory (created if missing; reused on restart)')
    .option('--host <addr>', 'address to listen on (loopback unless you say otherwise)', '127.0.0.1')
    .option('--master-port <port>', 'master HTTP port (0: any free port)', port, 17010)
    .option('--vol <name>', 'volume to create on first start', 'cubefs')
    .option('--owner <owner>', 'owner of that volume', 'cubefs')
    .option('--capacity <GB>', 'volume capacity in GB', capacityGB, 100)
    .addHelpText('after', '\nExample:\n  cubefs-mount cluster --dir /var/lib/cubefs-embedded\n')
    .action(async (o: { dir: string; host: string; masterPort: number; vol: string; owner: string; capacity: number }) => {
      if (!['127.0.0.1', 'localhost', '::1'].includes(o.host)) {
        process.stderr.write(`warning: the embedded cluster listens on ${o.host}: anyone who reaches its metanode and datanode ports `
          + 'can read and write every volume (they have no authentication; see docs/security.md)\n');
      }
      let cluster: EmbeddedCluster;
      try {
        cluster = await EmbeddedCluster.start({
          dir: o.dir, host: o.host, masterPort: o.masterPort, vol: o.vol, owner: o.owner, capacityGB: o.capacity,
        });
      } catch (e) {
        await notifyParent({ ready: false, message: `the embedded cluster did not start: ${oneLine(e)}` });
        throw e;
      }
      process.stdout.write(
        `embedded CubeFS cluster running (data in ${cluster.dir})\n` +
        `  master:    ${cluster.masterAddr}\n  volume:    ${cluster.vol}\n  owner:     ${cluster.owner}\n` +
        `  metanode:  ${cluster.metanodeAddr}\n  datanodes: ${cluster.datanodeAddrs.join(' ')}\n` +
        `  secret:    ${cluster.secretFile} (the admin API wants it: header X-CubeFS-Secret)\n` +
        'stop with Ctrl-C\n',
      );
      const stopped = new Promise<void>((resolve) => {
        const stop = (): void => { void cluster.stop().then(resolve); };
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
      if (hasParentChannel()) {
        await notifyParent({ ready: true, pid: process.pid, master: cluster.masterAddr, vol: cluster.vol, owner: cluster.owner });
      }
      await stopped;
    });
  return program;
}

buildProgram().parseAsync(process.argv).then(
  // Done (a foreground mount set its status when it ended): nothing left open may keep the process.
  () => process.exit(),
  (e: Error) => {
    process.stderr.write(`cubefs-mount: ${oneLine(e)}\n`);
    process.exit(e instanceof CliError ? e.exitCode : 1);
  },
);
