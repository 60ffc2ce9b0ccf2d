/**
 * Packet servers over TCP, for the embedded cluster's metanode and datanodes.
 *
 * Requests on one connection are handled concurrently, but their replies leave in request order, as
 * upstream's pipelined writers expect. A handler returns the reply, several replies (StreamRead), or
 * null to send nothing. A malformed packet closes that connection; other connections are unaffected.
 * With `closeAfterError` (datanodes: upstream's ReplProtocol stops after an error packet) a connection
 * ends right after it carried an error reply: nothing more is read from it or sent on it.
 */
import net from 'node:net';
import { encodeHead, newReply, PacketReader, wireDataLength, type Packet } from '../proto/packet.js';
import { Result } from '../proto/result.js';
import { logger } from '../util/log.js';

const log = logger('server');

export interface RequestContext {
  remote: string;
}

export type PacketHandler = (req: Packet, ctx: RequestContext) => Promise<Packet | Packet[] | null>;

export class PacketServer {
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();
  /** Connections accepted since start (a datanode reports it: clients should reuse theirs). */
  accepted = 0;

  constructor(private readonly name: string, private readonly handler: PacketHandler, private readonly opts: { closeAfterError?: boolean } = {}) {
    this.server = net.createServer((s) => this.serve(s));
  }

  listen(host: string, port: number): Promise<string> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.removeListener('error', reject);
        const a = this.server.address() as net.AddressInfo;
        resolve(`${host}:${a.port}`);
      });
    });
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  private serve(sock: net.Socket): void {
    this.accepted++;
    this.sockets.add(sock);
    sock.setNoDelay(true);
    const remote = `${sock.remoteAddress}:${sock.remotePort}`;
    const reader = new PacketReader();
    let tail: Promise<void> = Promise.resolve();
    let ending = false;
    sock.on('close', () => this.sockets.delete(sock));
    sock.on('error', (e) => log('%s %s: %s', this.name, remote, e.message));
    sock.on('data', (chunk: Buffer) => {
      if (ending) return;
      let reqs: Packet[];
      try {
        reqs = reader.push(chunk);
      } catch (e) {
        log('%s %s: %s; closing', this.name, remote, (e as Error).message);
        sock.destroy();
        return;
      }
      for (const req of reqs) {
        const work = this.handler(req, { remote }).catch((e: Error) => {
          log('%s %s: op 0x%s failed: %s', this.name, remote, req.opcode.toString(16), e.stack ?? e.message);
          return newReply(req, Result.Err, Buffer.from(e.message));
        });
        const prev = tail;
        tail = (async () => {
          const out = await work;
          await prev;
          if (sock.destroyed || ending || out === null) return;
          for (const p of Array.isArray(out) ? out : [out]) {
            const n = wireDataLength(p);
            sock.cork();
            sock.write(encodeHead(p));
            if (n > 0) sock.write(n === p.data.length ? p.data : p.data.subarray(0, n));
            sock.uncork();
            if (p.resultCode !== Result.Ok && this.opts.closeAfterError) {
              ending = true;
              sock.end();
              return;
            }
          }
        })();
      }
    });
  }
}
