/** Waiting for work that may never finish (a request to a node that stopped answering), up to a bound. */

/** Whether every promise settled within `ms`; they go on regardless. */
export async function settledWithin(ps: Promise<unknown>[], ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => { timer = setTimeout(() => resolve(false), ms); });
  try {
    return await Promise.race([Promise.allSettled(ps).then(() => true as const), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
