/** Logging through `debug`: DEBUG=cubefs:* turns on every part, DEBUG=cubefs:data one of them. */
import createDebug from 'debug';

export type Logger = createDebug.Debugger;

export function logger(part: string): Logger {
  return createDebug(`cubefs:${part}`);
}
