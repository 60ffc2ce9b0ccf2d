/** CRC-32 (IEEE 802.3), as Go's crc32.ChecksumIEEE: the checksum CubeFS puts in every data packet. */
import { crc32 as zcrc32 } from 'node:zlib';

export function crc32(data: Uint8Array, initial = 0): number {
  return zcrc32(data, initial) >>> 0;
}
