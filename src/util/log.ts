/**
 * Logging. Debug output goes through `debug`: DEBUG=cubefs:* turns on every part, DEBUG=cubefs:data one of
 * them. What an operator must see whether or not DEBUG is set (a fault, and what was done about it) goes
 * through warn() and notice(): one line on stderr, which a mount in the background and the cluster's nodes
 * write to their log files.
 */
import createDebug from 'debug';

export type Logger = createDebug.Debugger;

export function logger(part: string): Logger {
  return createDebug(`cubefs:${part}`);
}

interface Said {
  at: number;
  again: number;
}

const said = new Map<string, Said>();
/** The same message (or key) at most once a minute, with how often it came again meanwhile. */
const EVERY_MS = 60_000;
let sink: (line: string) => void = (line) => process.stderr.write(line);

function report(level: 'WARN' | 'NOTE', part: string, msg: string, key: string, everyMs: number): void {
  const now = Date.now();
  const prev = said.get(key);
  if (prev && now - prev.at < everyMs) {
    prev.again++;
    return;
  }
  const again = prev && prev.again > 0 ? ` (and ${prev.again} more time${prev.again > 1 ? 's' : ''} since ${new Date(prev.at).toISOString()})` : '';
  said.set(key, { at: now, again: 0 });
  if (said.size > 10_000) said.clear();
  sink(`${new Date(now).toISOString()} cubefs:${part} ${level} ${msg}${again}\n`);
}

/**
 * A fault and what was done about it, always said. `key` groups messages that are the same fault (default:
 * the message itself): each key at most once per `everyMs` (default a minute).
 */
export function warn(part: string, msg: string, opts: { key?: string; everyMs?: number } = {}): void {
  report('WARN', part, msg, opts.key ?? `${part}:${msg}`, opts.everyMs ?? EVERY_MS);
}

/** An event an operator wants in the log (a leader moved, a node is back), always said; as warn for repeats. */
export function notice(part: string, msg: string, opts: { key?: string; everyMs?: number } = {}): void {
  report('NOTE', part, msg, opts.key ?? `${part}:${msg}`, opts.everyMs ?? 0);
}

/** Tests: where warn() and notice() lines go from now on, each message said afresh (returns the previous sink). */
export function setReportSink(f: (line: string) => void): (line: string) => void {
  const prev = sink;
  sink = f;
  said.clear();
  return prev;
}
