import t from 'tap';
import { decodePacket, encodePacket, newPacket, Op, PacketReader, crc32, goModeToPosix, posixToGoMode } from '../../src/proto/index.js';

t.test('a request encodes in the 69-byte form and decodes back', async (t) => {
  const data = Buffer.from('hello');
  const p = newPacket({ opcode: Op.Write, partitionId: 2, extentId: 1027, reqId: 7711599005280501946n, data, crc: crc32(data), arg: Buffer.from('a:1/b:2/') });
  const wire = encodePacket(p);
  t.equal(wire.length, 69 + 8 + 5);
  const { packet } = decodePacket(wire);
  t.equal(packet.reqId, p.reqId);
  t.same(packet.data, data);
  t.same(packet.arg.toString(), 'a:1/b:2/');
  const r = new PacketReader();
  const out = [...r.push(wire.subarray(0, 10)), ...r.push(wire.subarray(10, 70)), ...r.push(wire.subarray(70))];
  t.equal(out.length, 1);
  t.equal(r.buffered, 0);
});

t.test('Go FileMode round trip', async (t) => {
  t.equal(goModeToPosix(2147484159), 0o40777);
  t.equal(posixToGoMode(0o40755), 2147484141);
  t.equal(goModeToPosix(420), 0o100644);
});
