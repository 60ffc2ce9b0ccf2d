export * from './opcode.js';
export * from './result.js';
export * from './crc32.js';
export * from './mode.js';
export * from './packet.js';
export * from './types.js';
