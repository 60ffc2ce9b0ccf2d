/**
 * Mount settings: what `cubefs-mount MOUNTPOINT ...`, `-c fuse.json` and `-o a,b=c` say, merged into one
 * MountSettings (the file first, then -o, then the flags: the command line wins).
 *
 * fuse.json uses upstream's client keys (proto/mount_options.go): masterAddr, mountPoint, volName, owner,
 * logDir, logLevel, attrValid and lookupValid (seconds, 0 or more; a negative number is refused), rdonly,
 * fsyncOnClose, writecache (FUSE writeback cache), followerRead, nearRead, enableXattr, subdir; and ours:
 * writeBehind (default true), flushInterval (seconds, default 2: how often a file being written has its extents
 * recorded besides fsync and close),
 * rdma, rdmaPort, rdmaPoolMB. Upstream keys this client does not implement are warned about and ignored, as are keys nobody knows; `subdir` is refused (mounting a sub-directory is not supported yet).
 *
 * `-o` mixes three kinds: our keys (the same as fuse.json, plus short forms master=, vol=, ro), FUSE/VFS
 * options handed to the kernel mount (noatime, nosuid, ...), and mount(8)'s own options, which it passes to
 * helpers and which mean nothing here (defaults, _netdev, nofail, x-*, ...): those are dropped.
 */
import fs from 'node:fs';
import path from 'node:path';

/** A user's mistake: printed as one line, exit status 1 (or 2 for usage). */
export class CliError extends Error {
  constructor(message: string, readonly exitCode = 1) {
    super(message);
    this.name = 'CliError';
  }
}

export interface MountSettings {
  mountpoint: string;
  masters: string[];
  vol: string;
  owner: string;
  /** Seconds; undefined: the file system's default. */
  attrValid?: number;
  lookupValid?: number;
  readOnly: boolean;
  /** undefined: the file system's default. */
  fsyncOnClose?: boolean;
  /** FUSE writeback cache (upstream's writecache); undefined: mountVolume's default (off). */
  writecache?: boolean;
  /** Write-behind of small buffered writes (ours); undefined: the default (on). */
  writeBehind?: boolean;
  /** Reads from any replica (upstream's followerRead); undefined: off unless the volume has it on. */
  followerRead?: boolean;
  /** With followerRead, the nearest replica first (upstream's nearRead). */
  nearRead?: boolean;
  /** Seconds between recordings of a written file's extents while it stays open (ours; default 2, 0: at fsync and close only). */
  flushInterval?: number;
  /** Options for the kernel mount (noatime, nosuid, ...). */
  fuseOptions: string[];
  logDir: string;
  logLevel?: LogLevel;
  /** Overrides logDir/<vol>.log (the demo keeps its log beside its cluster). */
  logFile?: string;
  /** Data path to the datanodes: auto (default: RDMA where it works), on (required), off (TCP). */
  rdma?: RdmaModeSetting;
  /** The datanodes' RDMA port (default 17360), or 'same' (their TCP port number: the embedded cluster). */
  rdmaPort?: number | 'same';
  /** Registered memory for FUSE buffers and RDMA payloads, MiB (default 256). */
  rdmaPoolMB?: number;
}

export type RdmaModeSetting = 'auto' | 'on' | 'off';

function rdmaMode(v: unknown, where: string): RdmaModeSetting {
  const s = str(v, where).toLowerCase();
  if (s !== 'auto' && s !== 'on' && s !== 'off') throw new CliError(`${where}: "${s}" is not auto, on or off`, 2);
  return s;
}

function rdmaPort(v: unknown, where: string): number | 'same' {
  if (v === 'same') return 'same';
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^\d+$/.test(v.trim()) ? Number(v) : NaN;
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new CliError(`${where}: "${String(v)}" is not a port (1..65535) or "same"`, 2);
  return n;
}

function flushSeconds(v: unknown, where: string): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' && v.trim() !== '' ? Number(v) : NaN;
  if (!Number.isFinite(n) || n < 0 || n > 3600) throw new CliError(`${where}: "${String(v)}" is not a number of seconds (0..3600; 0: only at fsync and close)`, 2);
  return n;
}

function poolMB(v: unknown, where: string): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^\d+$/.test(v.trim()) ? Number(v) : NaN;
  if (!Number.isInteger(n) || n < 16 || n > 65536) throw new CliError(`${where}: "${String(v)}" is not a size in MiB (16..65536)`, 2);
  return n;
}

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error'];
export const DEFAULT_LOG_DIR = '/var/log/cubefs-mount';

/** What the command line said, before merging. */
export interface MountFlags {
  mountpoint?: string;
  master?: string;
  vol?: string;
  owner?: string;
  config?: string;
  options?: string[];
  logDir?: string;
  logLevel?: string;
  logFile?: string;
  readOnly?: boolean;
  rdma?: string;
  /** Unknown -o options are warnings instead of errors (mount -s). */
  sloppy?: boolean;
  /** The owner from the environment (OWNER_ENV): used when no flag, option or file names one. */
  envOwner?: string;
}

/**
 * The environment variable that may carry the volume's owner: unlike a command line, which every local user
 * can read (`ps`), a process's environment is readable by its own user only. The background parent hands the
 * owner to its child this way.
 */
export const OWNER_ENV = 'CUBEFS_OWNER';

type Partial_ = Partial<Omit<MountSettings, 'masters' | 'fuseOptions'>> & { masters?: string[]; fuseOptions?: string[]; config?: string };

/** FUSE and VFS options the kernel mount understands; handed through. */
const FUSE_PASS = new Set([
  'noatime', 'atime', 'relatime', 'norelatime', 'strictatime', 'nostrictatime', 'nodiratime', 'diratime', 'lazytime', 'nolazytime',
  'nosuid', 'suid', 'nodev', 'dev', 'noexec', 'exec', 'sync', 'async', 'dirsync',
  'allow_other', 'allow_root', 'default_permissions', 'auto_unmount',
]);
const FUSE_PASS_VALUED = new Set(['max_read', 'blksize', 'fsname', 'subtype', 'context', 'fscontext', 'defcontext', 'rootcontext']);
/** Already set by mountVolume (or meaningless twice). */
const FUSE_IMPLIED = new Set(['allow_other', 'default_permissions', 'auto_unmount']);
/** mount(8)'s own options (and fstab's): nothing for the file system. */
const MOUNT8_ONLY = new Set(['defaults', 'auto', 'noauto', 'user', 'nouser', 'users', 'group', 'owner', 'nofail', '_netdev', 'rw', 'loud', 'silent', 'nomand', 'mand']);
const MOUNT8_ONLY_VALUED = new Set(['comment', 'user', 'helper', 'uhelper']);

/** Upstream fuse.json keys this client accepts but does not implement (warned, ignored). */
const UPSTREAM_IGNORED = new Set([
  'warnLogDir', 'profPort', 'locallyProf', 'icacheTimeout', 'readRate', 'writeRate', 'enSyncWrite', 'autoInvalData',
  'keepcache', 'maximallyRead', 'authenticate', 'clientKey', 'ticketHost',
  'enableHTTPS', 'certFile', 'accessKey', 'secretKey', 'disableDcache', 'maxcpus', 'enablePosixACL', 'enableSummary',
  'enableUnixPermission', 'requestTimeout', 'volType', 'ebsEndpoint', 'ebsServerPath', 'cacheAction', 'ebsBlockSize',
  'bcacheDir', 'readThreads', 'writeThreads', 'metaSendTimeout', 'buffersTotalLimit', 'buffersChanSize',
  'maxStreamerLimit', 'bcacheFilterFiles', 'bcacheBatchCnt', 'bcacheCheckIntervalS', 'enableAudit',
  'minWriteAbleDataPartitionCnt', 'fileSystemName', 'snapshotReadSeq', 'disableMountSubtype', 'streamRetryTimeout',
  'enableBcacheOnlyForNotSSD', 'remoteCacheFollowerRead', 'remoteCacheMaxFileSize', 'enableRemoteCacheOnlyForNotSSD',
  'exporterPort', 'consulAddr', 'enableTransaction', 'txTimeout', 'txConflictRetryNum', 'txConflictRetryInterval',
]);

const HOSTPORT = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/;

/** "h:p,h:p" (or a list) -> validated addresses. */
export function parseMasters(v: string | string[], where: string): string[] {
  const list = (Array.isArray(v) ? v : [v]).flatMap((s) => s.split(/[,;]/)).map((s) => s.trim()).filter((s) => s.length > 0);
  if (list.length === 0) throw new CliError(`${where}: no master address (HOST:PORT[,HOST:PORT...])`, 2);
  for (const a of list) {
    const m = HOSTPORT.exec(a);
    if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535) throw new CliError(`${where}: "${a}" is not HOST:PORT`, 2);
  }
  return list;
}

function seconds(v: unknown, where: string): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' && v.trim() !== '' ? Number(v) : NaN;
  if (!Number.isFinite(n)) throw new CliError(`${where}: "${String(v)}" is not a number of seconds`, 2);
  // Taken as "the default" once, silently: a typo then looked like a setting that worked.
  if (n < 0) throw new CliError(`${where}: ${n} is negative; give 0 or more seconds (0: no kernel cache; leave it out for the default)`, 2);
  return n;
}

function bool(v: unknown, where: string): boolean {
  if (v === true || v === false) return v;
  if (typeof v === 'string' && /^(true|1|yes|on)$/i.test(v)) return true;
  if (typeof v === 'string' && /^(false|0|no|off)$/i.test(v)) return false;
  throw new CliError(`${where}: "${String(v)}" is not true or false`, 2);
}

function str(v: unknown, where: string): string {
  if (typeof v !== 'string' || v.trim() === '') throw new CliError(`${where}: expected a non-empty string`, 2);
  return v.trim();
}

function logLevel(v: unknown, where: string): LogLevel {
  const s = str(v, where).toLowerCase();
  if (!(LOG_LEVELS as string[]).includes(s)) throw new CliError(`${where}: "${s}" is not one of ${LOG_LEVELS.join(', ')}`, 2);
  return s as LogLevel;
}

function refuseSubdir(v: unknown, where: string): void {
  if (v === undefined || v === null || v === '' || v === '/') return;
  throw new CliError(`${where}: mounting a sub-directory ("${String(v)}") is not supported by this client; mount the volume's root`, 2);
}

/** Reads an upstream-style fuse.json. Warnings (unknown or unimplemented keys) go to `warn`. */
export function readConfigFile(file: string, warn: (msg: string) => void): Partial_ {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new CliError(`config ${file}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`, 2);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new CliError(`config ${file}: not valid JSON (${(e as Error).message})`, 2);
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new CliError(`config ${file}: expected a JSON object`, 2);
  const out: Partial_ = {};
  for (const [k, v] of Object.entries(json as Record<string, unknown>)) {
    const where = `config ${file}: ${k}`;
    switch (k) {
      case 'masterAddr': out.masters = parseMasters(str(v, where), where); break;
      case 'mountPoint': out.mountpoint = str(v, where); break;
      case 'volName': out.vol = str(v, where); break;
      case 'owner': out.owner = str(v, where); break;
      case 'logDir': out.logDir = str(v, where); break;
      case 'logLevel': out.logLevel = logLevel(v, where); break;
      case 'attrValid': out.attrValid = seconds(v, where); break;
      case 'lookupValid': out.lookupValid = seconds(v, where); break;
      case 'rdonly': out.readOnly = bool(v, where); break;
      case 'fsyncOnClose': out.fsyncOnClose = bool(v, where); break;
      case 'writecache': out.writecache = bool(v, where); break;
      case 'writeBehind': out.writeBehind = bool(v, where); break;
      case 'followerRead': out.followerRead = bool(v, where); break;
      case 'nearRead': out.nearRead = bool(v, where); break;
      case 'flushInterval': out.flushInterval = flushSeconds(v, where); break;
      case 'enableXattr':
        if (!bool(v, where)) warn(`${where}: extended attributes are always enabled in this client`);
        break;
      case 'subdir': refuseSubdir(v, where); break;
      case 'rdma': out.rdma = rdmaMode(v, where); break;
      case 'rdmaPort': out.rdmaPort = rdmaPort(v, where); break;
      case 'rdmaPoolMB': out.rdmaPoolMB = poolMB(v, where); break;
      default:
        if (UPSTREAM_IGNORED.has(k)) warn(`${where}: not implemented by this client, ignored`);
        else warn(`${where}: unknown key, ignored`);
    }
  }
  return out;
}

/** Parses -o values ("a,b=c", possibly several). */
export function parseOptions(list: string[], warn: (msg: string) => void, sloppy = false): Partial_ {
  const out: Partial_ = { fuseOptions: [] };
  for (const item of list.flatMap((s) => s.split(',')).map((s) => s.trim()).filter((s) => s.length > 0)) {
    const eq = item.indexOf('=');
    const key = eq < 0 ? item : item.slice(0, eq);
    const val = eq < 0 ? undefined : item.slice(eq + 1);
    const where = `-o ${item}`;
    const need = (): string => {
      if (val === undefined || val === '') throw new CliError(`${where}: needs a value (${key}=...)`, 2);
      return val;
    };
    switch (key) {
      case 'master': case 'masterAddr': out.masters = parseMasters(need(), where); continue;
      case 'vol': case 'volName': out.vol = need(); continue;
      case 'config': out.config = need(); continue;
      case 'mountPoint': out.mountpoint = need(); continue;
      case 'logDir': out.logDir = need(); continue;
      case 'logLevel': out.logLevel = logLevel(need(), where); continue;
      case 'attrValid': out.attrValid = seconds(need(), where); continue;
      case 'lookupValid': out.lookupValid = seconds(need(), where); continue;
      case 'ro': case 'rdonly': out.readOnly = val === undefined ? true : bool(val, where); continue;
      case 'fsyncOnClose': out.fsyncOnClose = val === undefined ? true : bool(val, where); continue;
      case 'writecache': out.writecache = val === undefined ? true : bool(val, where); continue;
      case 'writeBehind': case 'writebehind': out.writeBehind = val === undefined ? true : bool(val, where); continue;
      case 'followerRead': out.followerRead = val === undefined ? true : bool(val, where); continue;
      case 'nearRead': out.nearRead = val === undefined ? true : bool(val, where); continue;
      case 'flushInterval': out.flushInterval = flushSeconds(need(), where); continue;
      case 'enableXattr': if (val !== undefined && !bool(val, where)) warn(`${where}: extended attributes are always enabled in this client`); continue;
      case 'subdir': refuseSubdir(val, where); continue;
      case 'rdma': out.rdma = rdmaMode(need(), where); continue;
      case 'rdmaPort': out.rdmaPort = rdmaPort(need(), where); continue;
      case 'rdmaPoolMB': out.rdmaPoolMB = poolMB(need(), where); continue;
      case 'owner':
        // owner=NAME is the volume's owner; a bare "owner" is mount(8)'s "the device owner may mount".
        if (val !== undefined) { out.owner = need(); continue; }
        break;
      default:
    }
    if (/^x-/i.test(key) || (val === undefined ? MOUNT8_ONLY.has(key) : MOUNT8_ONLY_VALUED.has(key))) continue;
    if (val === undefined ? FUSE_PASS.has(key) : FUSE_PASS_VALUED.has(key)) {
      if (!FUSE_IMPLIED.has(key) && !out.fuseOptions!.includes(item)) out.fuseOptions!.push(item);
      continue;
    }
    const msg = `${where}: unknown mount option (ours: master=, vol=, owner=, config=, attrValid=, lookupValid=, ro, fsyncOnClose, writecache=, writeBehind=, followerRead=, nearRead=, flushInterval=, rdma=, rdmaPort=, rdmaPoolMB=; `
      + 'FUSE: noatime, nosuid, nodev, noexec, ...)';
    if (sloppy) warn(`${msg}, ignored`);
    else throw new CliError(msg, 2);
  }
  return out;
}

/** Merges fuse.json (from -c or -o config=), -o and the flags into complete settings, or says what is missing. */
export function resolveSettings(flags: MountFlags, warn: (msg: string) => void): MountSettings {
  const fromO = parseOptions(flags.options ?? [], warn, flags.sloppy);
  const configFile = flags.config ?? fromO.config;
  const fromFile = configFile ? readConfigFile(configFile, warn) : {};
  const fromFlags: Partial_ = {};
  if (flags.mountpoint !== undefined) fromFlags.mountpoint = flags.mountpoint;
  if (flags.master !== undefined) fromFlags.masters = parseMasters(flags.master, '--master');
  if (flags.vol !== undefined) fromFlags.vol = str(flags.vol, '--vol');
  if (flags.owner !== undefined) fromFlags.owner = str(flags.owner, '--owner');
  if (flags.logDir !== undefined) fromFlags.logDir = str(flags.logDir, '--log-dir');
  if (flags.logLevel !== undefined) fromFlags.logLevel = logLevel(flags.logLevel, '--log-level');
  if (flags.logFile !== undefined) fromFlags.logFile = path.resolve(str(flags.logFile, '--log-file'));
  if (flags.readOnly) fromFlags.readOnly = true;
  if (flags.rdma !== undefined) fromFlags.rdma = rdmaMode(flags.rdma, '--rdma');

  const m: Partial_ = { ...(flags.envOwner ? { owner: flags.envOwner } : {}), ...fromFile };
  for (const layer of [fromO, fromFlags]) {
    for (const [k, v] of Object.entries(layer)) if (v !== undefined && k !== 'fuseOptions' && k !== 'config') (m as Record<string, unknown>)[k] = v;
  }
  const missing: string[] = [];
  if (!m.mountpoint) missing.push('a mountpoint (MOUNTPOINT or "mountPoint" in the config)');
  if (!m.masters) missing.push('--master HOST:PORT (or -o master=, "masterAddr")');
  if (!m.vol) missing.push('--vol NAME (or -o vol=, "volName")');
  if (!m.owner) missing.push(`--owner OWNER (or -o owner=, "owner", ${OWNER_ENV})`);
  if (missing.length > 0) throw new CliError(`missing ${missing.join(', ')}; see cubefs-mount --help`, 2);
  if (!/^[A-Za-z0-9_.-]+$/.test(m.vol!)) throw new CliError(`volume name "${m.vol}" has characters a CubeFS volume name cannot have`, 2);

  const s: MountSettings = {
    mountpoint: path.resolve(m.mountpoint!),
    masters: m.masters!,
    vol: m.vol!,
    owner: m.owner!,
    readOnly: m.readOnly ?? false,
    fuseOptions: fromO.fuseOptions ?? [],
    logDir: path.resolve(m.logDir ?? DEFAULT_LOG_DIR),
  };
  if (m.attrValid !== undefined) s.attrValid = m.attrValid;
  if (m.lookupValid !== undefined) s.lookupValid = m.lookupValid;
  if (m.fsyncOnClose !== undefined) s.fsyncOnClose = m.fsyncOnClose;
  if (m.writecache !== undefined) s.writecache = m.writecache;
  if (m.writeBehind !== undefined) s.writeBehind = m.writeBehind;
  if (m.followerRead !== undefined) s.followerRead = m.followerRead;
  if (m.nearRead !== undefined) s.nearRead = m.nearRead;
  if (m.flushInterval !== undefined) s.flushInterval = m.flushInterval;
  if (m.logLevel !== undefined) s.logLevel = m.logLevel;
  if (m.logFile !== undefined) s.logFile = m.logFile;
  if (m.rdma !== undefined) s.rdma = m.rdma;
  if (m.rdmaPort !== undefined) s.rdmaPort = m.rdmaPort;
  if (m.rdmaPoolMB !== undefined) s.rdmaPoolMB = m.rdmaPoolMB;
  return s;
}

/**
 * The command line that mounts exactly these settings but the owner (what the background parent hands its
 * child; the owner goes in OWNER_ENV, out of `ps`).
 */
export function settingsToArgv(s: MountSettings): string[] {
  const o: string[] = [];
  if (s.attrValid !== undefined) o.push(`attrValid=${s.attrValid}`);
  if (s.lookupValid !== undefined) o.push(`lookupValid=${s.lookupValid}`);
  if (s.readOnly) o.push('ro');
  if (s.fsyncOnClose !== undefined) o.push(`fsyncOnClose=${s.fsyncOnClose}`);
  if (s.writecache !== undefined) o.push(`writecache=${s.writecache}`);
  if (s.writeBehind !== undefined) o.push(`writeBehind=${s.writeBehind}`);
  if (s.followerRead !== undefined) o.push(`followerRead=${s.followerRead}`);
  if (s.nearRead !== undefined) o.push(`nearRead=${s.nearRead}`);
  if (s.flushInterval !== undefined) o.push(`flushInterval=${s.flushInterval}`);
  if (s.rdma !== undefined) o.push(`rdma=${s.rdma}`);
  if (s.rdmaPort !== undefined) o.push(`rdmaPort=${s.rdmaPort}`);
  if (s.rdmaPoolMB !== undefined) o.push(`rdmaPoolMB=${s.rdmaPoolMB}`);
  o.push(...s.fuseOptions);
  const argv = [s.mountpoint, '--master', s.masters.join(','), '--vol', s.vol, '--log-dir', s.logDir];
  if (s.logLevel) argv.push('--log-level', s.logLevel);
  if (s.logFile) argv.push('--log-file', s.logFile);
  if (o.length > 0) argv.push('-o', o.join(','));
  return argv;
}

export function logFileOf(s: MountSettings): string {
  return s.logFile ?? path.join(s.logDir, `${s.vol}.log`);
}

/** DEBUG namespaces for a config logLevel (used only when DEBUG is unset). */
export function debugNamespaces(level: LogLevel | undefined): string {
  switch (level) {
    case 'debug': return 'cubefs:*';
    case 'info': return 'cubefs:mount,cubefs:cli,cubefs:cluster';
    default: return '';
  }
}
