/**
 * A workload that makes SQLite 3.40.1 (Debian 12's `sqlite3`) commit WAL frames without
 * checksums, and the test for that defect: shared by `tests/db_test.ts` and bench workload
 * 11 (`scripts/bench/rollback.ts`).
 *
 * @module
 */
import type { Writer } from "./_helpers.ts";
import { decodeWalHeader, decodeWalIndexHeader, WAL_HEADER_SIZE } from "../src/wal.ts";

/** The table the load writes (writer 1's rows; rolled-back ones under w = 101). */
export const ROLLBACK_LOAD_SCHEMA =
  "CREATE TABLE log (w INTEGER NOT NULL, seq INTEGER NOT NULL, v TEXT NOT NULL, PRIMARY KEY (w, seq));";

/**
 * Commits rows of `log` through `w` (whose page cache should be small: `PRAGMA cache_size =
 * 16`): mostly one row, 10 % of the time up to 60, and 6 % of the commits in a transaction
 * that sets a savepoint, spills ~200 KiB of other rows into the WAL and rolls back to the
 * savepoint. Deterministic for a `seed`.
 */
export class RollbackLoad {
  /** Writer 1's last committed sequence number. */
  seq = 0;
  #seed: number;

  constructor(readonly w: Writer, seed = 1) {
    this.#seed = seed;
  }

  #rnd(): number {
    return (this.#seed = (this.#seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  }

  /** One commit. */
  async commit(): Promise<void> {
    const n = this.#rnd() < 0.1 ? 2 + Math.floor(this.#rnd() * 59) : 1;
    const insert = `INSERT INTO log SELECT 1, x, printf('%.*c', 50 + ((x * 104729) % 700), 'a')` +
      ` FROM (WITH RECURSIVE c(x) AS (SELECT ${this.seq + 1} UNION ALL SELECT x + 1 FROM c` +
      ` WHERE x < ${this.seq + n}) SELECT x FROM c);`;
    const ghost = `INSERT INTO log SELECT 101, x, hex(randomblob(1000)) FROM (WITH RECURSIVE` +
      ` c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ${
        20 + Math.floor(this.#rnd() * 181)
      }) SELECT x FROM c);`;
    await this.w.exec(
      this.#rnd() < 0.06
        ? `BEGIN; ${insert} SAVEPOINT s; ${ghost} ROLLBACK TO s; RELEASE s; COMMIT`
        : insert,
    );
    this.seq += n;
  }
}

/**
 * True if the WAL of `db` holds a frame that SQLite counts as committed (below the
 * wal-index's mxFrame) whose salts are zero: frames SQLite wrote without checksums.
 */
export async function hasUnchecksummedCommittedFrame(db: string): Promise<boolean> {
  let shm: Uint8Array, wal: Uint8Array;
  try {
    shm = await Deno.readFile(`${db}-shm`);
    wal = await Deno.readFile(`${db}-wal`);
  } catch {
    return false;
  }
  const index = decodeWalIndexHeader(shm.subarray(0, 96));
  if (!index || wal.length < WAL_HEADER_SIZE) return false;
  const fs = 24 + decodeWalHeader(wal).pageSize;
  for (let i = 0; i < index.mxFrame; i++) {
    const at = WAL_HEADER_SIZE + i * fs;
    const salts = wal.subarray(at + 8, at + 16);
    if (salts.length === 8 && salts.every((b) => b === 0)) return true;
  }
  return false;
}
