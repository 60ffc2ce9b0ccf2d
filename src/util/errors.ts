/**
 * The SDK's errors: one class, stable string codes, an errno for the file system layer.
 * Wire result codes become errors only through fromResult(), which reads src/proto's single table.
 */
import { constants as os } from 'node:os';
import { resultErrno, resultName } from '../proto/result.js';

const E = os.errno;

export const ErrorCode = {
  MasterUnreachable: 'CUBEFS_MASTER_UNREACHABLE',
  MasterError: 'CUBEFS_MASTER_ERROR',
  VolNotExist: 'CUBEFS_VOL_NOT_EXIST',
  AuthMismatch: 'CUBEFS_AUTH_MISMATCH',
  Timeout: 'CUBEFS_TIMEOUT',
  Network: 'CUBEFS_NETWORK',
  BadPacket: 'CUBEFS_BAD_PACKET',
  CrcMismatch: 'CUBEFS_CRC_MISMATCH',
  Result: 'CUBEFS_RESULT',
  NoPartition: 'CUBEFS_NO_PARTITION',
  Closed: 'CUBEFS_CLOSED',
  Invalid: 'CUBEFS_INVALID',
  NoRdmaDevice: 'CUBEFS_NO_RDMA_DEVICE',
} as const;
export type ErrorCodeValue = (typeof ErrorCode)[keyof typeof ErrorCode];

export class CubeFSError extends Error {
  readonly code: ErrorCodeValue;
  readonly errno: number;
  /** Wire result code when the error came from a reply. */
  readonly result?: number;
  /** Safe to try again (on this or another replica). */
  readonly retryable: boolean;

  constructor(code: ErrorCodeValue, message: string, opts: { errno?: number; result?: number; retryable?: boolean; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'CubeFSError';
    this.code = code;
    this.errno = opts.errno ?? E.EIO;
    if (opts.result !== undefined) this.result = opts.result;
    this.retryable = opts.retryable ?? false;
  }

  static fromResult(rc: number, what: string, detail?: string, retryable = false): CubeFSError {
    const msg = `${what}: ${resultName(rc)}${detail ? ` (${detail})` : ''}`;
    return new CubeFSError(ErrorCode.Result, msg, { errno: resultErrno(rc), result: rc, retryable });
  }
}

export function isCubeFSError(e: unknown, code?: ErrorCodeValue): e is CubeFSError {
  return e instanceof CubeFSError && (code === undefined || e.code === code);
}

/** errno for any error thrown below the fs layer. */
export function errnoOf(e: unknown): number {
  if (e instanceof CubeFSError) return e.errno;
  const n = (e as { errno?: unknown })?.errno;
  return typeof n === 'number' && n > 0 ? n : E.EIO;
}

/** The symbolic name of an errno value ("ENOENT"), or undefined for an unknown one. */
export function errnoName(n: number): string | undefined {
  return Object.entries(E).find(([, v]) => v === n)?.[0];
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
