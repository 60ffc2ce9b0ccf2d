/** The end-of-run table: one row per workload metric, the three targets and the mount's ratios to them. */
import type { TargetId } from './targets.js';
import type { Unit } from './workloads.js';

export interface Cell {
  status: 'ok' | 'failed' | 'n/a' | 'skipped';
  metrics?: Record<string, number>;
  error?: string;
  seconds?: number;
  prep?: { bytes: number; seconds: number };
  raw?: unknown;
  command?: string[];
}

export interface Row {
  workload: string;
  metric: string;
  unit: Unit;
  higherIsBetter: boolean;
  values: Record<TargetId, number | null>;
  status: Record<TargetId, Cell['status']>;
  /** mount / B0 and mount / B1 (values, not "goodness": for latency > 1 means the mount is slower). */
  mountOverB0: number | null;
  mountOverB1: number | null;
}

export function fmtValue(v: number, unit: Unit): string {
  if (unit === 'IOPS') return v >= 100 ? Math.round(v).toLocaleString('en-US') : v.toFixed(1);
  if (v >= 1000) return Math.round(v).toLocaleString('en-US');
  if (v >= 100) return v.toFixed(0);
  if (v >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

function fmtRatio(r: number | null): string {
  if (r === null || !Number.isFinite(r)) return '-';
  return r >= 10 ? `${r.toFixed(0)}x` : r >= 0.1 ? `${r.toFixed(2)}x` : `${r.toPrecision(2)}x`;
}

function fmtCell(row: Row, t: TargetId): string {
  const v = row.values[t];
  if (v !== null) return fmtValue(v, row.unit);
  return row.status[t] === 'ok' ? '-' : row.status[t];
}

export function ratio(a: number | null, b: number | null): number | null {
  return a === null || b === null || b === 0 ? null : a / b;
}

export function renderTable(rows: Row[]): string {
  const head = ['workload', 'metric', 'unit', 'mount', 'B0 tmpfs', 'B1 nullfs', 'mount/B0', 'mount/B1'];
  const body = rows.map((r) => [
    r.workload, r.metric, r.unit, fmtCell(r, 'mount'), fmtCell(r, 'b0'), fmtCell(r, 'b1'),
    fmtRatio(r.mountOverB0), fmtRatio(r.mountOverB1),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const right = (i: number): boolean => i >= 3;
  const line = (cells: string[]): string => `| ${cells.map((c, i) => (right(i) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join(' | ')} |`;
  const sep = `|${widths.map((w, i) => (right(i) ? '-'.repeat(w + 1) + ':' : '-'.repeat(w + 2))).join('|')}|`;
  return [line(head), sep, ...body.map(line)].join('\n');
}
