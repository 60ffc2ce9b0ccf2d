/** Request ids as upstream seeds them: unix_seconds << 32 + 1, then one up per request, process-wide. */
let next = (BigInt(Math.floor(Date.now() / 1000)) << 32n) + 1n;

export function nextReqId(): bigint {
  return next++;
}
