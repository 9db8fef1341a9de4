/**
 * Streaming replication for SQLite, compatible with Litestream v0.3.13 replicas.
 *
 * @example Replicate a database to a directory, then restore it
 * ```ts
 * import { Db, FileReplicaClient, Replica, restore } from "@x/litestream";
 *
 * const db = new Db("./app.db");
 * await db.open(); // watches the WAL and syncs every committed transaction
 * const client = new FileReplicaClient("./backup");
 * const replica = new Replica(db, client);
 * replica.open(); // uploads each change as it is synced
 * // … the application writes to ./app.db …
 * await replica.close(); // final upload
 * await db.close();
 *
 * await restore(client, { outputPath: "./restored.db" });
 * ```
 *
 * The application may run in the same process, but must not open and close its own file
 * descriptors of the database file while a {@linkcode Db} watches it with Deno file APIs:
 * closing any descriptor drops SQLite's POSIX locks (see the README).
 *
 * Run as the main module (`deno run jsr:@x/litestream replicate …`, or `deno install -g`
 * of the package), this module is the `litestream` command line; imported, it only exports.
 *
 * @module
 */
export { Db, type DbOptions } from "./src/db.ts";
export { Replica, type ReplicaOptions, type ReplicaSource } from "./src/replica.ts";
export type { ShadowWalReader } from "./src/shadow_wal.ts";
export type {
  Body,
  CallOptions,
  ReplicaClient,
  SnapshotInfo,
  SnapshotKey,
  WalSegmentInfo,
} from "./src/replica_client.ts";
export { FileReplicaClient, newReplicaClient } from "./src/clients/mod.ts";
export {
  calcRestoreTarget,
  restore,
  type RestoreOptions,
  type RestoreResult,
  type RestoreTarget,
} from "./src/restore.ts";
export { Store } from "./src/store.ts";
export {
  type Config,
  type DbConfig,
  loadConfig,
  parseConfig,
  type ReplicaConfig,
} from "./src/config.ts";
export { formatPos, type Pos } from "./src/pos.ts";
export { NoBackupError, ReplicaIntegrityError } from "./src/errors.ts";
export { consoleSink, Logger } from "./src/log.ts";

// The package's `.` export is what `deno run jsr:@x/litestream` and `deno install -g
// jsr:@x/litestream` execute: be the CLI then. The import is dynamic so that importing the
// library loads no CLI code.
if (import.meta.main) {
  const { main } = await import("./src/cli/main.ts");
  Deno.exit(await main(Deno.args));
}
