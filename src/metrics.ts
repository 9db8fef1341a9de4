/**
 * Counters and gauges with v0.3.13's metric names, labels and meanings, and their Prometheus
 * text exposition. Plain data: {@linkcode Db}, {@linkcode Replica} and the replica clients
 * update their own objects, and the {@linkcode Store} renders them all on a scrape, so no
 * state is shared between daemons (or tests) in one process.
 *
 * @module
 */

/** Per-database metrics, updated by {@linkcode Db}. */
export interface DbMetrics {
  db: string;
  /** Size of the database file, in bytes. */
  dbSize: number;
  /** Size of the `-wal` file, in bytes. */
  walSize: number;
  /** Bytes copied from the WAL into the shadow WAL. */
  totalWalBytes: number;
  /** Index of the current shadow WAL file. */
  shadowWalIndex: number;
  /** Bytes in the shadow WAL files of the current generation. */
  shadowWalSize: number;
  /** Syncs run, failed or not. */
  syncCount: number;
  syncErrorCount: number;
  syncSeconds: number;
  /** Checkpoints run, failed or not, by mode (`PASSIVE`, `RESTART`, `TRUNCATE`). */
  checkpointCount: Record<string, number>;
  checkpointErrors: Record<string, number>;
  checkpointSeconds: Record<string, number>;
  /** Times we held SQLite's write lock (our writes and our checkpoint hand-overs). */
  writeLockCount: number;
  /** Total time we held SQLite's write lock, in seconds. */
  writeLockSeconds: number;
  /** Longest single hold of SQLite's write lock, in seconds. */
  writeLockMaxSeconds: number;
  /** WAL bytes checksummed looking for commits (not a v0.3.13 family: not exported). */
  walScannedBytes: number;
  /** Holds of SQLite's write lock longer than {@linkcode LONG_WRITE_LOCK_SECONDS}. */
  writeLockLongCount: number;
}

/** A hold of the write lock longer than this is counted apart (the goal is at most 2 ms). */
export const LONG_WRITE_LOCK_SECONDS = 0.002;

/** Per-replica metrics, updated by {@linkcode Replica}. */
export interface ReplicaMetrics {
  db: string;
  name: string;
  /** Uncompressed WAL bytes shipped to the replica. */
  walBytes: number;
  /** Position the replica holds: index and offset. */
  walIndex: number;
  walOffset: number;
  syncErrorCount: number;
  validations: { ok: number; error: number };
}

/** Returns zeroed metrics for database `db`. */
export function newDbMetrics(db: string): DbMetrics {
  return {
    db,
    dbSize: 0,
    walSize: 0,
    totalWalBytes: 0,
    shadowWalIndex: 0,
    shadowWalSize: 0,
    syncCount: 0,
    syncErrorCount: 0,
    syncSeconds: 0,
    checkpointCount: {},
    checkpointErrors: {},
    checkpointSeconds: {},
    writeLockCount: 0,
    writeLockSeconds: 0,
    writeLockMaxSeconds: 0,
    writeLockLongCount: 0,
    walScannedBytes: 0,
  };
}

/** Returns zeroed metrics for replica `name` of database `db`. */
export function newReplicaMetrics(db: string, name: string): ReplicaMetrics {
  return {
    db,
    name,
    walBytes: 0,
    walIndex: 0,
    walOffset: 0,
    syncErrorCount: 0,
    validations: { ok: 0, error: 0 },
  };
}

/** A kind of request a replica client makes to its store, as v0.3.13 labels them. */
export type ReplicaOperation = "GET" | "PUT" | "DELETE" | "LIST";

/**
 * Requests one replica client made to its store and the bytes they moved, counted as
 * v0.3.13 counts them: successful requests only; a GET counts the object's length, a PUT
 * the bytes uploaded (once per object, however many parts); DELETE and LIST count calls
 * (a DeleteObjects batch, a listing page) and no bytes. Exposed, summed over the clients of
 * one type, as `litestream_replica_operation_total` and `litestream_replica_operation_bytes`.
 */
export class ReplicaOperationMetrics {
  /** Value of the `replica_type` label, e.g. `"s3"`. */
  readonly replicaType: string;
  /** Requests by operation; an operation appears once it happened. */
  readonly total: Partial<Record<ReplicaOperation, number>> = {};
  /** Bytes moved by operation (GET and PUT only); appears with the first such request. */
  readonly bytes: Partial<Record<ReplicaOperation, number>> = {};

  constructor(replicaType: string) {
    this.replicaType = replicaType;
  }

  /** Counts one successful request; pass `bytes` for requests that move data. */
  record(operation: ReplicaOperation, bytes?: number): void {
    this.total[operation] = (this.total[operation] ?? 0) + 1;
    if (bytes !== undefined) this.bytes[operation] = (this.bytes[operation] ?? 0) + bytes;
  }
}

type Labels = Record<string, string>;
type Row = [Labels, number];

/** Escapes a label value as the text format requires: backslash, double quote, newline. */
function escapeLabelValue(v: string): string {
  return v.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n");
}

function formatLabels(l: Labels): string {
  return "{" +
    Object.entries(l).map(([k, v]) => `${k}="${escapeLabelValue(v)}"`).join(",") + "}";
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

/** Sums the operation counters of clients of the same type into rows per label set. */
function operationRows(
  operations: ReplicaOperationMetrics[],
  pick: (m: ReplicaOperationMetrics) => Partial<Record<ReplicaOperation, number>>,
): Row[] {
  const sums = new Map<string, Row>();
  for (const m of operations) {
    for (const [operation, v] of Object.entries(pick(m))) {
      const key = `${m.replicaType}\0${operation}`;
      const row = sums.get(key) ?? [{ replica_type: m.replicaType, operation }, 0];
      row[1] += v ?? 0;
      sums.set(key, row);
    }
  }
  return [...sums.values()];
}

/**
 * Renders metrics in the Prometheus text format (version 0.0.4), with the names, types,
 * labels and help texts of v0.3.13 plus our own (`litestream_write_lock_*`,
 * `litestream_replica_sync_error_count`). Like v0.3.13's registry, a family without any
 * series yet (no checkpoint so far, no S3 replica) is left out.
 */
export function formatMetrics(
  dbs: DbMetrics[],
  replicas: ReplicaMetrics[],
  operations: ReplicaOperationMetrics[] = [],
): string {
  const out: string[] = [];
  const family = (name: string, type: string, help: string, rows: Row[]) => {
    if (rows.length === 0) return;
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [l, v] of rows) out.push(`${name}${formatLabels(l)} ${formatValue(v)}`);
  };
  const perDb = (f: (m: DbMetrics) => number): Row[] => dbs.map((m) => [{ db: m.db }, f(m)]);
  const perMode = (f: (m: DbMetrics) => Record<string, number>): Row[] =>
    dbs.flatMap((m) => Object.entries(f(m)).map(([mode, v]): Row => [{ db: m.db, mode }, v]));
  const perReplica = (f: (m: ReplicaMetrics) => number): Row[] =>
    replicas.map((m) => [{ db: m.db, name: m.name }, f(m)]);

  family("litestream_db_size", "gauge", "The current size of the real DB", perDb((m) => m.dbSize));
  family(
    "litestream_wal_size",
    "gauge",
    "The current size of the real WAL",
    perDb((m) => m.walSize),
  );
  family(
    "litestream_total_wal_bytes",
    "counter",
    "Total number of bytes written to shadow WAL",
    perDb((m) => m.totalWalBytes),
  );
  family(
    "litestream_shadow_wal_index",
    "gauge",
    "The current index of the shadow WAL",
    perDb((m) => m.shadowWalIndex),
  );
  family(
    "litestream_shadow_wal_size",
    "gauge",
    "Current size of shadow WAL, in bytes",
    perDb((m) => m.shadowWalSize),
  );
  family(
    "litestream_sync_count",
    "counter",
    "Number of sync operations performed",
    perDb((m) => m.syncCount),
  );
  family(
    "litestream_sync_error_count",
    "counter",
    "Number of sync errors that have occurred",
    perDb((m) => m.syncErrorCount),
  );
  family(
    "litestream_sync_seconds",
    "counter",
    "Time spent syncing shadow WAL, in seconds",
    perDb((m) => m.syncSeconds),
  );
  family(
    "litestream_checkpoint_count",
    "counter",
    "Number of checkpoint operations performed",
    perMode((m) => m.checkpointCount),
  );
  family(
    "litestream_checkpoint_error_count",
    "counter",
    "Number of checkpoint errors that have occurred",
    perMode((m) => m.checkpointErrors),
  );
  family(
    "litestream_checkpoint_seconds",
    "counter",
    "Time spent checkpointing WAL, in seconds",
    perMode((m) => m.checkpointSeconds),
  );
  family(
    "litestream_write_lock_count",
    "counter",
    "Number of times the replicator held SQLite's write lock",
    perDb((m) => m.writeLockCount),
  );
  family(
    "litestream_write_lock_seconds",
    "counter",
    "Time the replicator held SQLite's write lock, in seconds",
    perDb((m) => m.writeLockSeconds),
  );
  family(
    "litestream_write_lock_max_seconds",
    "gauge",
    "Longest single hold of SQLite's write lock by the replicator, in seconds",
    perDb((m) => m.writeLockMaxSeconds),
  );
  family(
    "litestream_write_lock_long_count",
    "counter",
    "Number of holds of SQLite's write lock by the replicator longer than 2 ms",
    perDb((m) => m.writeLockLongCount),
  );
  family(
    "litestream_replica_wal_bytes",
    "counter",
    "The number of WAL bytes written",
    perReplica((m) => m.walBytes),
  );
  family(
    "litestream_replica_wal_index",
    "gauge",
    "The current WAL index",
    perReplica((m) => m.walIndex),
  );
  family(
    "litestream_replica_wal_offset",
    "gauge",
    "The current WAL offset",
    perReplica((m) => m.walOffset),
  );
  family(
    "litestream_replica_sync_error_count",
    "counter",
    "Number of failed replica syncs",
    perReplica((m) => m.syncErrorCount),
  );
  family(
    "litestream_replica_validation_total",
    "counter",
    "The number of validations performed",
    replicas.flatMap((m) =>
      (["ok", "error"] as const).map((status): Row => [
        { db: m.db, name: m.name, status },
        m.validations[status],
      ])
    ),
  );
  family(
    "litestream_replica_operation_total",
    "counter",
    "The number of replica operations performed",
    operationRows(operations, (m) => m.total),
  );
  family(
    "litestream_replica_operation_bytes",
    "counter",
    "The number of bytes used by replica operations",
    operationRows(operations, (m) => m.bytes),
  );
  return out.join("\n") + "\n";
}
