/** Tiny argv helpers shared by the benchmark's entry points. */
export function argValue(argv: string[], name: string): string | undefined {
  const i = argv.indexOf(name);
  if (i >= 0) return argv[i + 1];
  const eq = argv.find((a) => a.startsWith(name + '='));
  return eq === undefined ? undefined : eq.slice(name.length + 1);
}

export function need(argv: string[], name: string): string {
  const v = argValue(argv, name);
  if (v === undefined || v === '') {
    process.stderr.write(`missing ${name}\n`);
    process.exit(2);
  }
  return v;
}

/** Writes JSON atomically (the parent polls for the file). */
export async function writeJson(file: string, value: unknown): Promise<void> {
  const { writeFileSync, renameSync } = await import('node:fs');
  writeFileSync(file + '.tmp', JSON.stringify(value, null, 2));
  renameSync(file + '.tmp', file);
}
