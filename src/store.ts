/**
 * Store: every database a `replicate` daemon runs, built from a {@linkcode Config}, with
 * one owner for all background work.
 *
 * @module
 */
import type { Config, DbConfig } from "./config.ts";
import { Db } from "./db.ts";
import { Replica } from "./replica.ts";
import { newReplicaClient } from "./clients/mod.ts";
import type { Logger } from "./log.ts";
import { formatMetrics } from "./metrics.ts";
import { UsageError } from "./errors.ts";

/** All replicated databases of one daemon. */
export class Store implements AsyncDisposable {
  readonly dbs: { db: Db; replicas: Replica[] }[] = [];
  readonly #log: Logger;

  private constructor(log: Logger) {
    this.#log = log;
  }

  /** Builds (but does not open) the databases and replicas of `config`. */
  static async fromConfig(config: Config, log: Logger): Promise<Store> {
    const store = new Store(log);
    for (const dc of config.dbs) store.dbs.push(await build(dc, log));
    return store;
  }

  /** Opens every database, then starts its replicas. */
  async open(): Promise<void> {
    for (const { db, replicas } of this.dbs) {
      await db.open();
      for (const r of replicas) {
        this.#log.info("replicating to", {
          db: db.path,
          name: r.name,
          type: r.client.type,
          location: r.client.location,
        });
        r.open();
      }
    }
  }

  /**
   * Prometheus text for all databases and replicas, and for the requests their clients
   * made (summed per client type, as v0.3.13's process-wide counters are).
   */
  metricsText(): string {
    const replicas = this.dbs.flatMap((d) => d.replicas);
    return formatMetrics(
      this.dbs.map((d) => d.db.metrics),
      replicas.map((r) => r.metrics),
      replicas.flatMap((r) => r.client.operations ?? []),
    );
  }

  /** Final sync of every database and replica, then closes them all. */
  async close(): Promise<void> {
    const errors: unknown[] = [];
    for (const { db, replicas } of this.dbs) {
      try {
        await db.sync();
      } catch (err) {
        errors.push(err);
      }
      for (const r of replicas) {
        try {
          await r.close();
        } catch (err) {
          errors.push(err);
        }
      }
      try {
        await db.close();
      } catch (err) {
        errors.push(err);
      }
      for (const r of replicas) {
        try {
          await r.client.close?.();
        } catch (err) {
          errors.push(err);
        }
      }
    }
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) throw new AggregateError(errors, "Cannot close databases cleanly");
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

async function build(dc: DbConfig, log: Logger): Promise<{ db: Db; replicas: Replica[] }> {
  const db = new Db(dc.path, {
    metaPath: dc.metaPath,
    monitorIntervalMs: dc.monitorIntervalMs,
    checkpointIntervalMs: dc.checkpointIntervalMs,
    minCheckpointPageCount: dc.minCheckpointPageCount,
    maxCheckpointPageCount: dc.maxCheckpointPageCount,
    busyTimeoutMs: dc.busyTimeoutMs,
    logger: log,
  });
  const replicas: Replica[] = [];
  const names = new Set<string>();
  for (const rc of dc.replicas) {
    const client = await newReplicaClient(rc);
    const name = rc.name ?? client.type;
    if (names.has(name)) {
      throw new UsageError(`Duplicate replica name "${name}" for database "${dc.path}"`);
    }
    names.add(name);
    replicas.push(
      new Replica(db, client, {
        name,
        syncIntervalMs: rc.syncIntervalMs,
        retentionMs: rc.retentionMs,
        retentionCheckIntervalMs: rc.retentionCheckIntervalMs,
        snapshotIntervalMs: rc.snapshotIntervalMs,
        validationIntervalMs: rc.validationIntervalMs,
        logger: log,
      }),
    );
  }
  return { db, replicas };
}
