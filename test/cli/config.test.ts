/**
 * Mount settings from flags, -o and fuse.json: which kind each option is, what wins, what is refused, and
 * that the argv a background parent hands its child means the same settings.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { CliError, debugNamespaces, parseOptions, readConfigFile, resolveSettings, settingsToArgv } from '../../src/cli/config.js';
import { tempDir } from '../support/cluster.js';

const quiet = (): void => {};

t.test('-o: our keys, FUSE options passed through, mount(8) options dropped', async (t) => {
  const o = parseOptions(['master=10.0.0.1:17010;10.0.0.2:17010,vol=v,owner=o', 'ro,noatime,nosuid,defaults,_netdev,nofail,noauto,user,rw,comment=x,x-systemd.automount,attrValid=3,lookupValid=0,fsyncOnClose,allow_other'], quiet);
  t.same(o.masters, ['10.0.0.1:17010', '10.0.0.2:17010'], 'several masters separated by ;');
  t.equal(o.vol, 'v');
  t.equal(o.owner, 'o', 'owner=NAME is the volume owner');
  t.equal(o.readOnly, true, 'ro');
  t.equal(o.attrValid, 3, 'attrValid in seconds');
  t.equal(o.lookupValid, 0, '0 seconds: no kernel cache');
  t.equal(o.fsyncOnClose, true, 'bare fsyncOnClose is true');
  t.same(o.fuseOptions, ['noatime', 'nosuid'], 'FUSE options pass, mount(8)-only and implied ones do not');
  t.equal(parseOptions(['owner'], quiet).owner, undefined, 'a bare "owner" is mount(8)\'s, not ours');
  t.equal(o.writecache, undefined, 'writecache unset: the mount\'s default (off)');
  t.equal(parseOptions(['writecache=false'], quiet).writecache, false, 'writecache=false turns the writeback cache off');
  t.equal(parseOptions(['writecache'], quiet).writecache, true, 'bare writecache is true');
  t.equal(o.writeBehind, undefined, 'writeBehind unset: the default (on)');
  t.equal(parseOptions(['writeBehind=false'], quiet).writeBehind, false, 'writeBehind=false turns write-behind off');
  t.match(parseOptions(['followerRead,nearRead=true'], quiet), { followerRead: true, nearRead: true }, 'upstream\'s followerRead and nearRead');
  t.equal(o.followerRead, undefined, 'followerRead unset: reads go to the leader unless the volume says otherwise');
  t.throws(() => parseOptions(['frobnicate'], quiet), CliError, 'an unknown option is refused');
  const warned: string[] = [];
  parseOptions(['frobnicate'], (m) => warned.push(m), true);
  t.match(warned[0], /frobnicate: unknown mount option.*ignored/, 'sloppy (mount -s): a warning');
  t.throws(() => parseOptions(['master=nohost'], quiet), /not HOST:PORT/, 'a bad master address');
  t.throws(() => parseOptions(['attrValid=soon'], quiet), /not a number of seconds/, 'a bad duration');
  t.throws(() => parseOptions(['attrValid=-5'], quiet), { message: '-o attrValid=-5: -5 is negative; give 0 or more seconds (0: no kernel cache; leave it out for the default)', exitCode: 2 }, 'a negative attrValid is refused');
  t.throws(() => parseOptions(['lookupValid=-1'], quiet), /-o lookupValid=-1: -1 is negative/, 'and lookupValid');
  t.throws(() => parseOptions(['subdir=/a'], quiet), /sub-directory/, 'subdir is refused');
  t.equal(parseOptions(['flushInterval=2.5'], quiet).flushInterval, 2.5, 'flushInterval: seconds between recordings of a written file\'s extents');
  t.equal(parseOptions(['flushInterval=0'], quiet).flushInterval, 0, 'flushInterval=0: only at fsync and close');
  t.throws(() => parseOptions(['flushInterval=-1'], quiet), /not a number of seconds \(0\.\.3600/, 'a negative flushInterval is refused');
});

t.test('fuse.json: upstream keys, string numbers and booleans, warnings for the rest', async (t) => {
  const dir = tempDir(t);
  const f = path.join(dir, 'fuse.json');
  fs.writeFileSync(f, JSON.stringify({
    masterAddr: 'a:1,b:2', mountPoint: '/mnt/x', volName: 'v', owner: 'o', logDir: '/tmp/l', logLevel: 'INFO',
    attrValid: '30', lookupValid: 30, rdonly: 'true', fsyncOnClose: false, writecache: 'false', enableXattr: 'false', icacheTimeout: '5', zzz: 1,
    followerRead: 'true', nearRead: false, flushInterval: 10,
  }));
  const warned: string[] = [];
  const c = readConfigFile(f, (m) => warned.push(m));
  t.same(c.masters, ['a:1', 'b:2']);
  t.equal(c.attrValid, 30, 'a number in a string, as upstream files have');
  t.equal(c.lookupValid, 30);
  t.equal(c.readOnly, true, '"true" is true');
  t.equal(c.fsyncOnClose, false);
  t.equal(c.writecache, false, 'upstream\'s writecache key: the FUSE writeback cache');
  t.equal(c.logLevel, 'info', 'log level, any case');
  t.match(c, { followerRead: true, nearRead: false }, 'followerRead and nearRead, as upstream\'s keys');
  t.equal(c.flushInterval, 10, 'flushInterval (ours)');
  t.equal(warned.length, 3, 'three warnings');
  t.match(warned.join('\n'), /enableXattr: extended attributes are always enabled/);
  t.match(warned.join('\n'), /icacheTimeout: not implemented by this client/);
  t.match(warned.join('\n'), /zzz: unknown key/);
  fs.writeFileSync(f, JSON.stringify({ attrValid: -5 }));
  t.throws(() => readConfigFile(f, quiet), { message: `config ${f}: attrValid: -5 is negative; give 0 or more seconds (0: no kernel cache; leave it out for the default)` }, 'a negative attrValid in fuse.json is refused');
  fs.writeFileSync(f, JSON.stringify({ lookupValid: '-1' }));
  t.throws(() => readConfigFile(f, quiet), /lookupValid: -1 is negative/, 'and lookupValid, as a string too');
  fs.writeFileSync(f, '{ not json');
  t.throws(() => readConfigFile(f, quiet), /not valid JSON/, 'bad JSON is a clear error');
  t.throws(() => readConfigFile(path.join(dir, 'absent.json'), quiet), /no such file/, 'so is a missing file');
});

t.test('precedence: the file, then -o, then flags; the child argv round-trips', async (t) => {
  const dir = tempDir(t);
  const f = path.join(dir, 'fuse.json');
  fs.writeFileSync(f, JSON.stringify({ masterAddr: 'file:1', mountPoint: '/mnt/file', volName: 'filevol', owner: 'fileowner', attrValid: 9 }));
  const s = resolveSettings({ config: f, options: ['vol=optvol,attrValid=4,noatime,writeBehind=false,followerRead,flushInterval=3'], owner: 'flagowner', mountpoint: '/mnt/flag' }, quiet);
  t.equal(s.mountpoint, '/mnt/flag', 'the positional mountpoint wins');
  t.equal(s.vol, 'optvol', '-o beats the file');
  t.equal(s.owner, 'flagowner', 'a flag beats the file');
  t.same(s.masters, ['file:1'], 'the file fills in the rest');
  t.equal(s.attrValid, 4);
  t.equal(s.writeBehind, false, 'writeBehind=false');
  t.equal(s.followerRead, true, 'followerRead');
  t.equal(s.flushInterval, 3, 'flushInterval');
  t.equal(s.logDir, '/var/log/cubefs-mount', 'default log dir');

  const argv = settingsToArgv(s);
  const i = (k: string): string => argv[argv.indexOf(k) + 1]!;
  t.notOk(argv.includes(s.owner), 'the owner is not on that command line (ps shows it to every user)');
  const back = resolveSettings({ mountpoint: argv[0]!, master: i('--master'), vol: i('--vol'), envOwner: s.owner, logDir: i('--log-dir'), options: [i('-o')] }, quiet);
  t.same(back, s, 'the argv the background parent hands its child, with the owner in CUBEFS_OWNER, means the same settings');
  t.equal(resolveSettings({ mountpoint: '/m', master: 'h:1', vol: 'v', envOwner: 'fromenv' }, quiet).owner, 'fromenv', 'CUBEFS_OWNER alone names the owner');
  t.equal(resolveSettings({ mountpoint: '/m', master: 'h:1', vol: 'v', owner: 'flag', envOwner: 'fromenv' }, quiet).owner, 'flag', 'a flag wins over it');

  t.throws(() => resolveSettings({ options: [] }, quiet), /missing a mountpoint.*--master.*--vol.*--owner/, 'says everything that is missing');
  t.equal(debugNamespaces('debug'), 'cubefs:*', 'logLevel debug: every part');
  t.equal(debugNamespaces('error'), '', 'logLevel error: nothing');
});
