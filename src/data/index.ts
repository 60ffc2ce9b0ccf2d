export { DataClient, type DataClientOptions } from './client.js';
export { FileStream, type ExtentMetaOps } from './stream.js';
export type { DataPartitionSource } from './partitions.js';
export { insertKey, mapRange, truncateKeys } from './extent-map.js';
