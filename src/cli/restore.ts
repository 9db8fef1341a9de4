/**
 * `litestream restore`: latest or point-in-time restore from a replica.
 *
 * @module
 */
import { formatUsage, parseFlags } from "./flags.ts";
import {
  CONFIG_FLAGS,
  type NamedClient,
  parseIndex,
  parseTimestamp,
  resolveTarget,
} from "./common.ts";
import {
  calcRestoreTarget,
  DEFAULT_RESTORE_PARALLELISM,
  removeAbandonedRestores,
  restore,
  type RestoreTarget,
} from "../restore.ts";
import { NoBackupError, UsageError } from "../errors.ts";
import { absPath, dirname, exists } from "../internal/fs.ts";
import type { Logger } from "../log.ts";

export const FLAGS = {
  ...CONFIG_FLAGS,
  o: {
    type: "string",
    valueName: "PATH",
    description: "Output path of the restored database (default: the database path, with a config)",
  },
  replica: { type: "string", valueName: "NAME", description: "Restore from this replica only" },
  generation: {
    type: "string",
    valueName: "NAME",
    description: "Restore from this generation only",
  },
  index: {
    type: "string",
    valueName: "HEX",
    description: "Restore up to this WAL index (hexadecimal)",
  },
  timestamp: {
    type: "string",
    valueName: "TIMESTAMP",
    description: "Restore to this point in time (RFC 3339)",
  },
  parallelism: {
    type: "string",
    valueName: "N",
    default: String(DEFAULT_RESTORE_PARALLELISM),
    description: "WAL segments downloaded at once",
  },
  "if-db-not-exists": {
    type: "boolean",
    description: "Exit 0 without restoring if the output file exists",
  },
  "if-replica-exists": {
    type: "boolean",
    description: "Exit 0 without restoring if the replica has no backup",
  },
  "skip-integrity-check": {
    type: "boolean",
    description: "Do not run PRAGMA integrity_check on the result",
  },
} as const;

export const usage = formatUsage(
  "restore",
  "litestream restore [arguments] DB_PATH|REPLICA_URL\n\nRestores a database from a replica, to its latest state or to a point in time.\nNever overwrites an existing file.",
  FLAGS,
);

export async function run(args: string[], log: Logger): Promise<number> {
  const { values, positionals } = parseFlags(args, FLAGS, "restore");
  if (positionals.length === 0) throw new UsageError("Database path or replica URL required");
  if (positionals.length > 1) {
    throw new UsageError(`Too many arguments: ${positionals.slice(1).join(" ")}`);
  }
  const index = values.index !== undefined ? parseIndex(values.index) : undefined;
  const timestamp = values.timestamp !== undefined ? parseTimestamp(values.timestamp) : undefined;
  if (index !== undefined && timestamp !== undefined) {
    throw new UsageError("Cannot specify both -index and -timestamp");
  }
  const parallelism = Number(values.parallelism);
  if (!Number.isInteger(parallelism) || parallelism < 1) {
    throw new UsageError(
      `Invalid -parallelism "${values.parallelism}": must be a positive integer`,
    );
  }
  const target = await resolveTarget(positionals[0], values);
  const output = values.o ?? target.db?.path;
  if (output === undefined) throw new UsageError("Output path required: use -o PATH");
  const outPath = absPath(output);
  // Even when nothing is restored now, what a killed restore left beside the output goes.
  for (const path of await removeAbandonedRestores(dirname(outPath))) {
    log.info("removed files of an interrupted restore", { path });
  }
  if (await exists(outPath)) {
    if (values["if-db-not-exists"]) {
      log.info("database already exists, skipping", { output: outPath });
      return 0;
    }
    throw new UsageError(`Cannot restore: output path "${outPath}" already exists`);
  }
  // Pick the replica whose chosen generation was updated last, as v0.3.13 does.
  let best: { r: NamedClient; t: RestoreTarget } | undefined;
  const failures: unknown[] = [];
  for (const r of target.replicas) {
    try {
      const t = await calcRestoreTarget(r.client, {
        generation: values.generation,
        index,
        timestamp,
      });
      if (!best || t.updatedAt > best.t.updatedAt) best = { r, t };
    } catch (err) {
      if (!(err instanceof NoBackupError) || target.replicas.length === 1) failures.push(err);
    }
  }
  if (!best) {
    const err = failures[0] ?? new NoBackupError("No matching backups found");
    if (values["if-replica-exists"] && err instanceof NoBackupError) {
      log.info("no matching backups found, skipping");
      return 0;
    }
    throw err;
  }
  const result = await restore(best.r.client, {
    outputPath: outPath,
    generation: best.t.generation,
    index,
    timestamp,
    parallelism,
    skipIntegrityCheck: values["skip-integrity-check"],
    logger: log.with({ replica: best.r.name }),
    target: best.t, // listed once, when the replica was picked
  });
  log.info("restore complete", {
    output: result.outputPath,
    generation: result.generation,
    index: result.index,
  });
  return 0;
}
