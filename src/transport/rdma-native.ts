/**
 * native/rdma/rdma.h, typed: the shapes the addon's RdmaContext takes and returns. Only src/transport/rdma.ts
 * uses these; everything else goes through its classes.
 */
import { loadAddon } from '../util/addon.js';

export interface RdmaPortInfo {
  port: number;
  linkLayer: 'InfiniBand' | 'Ethernet';
  mtu: number;
  state: string;
}
export interface RdmaDeviceInfo {
  name: string;
  guid: string;
  /** Active ports only; a device without one is not listed. */
  ports: RdmaPortInfo[];
}

export interface NativeChannelOptions {
  recvDepth?: number;
  maxRdma?: number;
  timeoutMs?: number;
  rnrRetry?: number;
  backlog?: number;
}

export interface NativeDesc {
  addr: bigint;
  len: number;
  rkey: number;
}

export type NativeEvent =
  | { type: 'established' | 'incoming'; ch: number; listener: number; peer: string; peerRecvDepth: number }
  | { type: 'connectError' | 'error' | 'disconnected'; ch: number; text: string }
  | { type: 'recv'; ch: number; kind: number; packet: Buffer; desc?: NativeDesc }
  | { type: 'op'; ch: number; op: number; ok: boolean; text?: string };

/** Per QP: the credit window's counters (sends never exceed the peer's receives: maxCreditsUsed <= peerRecvDepth). */
export interface RdmaChannelStats {
  sends: number;
  creditBlocks: number;
  creditWaits: number;
  recvs: number;
  creditBlocksReceived: number;
  reads: number;
  writes: number;
  bytesRead: number;
  bytesWritten: number;
  rdmaWaits: number;
  maxCreditsUsed: number;
  minCredits: number;
  credits: number;
  peerRecvDepth: number;
  recvDepth: number;
  queued: number;
  state: 'connecting' | 'established' | 'error';
}

export interface NativeContext {
  connect(host: string, port: number, opts: NativeChannelOptions): number;
  listen(host: string, port: number, opts: NativeChannelOptions): { id: number; port: number };
  send(ch: number, kind: 1 | 2, packet: Buffer, desc?: Uint8Array): void;
  rdma(ch: number, write: boolean, local: Uint8Array, remoteAddr: bigint, rkey: number, len: number, opId: number): void;
  fail(ch: number, why: string): void;
  forceError(ch: number): boolean;
  closeChannel(ch: number): void;
  closeListener(id: number): void;
  channelStats(ch: number): RdmaChannelStats | null;
  info(): { device: string; port: number; closed: boolean; poolRkey?: number; poolLkey?: number };
  close(): void;
}

interface RdmaAddon {
  RdmaContext: new (pool: unknown, device: string | undefined, onEvents: (evs: NativeEvent[]) => void) => NativeContext;
  rdmaDeviceInfo(): RdmaDeviceInfo[];
}

export function rdmaAddon(): RdmaAddon {
  return loadAddon() as unknown as RdmaAddon;
}
