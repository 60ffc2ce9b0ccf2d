/**
 * The native addon (build/Release/cubefs_native.node), found by walking up from this module, loaded once.
 * Each part types the exports it uses (src/fuse/native.ts, src/transport/rdma-native.ts).
 */
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

let addon: Record<string, unknown> | null = null;

export function loadAddon(): Record<string, unknown> {
  if (addon) return addon;
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const p = path.join(dir, 'build', 'Release', 'cubefs_native.node');
    if (fs.existsSync(p)) {
      addon = createRequire(import.meta.url)(p) as Record<string, unknown>;
      return addon;
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error('cubefs_native.node not found: run `npx node-gyp rebuild`');
    dir = up;
  }
}
