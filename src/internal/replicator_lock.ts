/**
 * One replicator per database: two would both append to the shadow WAL under
 * `.<db>-litestream/` and ship interleaved segments, and a restore of that replica could
 * fail or, worse, stop early. The first to open a database takes an exclusive `flock` on
 * `.<db>-litestream/replicate.lock` and keeps it until it closes; the second is refused with
 * one line naming the database. `flock` locks belong to the open file (not, like SQLite's
 * POSIX locks, to the process), so this neither meets SQLite's locks nor drops them, and a
 * second `Db` in the same process is refused too. The kernel releases it when the process
 * dies, so a `kill -9` leaves nothing stale behind.
 *
 * @module
 */

/** The lock file's name inside the `.<db>-litestream` directory. */
export const REPLICATOR_LOCK_FILE = "replicate.lock";

/** Another replicator already holds the database. */
export class ReplicatorLockedError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ReplicatorLockedError";
  }
}

/**
 * Takes the exclusive lock of `metaPath` (the database's `.<db>-litestream` directory,
 * which must exist) without waiting.
 *
 * @returns the open lock file: close it to release the lock
 * @throws {ReplicatorLockedError} If another replicator (this process or another) holds it.
 */
export function lockReplicator(metaPath: string, dbPath: string): Deno.FsFile {
  const path = `${metaPath}/${REPLICATOR_LOCK_FILE}`;
  const file = Deno.openSync(path, { read: true, write: true, create: true, mode: 0o600 });
  let locked: boolean;
  try {
    locked = file.tryLockSync(true);
  } catch (err) {
    file.close();
    throw err;
  }
  if (!locked) {
    file.close();
    throw new ReplicatorLockedError(
      `Cannot replicate "${dbPath}": another replicator is running on it (it holds ${path})`,
    );
  }
  return file;
}
