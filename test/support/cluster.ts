/**
 * Test support: an embedded cluster in a temp dir, torn down with the test, and a connected client.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import type { Test } from 'tap';
import { EmbeddedCluster, type ClusterOptions } from '../../src/cluster/launcher.js';
import { CubeFSClient } from '../../src/sdk/client.js';

export function tempDir(t: Test, prefix = 'cubefs-test-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export async function startCluster(t: Test, opts: Partial<ClusterOptions> = {}): Promise<EmbeddedCluster> {
  const dir = opts.dir ?? tempDir(t);
  const cluster = await EmbeddedCluster.start({ processes: false, masterPort: 0, heartbeatMs: 500, ...opts, dir });
  t.teardown(() => cluster.stop());
  return cluster;
}

export async function connect(t: Test, cluster: EmbeddedCluster): Promise<CubeFSClient> {
  const client = await CubeFSClient.connect({ masters: cluster.masterAddr, vol: cluster.vol, owner: cluster.owner, refreshMs: 1000 });
  t.teardown(() => client.close());
  return client;
}

/** Pseudo-random bytes, fast for large sizes (a random block repeated with a counter). Each call differs: keep the buffer to compare. */
export function pattern(size: number, seed = 1): Buffer {
  const block = randomBytes(64 * 1024);
  const out = Buffer.allocUnsafe(size);
  for (let o = 0, i = seed; o < size; o += block.length, i++) {
    block.writeUInt32BE(i, 0);
    block.copy(out, o, 0, Math.min(block.length, size - o));
  }
  return out;
}

export const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** The error a promise rejects with (fails the test if it resolves). */
export async function failure(p: Promise<unknown>): Promise<Error & { code?: string; errno?: number }> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected the operation to fail, it succeeded');
}

/** t.rejects with an object pattern (tap's typing wants ErrorMatch). */
export async function rejects(t: Test, p: Promise<unknown>, wanted: Record<string, unknown>, msg?: string): Promise<void> {
  t.match(await failure(p), wanted, msg ?? 'fails as expected');
}
