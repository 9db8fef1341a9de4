/**
 * `litestream verify`: restores a replica's latest state into a temporary directory, runs
 * `PRAGMA integrity_check` on it and, when the database is local, compares it byte for
 * byte with the live database at the same WAL position.
 *
 * It only reads. Comparing at an exact position is what a replica's `validation-interval`
 * does from inside the replicator (`Replica.validate()`): checkpoint fully, hash,
 * restore to that position. A second replicator on the same database would append to the
 * running one's shadow WAL and checkpoint under it, and nothing outside a `replicate`
 * process can tell whether one runs. So verify takes the live side from a read transaction
 * of its own instead: the WAL frames it sees end at a commit whose position it reads from
 * the WAL file (the same header and committed end before and after the transaction
 * started), and the database at that point is the database file overlaid with those
 * frames, which the read transaction keeps every checkpoint from changing. Then it waits
 * (up to `-timeout`) for the replica to hold that position, and restores exactly it.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { print } from "./output.ts";
import { formatUsage, parseFlags } from "./flags.ts";
import { CONFIG_FLAGS, formatGoDuration, type NamedClient, resolveTarget } from "./common.ts";
import { parseDuration } from "../config.ts";
import { calcRestoreTarget, restore } from "../restore.ts";
import type { ReplicaClient, WalSegmentInfo } from "../replica_client.ts";
import { lz4DecompressStream } from "../lz4.ts";
import { formatPos, type Pos } from "../pos.ts";
import { Connection, probeDatabaseFile } from "../sqlite.ts";
import {
  decodeDbPageSize,
  decodeWalHeader,
  isValidWalHeader,
  scanWalFrames,
  WAL_FRAME_HEADER_SIZE,
  WAL_HEADER_SIZE,
  type WalChecksum,
  walFrameSize,
} from "../wal.ts";
import { bytesEqual } from "../shadow_wal.ts";
import { UsageError } from "../errors.ts";
import { exists, readAtSync, readIntoSync } from "../internal/fs.ts";
import { delay } from "../internal/delay.ts";
import type { Logger } from "../log.ts";

/** How long verify waits by default for a running replicator to ship the live position. */
export const DEFAULT_VERIFY_TIMEOUT = "10s";
/** Pause between two looks at the replica while it catches up. */
const POLL_MS = 100;
/** Attempts at a live read whose WAL position holds still (a commit between looks retries). */
const LIVE_READ_ATTEMPTS = 50;
/** Bytes read at once when hashing a database or scanning a WAL. */
const CHUNK_BYTES = 4 << 20;

export const FLAGS = {
  ...CONFIG_FLAGS,
  replica: { type: "string", valueName: "NAME", description: "Verify this replica only" },
  timeout: {
    type: "string",
    valueName: "DURATION",
    default: DEFAULT_VERIFY_TIMEOUT,
    description: "How long to wait for the replica to reach the live database's position",
  },
} as const;

export const usage = formatUsage(
  "verify",
  `litestream verify [arguments] DB_PATH|REPLICA_URL

Restores each replica's latest state into a temporary directory (always removed) and runs
PRAGMA integrity_check on it. When the database is a local file, also compares the result
byte for byte with the live database at the same WAL position, waiting up to -timeout for a
running replicator to upload the position the database is at.

Prints one line per replica on stdout and exits with:
  0  "ok: ..."        the replica restores, passes integrity_check and (local database)
                      equals the database at the printed generation/index:offset
  1  "mismatch: ..."  the restored database differs from the live one at that position
  1  "behind: ..."    the replica did not reach the database's position within -timeout
  1  an error line    the replica cannot be restored (it names the damaged object) or
                      fails integrity_check, or another failure
  2  an error line    bad usage or configuration

verify only reads: it works while "litestream replicate" runs (or not) and never writes
to the database, its WAL, the shadow WAL or the replica (only SQLite's -shm, where every
reader records its read mark). It does not act as a second replicator: two on one
database would append to the same shadow WAL, and whether one runs cannot be told from
outside it. It reads the database in a read transaction of its own, as any reader does.
A database with no WAL file (every connection closed) is compared with the replica's
latest position.`,
  FLAGS,
);

/** The outcome of verifying one replica: its line, and whether it counts as success. */
interface Verdict {
  ok: boolean;
  line: string;
}

export async function run(args: string[], _log: Logger): Promise<number> {
  const { values, positionals } = parseFlags(args, FLAGS, "verify");
  if (positionals.length === 0) throw new UsageError("Database path or replica URL required");
  if (positionals.length > 1) {
    throw new UsageError(`Too many arguments: ${positionals.slice(1).join(" ")}`);
  }
  const timeoutMs = parseTimeout(values.timeout);
  const target = await resolveTarget(positionals[0], values);
  if (target.replicas.length === 0) {
    throw new UsageError(`Database "${target.db!.path}" has no replica to verify`);
  }
  const live = target.db && (await exists(target.db.path)) ? target.db.path : undefined;
  let ok = true;
  const errors: Error[] = [];
  for (const r of target.replicas) {
    try {
      const verdict = await verifyReplica(r, live, timeoutMs);
      print(verdict.line);
      ok &&= verdict.ok;
    } catch (err) {
      errors.push(new Error(`Cannot verify replica "${r.client.location}"`, { cause: err }));
    } finally {
      await r.client.close?.().catch(() => {});
    }
  }
  if (errors.length === 1) throw errors[0];
  if (errors.length > 1) throw new AggregateError(errors, "Cannot verify replicas");
  return ok ? 0 : 1;
}

function parseTimeout(text: string): number {
  let ms: number;
  try {
    ms = parseDuration(text);
  } catch (err) {
    throw new UsageError(`Invalid -timeout "${text}": must be a duration such as 10s`, {
      cause: err,
    });
  }
  if (ms < 0) throw new UsageError(`Invalid -timeout "${text}": must be 0 or more`);
  return ms;
}

/** Verifies one replica against `dbPath` (or on its own when there is no local database). */
async function verifyReplica(
  r: NamedClient,
  dbPath: string | undefined,
  timeoutMs: number,
): Promise<Verdict> {
  const where = r.client.location;
  const dir = await tempDir();
  try {
    const restoreAt = async (pos: Pos): Promise<Image> => {
      const out = `${dir}/replica.db`;
      await restore(r.client, {
        outputPath: out,
        generation: pos.generation,
        index: pos.index,
        offset: pos.offset,
      });
      using file = Deno.openSync(out, { read: true });
      return hashImage(file);
    };
    if (!dbPath) {
      const end = await listedAgain(() => replicaEnd(r.client));
      await restoreAt(end.pos);
      return {
        ok: true,
        line: `ok: ${where} restores at ${formatPos(end.pos)} and passes integrity_check`,
      };
    }
    let live: Image;
    try {
      if ((await probeDatabaseFile(dbPath)) === undefined) {
        throw new SyntaxError(`"${dbPath}" is empty, not a SQLite database`);
      }
      live = readLive(dbPath);
    } catch (err) {
      throw new Error(`Cannot read database "${dbPath}"`, { cause: err });
    }
    if (!live.wal) {
      // No WAL: nobody has the database open, and its file is the end of a WAL life that
      // only the replica can name. Compare with the replica's latest state.
      const end = await listedAgain(() => replicaEnd(r.client));
      return compare(
        dbPath,
        where,
        end.pos,
        live,
        await restoreAt(end.pos),
        " (the database has no WAL: compared at the replica's latest position)",
      );
    }
    const wal = live.wal;
    const deadline = Date.now() + timeoutMs;
    const seen = new Map<string, Uint8Array>();
    for (;;) {
      const found = await listedAgain(() => findLivePos(r.client, wal, seen));
      if (found.pos && found.available >= found.pos.offset) {
        return compare(dbPath, where, found.pos, live, await restoreAt(found.pos), "");
      }
      if (Date.now() >= deadline) {
        const db = found.pos
          ? `the database is at ${formatPos(found.pos)}`
          : "not the database's current WAL";
        const upTo = formatPos(
          found.pos ? { ...found.pos, offset: found.available } : found.latest,
        );
        return {
          ok: false,
          line: `behind: ${where} holds ${dbPath} up to ${upTo}, ${db}; waited ${
            formatGoDuration(timeoutMs)
          } (is replicate running?)`,
        };
      }
      await delay(Math.min(POLL_MS, Math.max(0, deadline - Date.now())));
    }
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** A new temporary directory (under `$TMPDIR`, or /tmp) for the restored copy. */
async function tempDir(): Promise<string> {
  try {
    return await Deno.makeTempDir({ prefix: "litestream-verify-" });
  } catch (err) {
    throw new Error("Cannot create a temporary directory for the restored copy (set TMPDIR)", {
      cause: err,
    });
  }
}

function compare(
  dbPath: string,
  where: string,
  pos: Pos,
  live: Image,
  restored: Image,
  note: string,
): Verdict {
  const at = formatPos(pos);
  if (live.sha256 === restored.sha256) {
    return { ok: true, line: `ok: ${dbPath} matches ${where} at ${at}${note}` };
  }
  return {
    ok: false,
    line:
      `mismatch: ${dbPath} differs from ${where} at ${at}${note} (database ${live.pages} pages, sha256 ${
        live.sha256.slice(0, 16)
      }; replica ${restored.pages} pages, sha256 ${restored.sha256.slice(0, 16)})`,
  };
}

// ---------------------------------------------------------------------------------------
// The replica side: its latest position, and where it holds the live WAL life.

/**
 * Runs `fn`, which lists the replica and then reads some of what it listed, again when an
 * object is gone by the time it is read (a replicator merged segments, or retention deleted
 * them), up to three times in all.
 */
async function listedAgain<T>(fn: () => Promise<T>): Promise<T> {
  for (let attempt = 1;; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound) || attempt >= 3) throw err;
    }
  }
}

/** The end of the replica's latest state: the last segment's offset plus its length. */
async function replicaEnd(
  client: ReplicaClient,
): Promise<{ pos: Pos; segments: WalSegmentInfo[] }> {
  const t = await calcRestoreTarget(client);
  const last = t.segments.at(-1);
  if (!last) {
    return { pos: { generation: t.generation, index: t.snapshot.index, offset: 0 }, segments: [] };
  }
  const { length } = await readSegment(client, last);
  return {
    pos: { generation: t.generation, index: last.index, offset: last.offset + length },
    segments: t.segments,
  };
}

/**
 * Finds the WAL index of the replica's latest generation that holds the live WAL life:
 * the one whose segment at offset 0 starts with the same header. SQLite adds one to
 * salt-1 at each WAL restart, so the distance from the newest index's salt-1 points at
 * it; the newest few indexes are checked too (a WAL deleted and created anew has a random
 * salt). Headers already read are kept in `seen` across calls.
 *
 * @returns `pos` at the live committed end with how far the replica holds that index, or
 *   no `pos` when no index has that header (the replica has not reached it yet)
 */
async function findLivePos(
  client: ReplicaClient,
  wal: LiveWal,
  seen: Map<string, Uint8Array>,
): Promise<{ pos?: Pos; available: number; latest: Pos }> {
  const { pos: latest, segments } = await replicaEnd(client);
  const starts = new Map(segments.filter((s) => s.offset === 0).map((s) => [s.index, s]));
  const headerOf = async (index: number) => {
    const start = starts.get(index);
    if (!start) return undefined;
    const key = formatPos(start);
    let head = seen.get(key);
    if (!head) {
      head = (await readSegment(client, start, WAL_HEADER_SIZE)).head;
      seen.set(key, head);
    }
    return head;
  };
  const candidates = [latest.index, latest.index - 1, latest.index - 2];
  const newest = await headerOf(latest.index);
  if (newest && isValidWalHeader(newest)) {
    const behindBy = (decodeWalHeader(newest).salt1 - decodeWalHeader(wal.header).salt1) >>> 0;
    if (behindBy <= latest.index) candidates.unshift(latest.index - behindBy);
  }
  for (const index of new Set(candidates)) {
    const head = await headerOf(index);
    if (!head || !bytesEqual(head, wal.header)) continue;
    const ofIndex = segments.filter((s) => s.index === index);
    const last = ofIndex[ofIndex.length - 1];
    const available = index === latest.index
      ? latest.offset
      : last.offset + (await readSegment(client, last)).length;
    return {
      pos: { generation: latest.generation, index, offset: wal.end },
      available,
      latest,
    };
  }
  return { available: 0, latest };
}

/**
 * Decodes a stored WAL segment: its length, and its first `headBytes` bytes. Stops
 * reading once it has them when `headBytes` is given.
 */
async function readSegment(
  client: ReplicaClient,
  seg: Pos,
  headBytes?: number,
): Promise<{ length: number; head: Uint8Array }> {
  const stream = (await client.openWalSegment(seg)).pipeThrough(lz4DecompressStream());
  const parts: Uint8Array[] = [];
  let length = 0;
  let kept = 0;
  for await (const chunk of stream) {
    length += chunk.length;
    const want = (headBytes ?? WAL_HEADER_SIZE) - kept;
    if (want > 0) {
      parts.push(chunk.slice(0, want));
      kept += Math.min(want, chunk.length);
    }
    if (headBytes !== undefined && kept >= headBytes) break; // the loop cancels the stream
  }
  const head = new Uint8Array(kept);
  let o = 0;
  for (const p of parts) {
    head.set(p, o);
    o += p.length;
  }
  return { length, head };
}

// ---------------------------------------------------------------------------------------
// The live side: the database at the committed end of its WAL, hashed page by page.

/** The committed part of a live WAL: its header, end offset and newest image of each page. */
interface LiveWal {
  header: Uint8Array;
  /** Offset just past the last commit frame (the header's size when there is none). */
  end: number;
  /** Database size in pages at that commit; 0 when the WAL holds no commit. */
  commitSize: number;
  pageSize: number;
  /** Page number to the WAL offset of its newest committed image. */
  pages: Map<number, number>;
}

/** A database state reduced to a hash of its pages. */
interface Image {
  sha256: string;
  pages: number;
  /** The WAL position the image is at, for a live database read through its WAL. */
  wal?: LiveWal;
}

/**
 * Reads the live database at a position that held still: with a WAL, inside a read
 * transaction whose snapshot is the WAL's committed end (the same before and after the
 * transaction began, and the header unchanged until hashing finished); without one, the
 * file, unchanged from start to end of the read.
 */
function readLive(dbPath: string): Image {
  const walPath = `${dbPath}-wal`;
  // Opened before the connection and closed after it: closing a descriptor of the database
  // file drops every POSIX lock this process holds on it (see Db's #dbFile).
  using file = Deno.openSync(dbPath, { read: true });
  let conn: Connection | undefined;
  try {
    for (let attempt = 0; attempt < LIVE_READ_ATTEMPTS; attempt++) {
      const before = scanWal(walPath);
      if (!before) {
        // Without a WAL, SQLite would create one for a reader: read the file itself.
        const st = fileId(Deno.statSync(dbPath));
        const image = hashImage(file);
        if (st === fileId(Deno.statSync(dbPath)) && !scanWal(walPath)) return image;
        continue;
      }
      conn ??= new Connection(dbPath, { readOnly: true, busyTimeoutMs: 5_000 });
      conn.exec("BEGIN");
      try {
        conn.get("SELECT count(*) FROM sqlite_schema"); // starts the read transaction
        const after = scanWal(walPath);
        if (!after || after.end !== before.end || !bytesEqual(after.header, before.header)) {
          continue;
        }
        const image = hashImage(file, after, walPath);
        // A restart rewrites the header before any frame: same header, same frames read.
        const head = scanWalHeader(walPath);
        if (head && bytesEqual(head, after.header)) return image;
      } finally {
        conn.exec("COMMIT");
      }
    }
  } finally {
    conn?.close();
  }
  throw new Error(
    `Cannot read "${dbPath}" at a stable position: it changed during each of ${LIVE_READ_ATTEMPTS} attempts`,
  );
}

function fileId(st: Deno.FileInfo): string {
  return `${st.ino}:${st.size}:${st.mtime?.getTime()}`;
}

function scanWalHeader(walPath: string): Uint8Array | undefined {
  try {
    using f = Deno.openSync(walPath, { read: true });
    const head = readAtSync(f, 0, WAL_HEADER_SIZE);
    return head.length === WAL_HEADER_SIZE ? head : undefined;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return undefined;
    throw err;
  }
}

/**
 * Scans a WAL file as SQLite's recovery does: frames whose salts and checksum chain are
 * valid, up to the last commit frame. Returns undefined when there is no WAL (missing,
 * shorter than a header, or an invalid header: SQLite then ignores it too).
 */
function scanWal(walPath: string): LiveWal | undefined {
  let f: Deno.FsFile;
  try {
    f = Deno.openSync(walPath, { read: true });
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return undefined;
    throw err;
  }
  try {
    const header = readAtSync(f, 0, WAL_HEADER_SIZE).slice();
    if (header.length < WAL_HEADER_SIZE || !isValidWalHeader(header)) return undefined;
    const h = decodeWalHeader(header);
    const fs = walFrameSize(h.pageSize);
    const buf = new Uint8Array(Math.max(1, Math.floor(CHUNK_BYTES / fs)) * fs);
    const view = new DataView(buf.buffer);
    const pages = new Map<number, number>();
    const pending: [number, number][] = []; // frames of a transaction not yet committed
    let seed: WalChecksum = [h.checksum1, h.checksum2];
    let end = WAL_HEADER_SIZE;
    let commitSize = 0;
    for (let off = WAL_HEADER_SIZE;;) {
      const n = readIntoSync(f, off, buf);
      const whole = n - (n % fs);
      if (whole === 0) break;
      const scan = scanWalFrames(buf.subarray(0, whole), h, seed);
      for (let i = 0; i < scan.validFrames; i++) {
        const at = i * fs;
        pending.push([view.getUint32(at), off + at + WAL_FRAME_HEADER_SIZE]);
        const commit = view.getUint32(at + 4);
        if (commit !== 0) {
          for (const [pgno, pageAt] of pending) pages.set(pgno, pageAt);
          pending.length = 0;
          end = off + at + fs;
          commitSize = commit;
        }
      }
      if (scan.stop !== "end" || whole < buf.length) break;
      seed = scan.checksum;
      off += whole;
    }
    return { header, end, commitSize, pageSize: h.pageSize, pages };
  } finally {
    f.close();
  }
}

/**
 * Hashes the database `file` overlaid with the committed WAL frames of `wal`: the pages a
 * checkpoint of those frames would leave, as many as the last commit names (without one,
 * as the file's header names, or its size).
 */
function hashImage(file: Deno.FsFile, wal?: LiveWal, walPath?: string): Image {
  const header = readAtSync(file, 0, 100);
  const pageSize = wal?.pageSize ?? decodeDbPageSize(header);
  let pages = wal?.commitSize ?? 0;
  if (pages === 0) {
    const v = new DataView(header.buffer, header.byteOffset, header.byteLength);
    // The in-header size is valid when its version-valid-for equals the change counter.
    const inHeader = header.length >= 100 && v.getUint32(92) === v.getUint32(24)
      ? v.getUint32(28)
      : 0;
    pages = inHeader || Math.floor(file.statSync().size / pageSize);
  }
  using walFile = wal && wal.pages.size > 0 ? Deno.openSync(walPath!, { read: true }) : undefined;
  const hash = createHash("sha256");
  const perChunk = Math.max(1, Math.floor(CHUNK_BYTES / pageSize));
  const buf = new Uint8Array(perChunk * pageSize);
  for (let first = 1; first <= pages; first += perChunk) {
    const count = Math.min(perChunk, pages - first + 1);
    const chunk = buf.subarray(0, count * pageSize);
    const n = readIntoSync(file, (first - 1) * pageSize, chunk);
    chunk.fill(0, n); // pages past the file's end come from the WAL, or are missing
    if (walFile) {
      for (let p = first; p < first + count; p++) {
        const at = wal!.pages.get(p);
        if (at !== undefined) {
          readIntoSync(
            walFile,
            at,
            chunk.subarray((p - first) * pageSize, (p - first + 1) * pageSize),
          );
        }
      }
    }
    hash.update(chunk);
  }
  return { sha256: hash.digest("hex"), pages, wal };
}
