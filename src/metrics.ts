/**
 * Counters and gauges with v0.3.13's metric names, and their Prometheus text exposition.
 *
 * @module
 */

/** Per-database metrics, updated by {@linkcode Db}. */
export interface DbMetrics {
  db: string;
  dbSize: number;
  walSize: number;
  totalWalBytes: number;
  shadowWalIndex: number;
  syncCount: number;
  syncErrorCount: number;
  syncSeconds: number;
  checkpointCount: Record<string, number>;
  checkpointErrors: Record<string, number>;
  checkpointSeconds: Record<string, number>;
}

/** Per-replica metrics, updated by {@linkcode Replica}. */
export interface ReplicaMetrics {
  db: string;
  name: string;
  walBytes: number;
  walIndex: number;
  walOffset: number;
  syncErrorCount: number;
  validations: { ok: number; error: number };
}

export function newDbMetrics(db: string): DbMetrics {
  return {
    db,
    dbSize: 0,
    walSize: 0,
    totalWalBytes: 0,
    shadowWalIndex: 0,
    syncCount: 0,
    syncErrorCount: 0,
    syncSeconds: 0,
    checkpointCount: {},
    checkpointErrors: {},
    checkpointSeconds: {},
  };
}

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

function labels(l: Record<string, string>): string {
  return "{" + Object.entries(l).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(",") + "}";
}

/** Renders metrics in the Prometheus text format (version 0.0.4). */
export function formatMetrics(dbs: DbMetrics[], replicas: ReplicaMetrics[]): string {
  const out: string[] = [];
  const family = (
    name: string,
    type: string,
    help: string,
    rows: [Record<string, string>, number][],
  ) => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [l, v] of rows) out.push(`${name}${labels(l)} ${v}`);
  };
  const perDb = (f: (m: DbMetrics) => number) =>
    dbs.map((m) => [{ db: m.db }, f(m)] as [Record<string, string>, number]);
  const perMode = (f: (m: DbMetrics) => Record<string, number>) =>
    dbs.flatMap((m) =>
      Object.entries(f(m)).map(([mode, v]) =>
        [{ db: m.db, mode }, v] as [Record<string, string>, number]
      )
    );
  const perReplica = (f: (m: ReplicaMetrics) => number) =>
    replicas.map((m) => [{ db: m.db, name: m.name }, f(m)] as [Record<string, string>, number]);
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
    "Number of checkpoint operations",
    perMode((m) => m.checkpointCount),
  );
  family(
    "litestream_checkpoint_error_count",
    "counter",
    "Number of checkpoint errors",
    perMode((m) => m.checkpointErrors),
  );
  family(
    "litestream_checkpoint_seconds",
    "counter",
    "Time spent checkpointing WAL, in seconds",
    perMode((m) => m.checkpointSeconds),
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
      (["ok", "error"] as const).map((status) =>
        [{ db: m.db, name: m.name, status }, m.validations[status]] as [
          Record<string, string>,
          number,
        ]
      )
    ),
  );
  return out.join("\n") + "\n";
}
