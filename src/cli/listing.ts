/**
 * `litestream generations`, `snapshots` and `wal`: listings with v0.3.13's columns.
 *
 * @module
 */
import { print } from "./output.ts";
import { formatUsage, parseFlags } from "./flags.ts";
import { CONFIG_FLAGS, formatGoDuration, formatTime, resolveTarget } from "./common.ts";
import { formatTable } from "./table.ts";
import { sortedSnapshots, sortedWalSegments } from "../replica_client.ts";
import { NoBackupError, UsageError } from "../errors.ts";

const LIST_FLAGS = {
  ...CONFIG_FLAGS,
  replica: { type: "string", valueName: "NAME", description: "Only this replica" },
} as const;
const WAL_FLAGS = {
  ...LIST_FLAGS,
  generation: { type: "string", valueName: "NAME", description: "Only this generation" },
} as const;

export const generationsUsage = formatUsage(
  "generations",
  "litestream generations [arguments] DB_PATH|REPLICA_URL\n\nLists the generations of a database's replicas.",
  LIST_FLAGS,
);
export const snapshotsUsage = formatUsage(
  "snapshots",
  "litestream snapshots [arguments] DB_PATH|REPLICA_URL\n\nLists the snapshots of a database's replicas.",
  LIST_FLAGS,
);
export const walUsage = formatUsage(
  "wal",
  "litestream wal [arguments] DB_PATH|REPLICA_URL\n\nLists the WAL segments of a database's replicas.",
  WAL_FLAGS,
);

function onePositional(positionals: string[]): string {
  if (positionals.length === 0) throw new UsageError("Database path or replica URL required");
  if (positionals.length > 1) {
    throw new UsageError(`Too many arguments: ${positionals.slice(1).join(" ")}`);
  }
  return positionals[0];
}

/**
 * Truncates a lag toward zero as v0.3.13's `truncateDuration` does: to the second above
 * 10 s, to 100 ms above 1 s, else to the millisecond.
 */
function truncateLag(ms: number): number {
  const abs = Math.abs(ms);
  const unit = abs > 10_000 ? 1_000 : abs > 1_000 ? 100 : 1;
  return Math.trunc(ms / unit) * unit;
}

async function mtimeOf(path: string): Promise<number | undefined> {
  try {
    return (await Deno.stat(path)).mtime?.getTime();
  } catch {
    return undefined;
  }
}

export async function runGenerations(args: string[]): Promise<number> {
  const { values, positionals } = parseFlags(args, LIST_FLAGS, "generations");
  const target = await resolveTarget(onePositional(positionals), values);
  // Lag is measured from the database's last change (its WAL or file mtime), or now.
  let ref = Date.now();
  if (target.db) {
    // v0.3.13's DB.UpdatedAt: the database file's mtime, or the WAL's if later.
    const dbTime = await mtimeOf(target.db.path);
    const walTime = await mtimeOf(`${target.db.path}-wal`);
    if (dbTime !== undefined) ref = Math.max(dbTime, walTime ?? dbTime);
  }
  const rows: string[][] = [];
  for (const r of target.replicas) {
    for (const gen of await r.client.generations()) {
      const times = [
        ...(await sortedSnapshots(r.client, gen)).map((s) => s.createdAt.getTime()),
        ...(await sortedWalSegments(r.client, gen)).map((s) => s.createdAt.getTime()),
      ];
      if (times.length === 0) continue;
      const start = Math.min(...times), end = Math.max(...times);
      rows.push([
        r.name,
        gen,
        formatGoDuration(truncateLag(ref - end)),
        formatTime(new Date(start)),
        formatTime(new Date(end)),
      ]);
    }
  }
  print(formatTable(["name", "generation", "lag", "start", "end"], rows).trimEnd());
  return 0;
}

export async function runSnapshots(args: string[]): Promise<number> {
  const { values, positionals } = parseFlags(args, LIST_FLAGS, "snapshots");
  const target = await resolveTarget(onePositional(positionals), values);
  const rows: string[][] = [];
  for (const r of target.replicas) {
    for (const gen of await r.client.generations()) {
      for (const s of await sortedSnapshots(r.client, gen)) {
        rows.push([r.name, gen, String(s.index), String(s.size), formatTime(s.createdAt)]);
      }
    }
  }
  print(formatTable(["replica", "generation", "index", "size", "created"], rows).trimEnd());
  return 0;
}

export async function runWal(args: string[]): Promise<number> {
  const { values, positionals } = parseFlags(args, WAL_FLAGS, "wal");
  const target = await resolveTarget(onePositional(positionals), values);
  const rows: string[][] = [];
  for (const r of target.replicas) {
    const gens = await r.client.generations();
    if (values.generation !== undefined && !gens.includes(values.generation)) {
      // Exit 1 as restore does: the flag is well formed, the replica lacks what it names.
      throw new NoBackupError(`Generation "${values.generation}" not found in replica "${r.name}"`);
    }
    for (const gen of values.generation !== undefined ? [values.generation] : gens) {
      for (const s of await sortedWalSegments(r.client, gen)) {
        rows.push([
          r.name,
          gen,
          String(s.index),
          String(s.offset),
          String(s.size),
          formatTime(s.createdAt),
        ]);
      }
    }
  }
  print(
    formatTable(["replica", "generation", "index", "offset", "size", "created"], rows).trimEnd(),
  );
  return 0;
}
