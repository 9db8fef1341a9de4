/**
 * Tests of src/wal.ts on WAL files written by real SQLite: the engine inside Deno
 * (`node:sqlite`) and Debian's `sqlite3` CLI. Expected values come from SQLite itself: the
 * `-wal` file size after each commit, `PRAGMA page_count`, the frame count reported by
 * `PRAGMA wal_checkpoint`, and which rows SQLite can read back from a copied db + WAL.
 */
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import {
  calcWalSize,
  decodeDbPageSize,
  decodeWalFrameHeader,
  decodeWalHeader,
  decodeWalIndexHeader,
  encodeWalHeader,
  frameAlign,
  isNextWalHeader,
  isWalHeaderChecksumValid,
  lastChecksum,
  scanWalFrames,
  WAL_FRAME_HEADER_SIZE,
  WAL_HEADER_SIZE,
  WAL_INDEX_HEADER_SIZE,
  WAL_MAGIC_BE,
  WAL_MAGIC_LE,
  WAL_VERSION,
  walChecksum,
  walFrameSize,
  type WalHeader,
  type WalScanResult,
} from "../src/wal.ts";

const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** A WAL-mode database in a temp dir, kept open so its `-wal` file survives. */
class WalDb implements Disposable {
  readonly dir: string;
  readonly path: string;
  db: DatabaseSync;
  /** Size of the `-wal` file right after each {@linkcode commit}. */
  readonly commits: number[] = [];
  /** Rows in the table after each {@linkcode commit}. */
  readonly rowsAfter: number[] = [];
  #rows = 0;

  constructor(options: { pageSize?: number } = {}) {
    this.dir = Deno.makeTempDirSync({ prefix: "wal_test_" });
    this.path = `${this.dir}/db`;
    this.db = WalDb.#open(this.path);
    if (options.pageSize) this.db.exec(`PRAGMA page_size=${options.pageSize}`);
    this.db.exec("PRAGMA journal_mode=wal");
    this.db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)");
    // Move the schema into the db file so the WAL under test holds row inserts only.
    this.checkpoint("TRUNCATE");
  }

  static #open(path: string): DatabaseSync {
    const db = new DatabaseSync(path);
    db.exec("PRAGMA wal_autocheckpoint=0");
    return db;
  }

  get walPath(): string {
    return `${this.path}-wal`;
  }

  /** Inserts `rows` random blobs of `bytes` bytes each in one transaction. */
  commit(rows: number, bytes = 3000): void {
    this.db.exec("BEGIN");
    this.insert(rows, bytes);
    this.db.exec("COMMIT");
    this.#rows += rows;
    this.commits.push(this.walSize());
    this.rowsAfter.push(this.#rows);
  }

  insert(rows: number, bytes: number): void {
    const stmt = this.db.prepare("INSERT INTO t (v) VALUES (randomblob(?))");
    for (let i = 0; i < rows; i++) stmt.run(bytes);
  }

  checkpoint(mode: "PASSIVE" | "RESTART" | "TRUNCATE"): { busy: number; log: number } {
    const r = this.db.prepare(`PRAGMA wal_checkpoint(${mode})`).get() as {
      busy: number;
      log: number;
    };
    assert.equal(r.busy, 0, `checkpoint(${mode}) was blocked`);
    return r;
  }

  pageSize(): number {
    return (this.db.prepare("PRAGMA page_size").get() as { page_size: number }).page_size;
  }

  pageCount(): number {
    return (this.db.prepare("PRAGMA page_count").get() as { page_count: number }).page_count;
  }

  walSize(): number {
    return Deno.statSync(this.walPath).size;
  }

  wal(): Uint8Array {
    return Deno.readFileSync(this.walPath);
  }

  /** Closes every connection (SQLite then deletes the WAL) and opens a new one. */
  reopen(): void {
    this.db.close();
    this.db = WalDb.#open(this.path);
  }

  [Symbol.dispose](): void {
    if (this.db.isOpen) this.db.close();
    Deno.removeSync(this.dir, { recursive: true });
  }
}

/** Scans the frames of a whole WAL file, seeded with its header checksum. */
function scan(wal: Uint8Array, header = decodeWalHeader(wal)): WalScanResult {
  return scanWalFrames(wal.subarray(WAL_HEADER_SIZE), header, [
    header.checksum1,
    header.checksum2,
  ]);
}

/** Rows SQLite reads from a copy of the database with `wal` as its WAL (recovery runs). */
function rowsVisibleWith(fx: WalDb, wal: Uint8Array): number {
  const dir = Deno.makeTempDirSync({ prefix: "wal_test_copy_" });
  try {
    Deno.copyFileSync(fx.path, `${dir}/db`);
    Deno.writeFileSync(`${dir}/db-wal`, wal);
    const db = new DatabaseSync(`${dir}/db`);
    try {
      return (db.prepare("SELECT count(*) AS n FROM t").get() as { n: number }).n;
    } finally {
      db.close();
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

/** Re-encodes a WAL prefix with the other checksum byte order, recomputing every checksum. */
function reencodeWal(wal: Uint8Array, littleEndian: boolean): Uint8Array {
  const h = decodeWalHeader(wal);
  const out = wal.slice();
  out.set(encodeWalHeader({ ...h, littleEndian }), 0);
  const v = new DataView(out.buffer);
  let sum: [number, number] = [v.getUint32(24), v.getUint32(28)];
  const fs = walFrameSize(h.pageSize);
  for (let off = WAL_HEADER_SIZE; off + fs <= out.length; off += fs) {
    sum = walChecksum(littleEndian, out.subarray(off, off + 8), sum);
    sum = walChecksum(littleEndian, out.subarray(off + WAL_FRAME_HEADER_SIZE, off + fs), sum);
    v.setUint32(off + 16, sum[0]);
    v.setUint32(off + 20, sum[1]);
  }
  return out;
}

function sqliteCli(args: string[]): string {
  const out = new Deno.Command("sqlite3", { args, stdout: "piped", stderr: "piped" }).outputSync();
  const text = (b: Uint8Array) => new TextDecoder().decode(b).trim();
  assert.ok(out.success, `sqlite3 ${args.join(" ")} failed: ${text(out.stderr)}`);
  return text(out.stdout);
}

// ---------------------------------------------------------------------------------------
// Headers

Deno.test("decodeWalHeader() reads the header of a WAL written by SQLite", () => {
  using fx = new WalDb();
  fx.commit(2);
  const wal = fx.wal();
  const h = decodeWalHeader(wal);
  assert.equal(h.littleEndian, HOST_LITTLE_ENDIAN);
  assert.equal(
    new DataView(wal.buffer).getUint32(0),
    HOST_LITTLE_ENDIAN ? WAL_MAGIC_LE : WAL_MAGIC_BE,
  );
  assert.equal(h.version, WAL_VERSION);
  assert.equal(h.pageSize, fx.pageSize());
  // Every frame of this life carries the header's salts.
  const f = decodeWalFrameHeader(wal.subarray(WAL_HEADER_SIZE));
  assert.deepEqual([f.salt1, f.salt2], [h.salt1, h.salt2]);
});

Deno.test("decodeWalHeader() reads a header re-encoded with big-endian checksums", () => {
  using fx = new WalDb();
  fx.commit(1);
  const le = decodeWalHeader(fx.wal());
  const bytes = encodeWalHeader({ ...le, littleEndian: false });
  assert.equal(new DataView(bytes.buffer).getUint32(0), WAL_MAGIC_BE);
  const be = decodeWalHeader(bytes);
  assert.equal(be.littleEndian, false);
  assert.deepEqual(
    [be.version, be.pageSize, be.checkpointSeq, be.salt1, be.salt2],
    [le.version, le.pageSize, le.checkpointSeq, le.salt1, le.salt2],
  );
  assert.ok(isWalHeaderChecksumValid(bytes));
});

Deno.test("encodeWalHeader() reproduces the header SQLite wrote, checksum included", () => {
  using fx = new WalDb();
  fx.commit(1);
  const real = fx.wal().subarray(0, WAL_HEADER_SIZE);
  assert.deepEqual(encodeWalHeader(decodeWalHeader(real)), real);
});

Deno.test("isWalHeaderChecksumValid() accepts SQLite's header and rejects a changed salt", () => {
  using fx = new WalDb();
  fx.commit(1);
  const header = fx.wal().subarray(0, WAL_HEADER_SIZE);
  assert.equal(isWalHeaderChecksumValid(header), true);
  const changed = header.slice();
  changed[19] ^= 0x01; // last byte of salt-1
  assert.equal(isWalHeaderChecksumValid(changed), false);
  const flippedOrder = header.slice();
  flippedOrder[3] ^= 0x01; // the magic's byte order bit: same words, other checksum order
  assert.equal(isWalHeaderChecksumValid(flippedOrder), false);
});

Deno.test("decodeWalHeader() throws SyntaxError for a short header, a bad magic or page size", () => {
  using fx = new WalDb();
  fx.commit(1);
  const header = fx.wal().subarray(0, WAL_HEADER_SIZE);
  assert.throws(() => decodeWalHeader(header.subarray(0, WAL_HEADER_SIZE - 1)), SyntaxError);
  const badMagic = header.slice();
  badMagic[0] ^= 0xff;
  assert.throws(() => decodeWalHeader(badMagic), SyntaxError);
  const badPageSize = header.slice();
  new DataView(badPageSize.buffer).setUint32(8, 1000);
  assert.throws(() => decodeWalHeader(badPageSize), SyntaxError);
  // A database file is not a WAL.
  assert.throws(() => decodeWalHeader(Deno.readFileSync(fx.path)), SyntaxError);
});

Deno.test("decodeWalFrameHeader() throws SyntaxError for fewer than 24 bytes", () => {
  using fx = new WalDb();
  fx.commit(1);
  const frame = fx.wal().subarray(WAL_HEADER_SIZE, WAL_HEADER_SIZE + WAL_FRAME_HEADER_SIZE - 1);
  assert.throws(() => decodeWalFrameHeader(frame), SyntaxError);
});

// ---------------------------------------------------------------------------------------
// Frame scanning

Deno.test("scanWalFrames() ends the committed bytes on the last commit frame of a real WAL", () => {
  using fx = new WalDb();
  fx.commit(1, 100);
  fx.commit(3, 3000);
  fx.commit(1, 10_000); // overflow pages: several frames in one transaction
  fx.commit(2, 500);
  const wal = fx.wal();
  const h = decodeWalHeader(wal);
  const fs = walFrameSize(h.pageSize);
  const r = scan(wal, h);
  assert.equal(r.stop, "end");
  assert.equal(r.committedBytes, fx.commits.at(-1)! - WAL_HEADER_SIZE);
  assert.equal(r.validFrames, (wal.length - WAL_HEADER_SIZE) / fs);
  assert.equal(r.commitSize, fx.pageCount());
  assert.equal(r.validFrames, fx.checkpoint("PASSIVE").log);
  // Every WAL prefix that SQLite left after a commit is itself committed up to its end.
  for (const size of fx.commits) {
    const prefix = scan(wal.subarray(0, size), h);
    assert.equal(prefix.committedBytes, size - WAL_HEADER_SIZE, `prefix of ${size} bytes`);
    assert.ok(prefix.commitSize > 0);
    assert.deepEqual(prefix.committedChecksum, lastChecksum(wal.subarray(0, size), h.pageSize));
  }
});

for (const pageSize of [512, 65536]) {
  Deno.test(`scanWalFrames() validates a real WAL with ${pageSize}-byte pages`, () => {
    using fx = new WalDb({ pageSize });
    fx.commit(4, 700);
    fx.commit(2, 70_000);
    const wal = fx.wal();
    const h = decodeWalHeader(wal);
    assert.equal(h.pageSize, pageSize);
    const r = scan(wal, h);
    assert.equal(r.stop, "end");
    assert.equal(r.committedBytes, fx.commits.at(-1)! - WAL_HEADER_SIZE);
    assert.equal(r.commitSize, fx.pageCount());
  });
}

Deno.test("scanWalFrames() accepts a WAL written by the sqlite3 CLI", () => {
  using fx = new WalDb();
  // Our open connection keeps the CLI from checkpointing and deleting the WAL on exit.
  const pages = sqliteCli([
    fx.path,
    "INSERT INTO t (v) VALUES (randomblob(5000)); INSERT INTO t (v) VALUES (zeroblob(100));" +
    " PRAGMA page_count;",
  ]);
  const wal = fx.wal();
  const r = scan(wal);
  assert.ok(isWalHeaderChecksumValid(wal));
  assert.equal(r.stop, "end");
  assert.equal(r.committedBytes, wal.length - WAL_HEADER_SIZE);
  assert.equal(r.commitSize, Number(pages));
});

Deno.test("scanWalFrames() stops at a torn last frame", () => {
  using fx = new WalDb();
  fx.commit(2);
  fx.commit(2);
  fx.commit(2);
  const wal = fx.wal();
  const h = decodeWalHeader(wal);
  const fs = walFrameSize(h.pageSize);
  const torn = wal.subarray(0, wal.length - Math.floor(fs / 2));
  const r = scan(torn, h);
  assert.equal(r.stop, "end");
  assert.equal(r.committedBytes, fx.commits.at(-2)! - WAL_HEADER_SIZE);
  assert.equal(r.validFrames, Math.floor((torn.length - WAL_HEADER_SIZE) / fs));
  // SQLite's own recovery agrees: the last transaction is gone.
  assert.equal(rowsVisibleWith(fx, torn), fx.rowsAfter.at(-2));
  assert.equal(rowsVisibleWith(fx, wal), fx.rowsAfter.at(-1));
});

Deno.test("scanWalFrames() leaves out an uncommitted tail that SQLite spilled", () => {
  using fx = new WalDb();
  fx.commit(2);
  // A tiny page cache makes SQLite spill dirty pages of an open transaction into the WAL.
  fx.db.exec("PRAGMA cache_size=2");
  fx.db.exec("BEGIN");
  fx.insert(40, 3000);
  const wal = fx.wal();
  fx.db.exec("ROLLBACK");
  assert.ok(wal.length > fx.commits[0], "SQLite did not spill any frame");
  const h = decodeWalHeader(wal);
  const fs = walFrameSize(h.pageSize);
  const r = scan(wal, h);
  assert.equal(r.stop, "end");
  assert.equal(r.committedBytes, fx.commits[0] - WAL_HEADER_SIZE);
  assert.equal(r.validFrames, (wal.length - WAL_HEADER_SIZE) / fs);
  assert.ok(r.validFrames > r.committedBytes / fs);
  const last = decodeWalFrameHeader(wal.subarray(wal.length - fs));
  assert.equal(last.commit, 0);
  assert.deepEqual(r.checksum, [last.checksum1, last.checksum2]);
  assert.deepEqual(r.committedChecksum, lastChecksum(wal.subarray(0, fx.commits[0]), h.pageSize));
  assert.equal(rowsVisibleWith(fx, wal), fx.rowsAfter[0]);
});

Deno.test("scanWalFrames() stops at frames with stale salts after a RESTART checkpoint", () => {
  using fx = new WalDb();
  fx.commit(30);
  const before = decodeWalHeader(fx.wal());
  const bigSize = fx.walSize();
  fx.checkpoint("RESTART");
  fx.commit(1, 10);
  const wal = fx.wal();
  // SQLite rewrote the WAL from its start and left the old life's frames behind it.
  assert.equal(wal.length, bigSize);
  const h = decodeWalHeader(wal);
  const fs = walFrameSize(h.pageSize);
  const r = scan(wal, h);
  assert.equal(r.stop, "salt");
  const frames = fx.checkpoint("PASSIVE").log;
  assert.ok(frames > 0);
  assert.equal(r.committedBytes, frames * fs);
  assert.equal(r.validFrames, frames);
  const stale = decodeWalFrameHeader(wal.subarray(WAL_HEADER_SIZE + r.committedBytes));
  assert.deepEqual([stale.salt1, stale.salt2], [before.salt1, before.salt2]);
  assert.equal(rowsVisibleWith(fx, wal), fx.rowsAfter.at(-1));
});

Deno.test("scanWalFrames() stops with a checksum error at a corrupted page byte", () => {
  using fx = new WalDb();
  fx.commit(2);
  fx.commit(2);
  fx.commit(2);
  const wal = fx.wal();
  const h = decodeWalHeader(wal);
  const fs = walFrameSize(h.pageSize);
  const corrupt = wal.slice();
  corrupt[fx.commits[0] + WAL_FRAME_HEADER_SIZE + 100] ^= 0x40; // first frame of transaction 2
  const r = scan(corrupt, h);
  assert.equal(r.stop, "checksum");
  assert.equal(r.committedBytes, fx.commits[0] - WAL_HEADER_SIZE);
  assert.equal(r.validFrames, (fx.commits[0] - WAL_HEADER_SIZE) / fs);
  // A corrupt frame header checksum field is caught too.
  const badSum = wal.slice();
  badSum[fx.commits[1] + 19] ^= 0x01;
  const r2 = scan(badSum, h);
  assert.equal(r2.stop, "checksum");
  assert.equal(r2.committedBytes, fx.commits[1] - WAL_HEADER_SIZE);
  // SQLite's recovery stops at the same place.
  assert.equal(rowsVisibleWith(fx, corrupt), fx.rowsAfter[0]);
  assert.equal(rowsVisibleWith(fx, badSum), fx.rowsAfter[1]);
});

Deno.test("scanWalFrames() validates a big-endian-checksum WAL that SQLite also accepts", () => {
  using fx = new WalDb();
  fx.commit(2);
  fx.commit(1, 9000);
  const wal = fx.wal();
  const be = reencodeWal(wal, !HOST_LITTLE_ENDIAN);
  const hBe = decodeWalHeader(be);
  assert.equal(hBe.littleEndian, !HOST_LITTLE_ENDIAN);
  assert.ok(isWalHeaderChecksumValid(be));
  const want = scan(wal);
  const got = scan(be, hBe);
  assert.equal(got.stop, "end");
  assert.equal(got.committedBytes, want.committedBytes);
  assert.equal(got.commitSize, want.commitSize);
  assert.equal(got.validFrames, want.validFrames);
  assert.notDeepEqual(got.committedChecksum, want.committedChecksum);
  // SQLite recovers every row from the re-encoded WAL, so the checksums are what it expects.
  assert.equal(rowsVisibleWith(fx, be), fx.rowsAfter.at(-1));
  // Changing only the magic (not the checksums) breaks the first frame.
  const wrongOrder = wal.slice();
  wrongOrder.set(encodeWalHeader({ ...decodeWalHeader(wal), littleEndian: !HOST_LITTLE_ENDIAN }));
  const r = scan(wrongOrder);
  assert.equal(r.stop, "checksum");
  assert.equal(r.validFrames, 0);
  assert.equal(r.committedBytes, 0);
});

Deno.test("scanWalFrames() returns the seed and no commit for an empty frame area", () => {
  using fx = new WalDb();
  fx.commit(1);
  const wal = fx.wal();
  const h = decodeWalHeader(wal);
  // A header plus less than one whole frame holds no frame at all.
  const r = scan(wal.subarray(0, WAL_HEADER_SIZE + walFrameSize(h.pageSize) - 1), h);
  assert.equal(r.stop, "end");
  assert.equal(r.committedBytes, 0);
  assert.equal(r.commitSize, 0);
  assert.equal(r.validFrames, 0);
  assert.deepEqual(r.committedChecksum, [h.checksum1, h.checksum2]);
  assert.deepEqual(r.checksum, [h.checksum1, h.checksum2]);
});

Deno.test("scanWalFrames() continues a scan split at any frame from the running checksum", () => {
  using fx = new WalDb();
  fx.commit(1, 100);
  fx.commit(1, 10_000);
  fx.commit(2, 100);
  const wal = fx.wal();
  const h = decodeWalHeader(wal);
  const fs = walFrameSize(h.pageSize);
  const whole = scan(wal, h);
  assert.deepEqual(whole.checksum, lastChecksum(wal, h.pageSize));
  const frames = wal.subarray(WAL_HEADER_SIZE);
  for (let split = 0; split <= frames.length; split += fs) {
    const first = scanWalFrames(frames.subarray(0, split), h, [h.checksum1, h.checksum2]);
    assert.equal(first.validFrames, split / fs);
    const rest = scanWalFrames(frames.subarray(split), h, first.checksum);
    assert.equal(rest.stop, "end", `split at ${split}`);
    assert.equal(first.validFrames + rest.validFrames, whole.validFrames);
    assert.deepEqual(rest.checksum, whole.checksum);
    assert.equal(
      rest.commitSize > 0 ? split + rest.committedBytes : first.committedBytes,
      whole.committedBytes,
    );
  }
  // Seeding the second half with a wrong checksum fails at its first frame.
  const wrong = scanWalFrames(frames.subarray(fs), h, [h.checksum1, h.checksum2]);
  assert.equal(wrong.stop, "checksum");
  assert.equal(wrong.validFrames, 0);
});

Deno.test("walChecksum() gives the same sums for unaligned input as SQLite stored", () => {
  using fx = new WalDb();
  fx.commit(1);
  const wal = fx.wal();
  const h = decodeWalHeader(wal);
  const fs = walFrameSize(h.pageSize);
  const frame = wal.subarray(WAL_HEADER_SIZE, WAL_HEADER_SIZE + fs);
  const f = decodeWalFrameHeader(frame);
  for (const shift of [0, 1, 2, 3]) {
    const buf = new Uint8Array(fs + shift);
    buf.set(frame, shift);
    const fr = buf.subarray(shift);
    let sum = walChecksum(h.littleEndian, fr.subarray(0, 8), [h.checksum1, h.checksum2]);
    sum = walChecksum(h.littleEndian, fr.subarray(WAL_FRAME_HEADER_SIZE), sum);
    assert.deepEqual(sum, [f.checksum1, f.checksum2], `shift ${shift}`);
  }
  assert.throws(() => walChecksum(true, new Uint8Array(12), [0, 0]), RangeError);
});

Deno.test("lastChecksum() returns the checksum of the last frame or of the header", () => {
  using fx = new WalDb();
  fx.commit(1);
  fx.commit(1);
  const wal = fx.wal();
  const h = decodeWalHeader(wal);
  const fs = walFrameSize(h.pageSize);
  const last = decodeWalFrameHeader(wal.subarray(wal.length - fs));
  assert.deepEqual(lastChecksum(wal, h.pageSize), [last.checksum1, last.checksum2]);
  assert.deepEqual(lastChecksum(wal.subarray(0, WAL_HEADER_SIZE), h.pageSize), [
    h.checksum1,
    h.checksum2,
  ]);
});

// ---------------------------------------------------------------------------------------
// WAL restarts

Deno.test("isNextWalHeader() is true across one real WAL restart and false otherwise", () => {
  using fx = new WalDb();
  fx.commit(5);
  const h0 = decodeWalHeader(fx.wal());
  fx.checkpoint("RESTART");
  fx.commit(1);
  const h1 = decodeWalHeader(fx.wal());
  fx.checkpoint("TRUNCATE");
  assert.equal(fx.walSize(), 0);
  fx.commit(1);
  const h2 = decodeWalHeader(fx.wal());
  // The last connection's close deletes the WAL; the next one starts a fresh sequence.
  fx.reopen();
  fx.commit(1);
  const h3 = decodeWalHeader(fx.wal());

  assert.equal(isNextWalHeader(h0, h1), true);
  assert.equal(isNextWalHeader(h1, h2), true);
  assert.equal(isNextWalHeader(h0, h2), false, "two restarts went by");
  assert.equal(isNextWalHeader(h1, h0), false, "backwards");
  assert.equal(isNextWalHeader(h1, h1), false, "same life");
  assert.equal(isNextWalHeader(h2, h3), false, "WAL deleted and recreated");
  assert.equal(isNextWalHeader(h0, { ...h1, littleEndian: !h1.littleEndian }), false);
  assert.equal(isNextWalHeader(h0, { ...h1, pageSize: h1.pageSize * 2 }), false);
});

Deno.test("isNextWalHeader() wraps salt-1 at 32 bits and ignores the per-connection checkpoint sequence", () => {
  const prev: WalHeader = {
    littleEndian: true,
    version: WAL_VERSION,
    pageSize: 4096,
    checkpointSeq: 0xffffffff,
    salt1: 0xffffffff,
    salt2: 7,
    checksum1: 0,
    checksum2: 0,
  };
  assert.equal(isNextWalHeader(prev, { ...prev, checkpointSeq: 0, salt1: 0, salt2: 9 }), true);
  assert.equal(isNextWalHeader(prev, { ...prev, checkpointSeq: 0, salt1: 5 }), false);
  // SQLite writes the restarting connection's own counter here; only salt-1 is shared.
  assert.equal(isNextWalHeader(prev, { ...prev, checkpointSeq: 5, salt1: 0 }), true);
  assert.equal(isNextWalHeader(prev, { ...prev, salt1: 0, pageSize: 8192 }), false);
  assert.equal(
    isNextWalHeader(prev, { ...prev, salt1: 0x100000000 }),
    false,
  );
});

// ---------------------------------------------------------------------------------------
// Size arithmetic

Deno.test("frameAlign() and calcWalSize() agree with real WAL file sizes", () => {
  using fx = new WalDb();
  fx.commit(1, 10);
  fx.commit(2);
  fx.commit(1, 20_000);
  const pageSize = fx.pageSize();
  const fs = walFrameSize(pageSize);
  assert.equal(fs, WAL_FRAME_HEADER_SIZE + pageSize);
  const frames = fx.checkpoint("PASSIVE").log;
  assert.equal(calcWalSize(pageSize, frames), fx.walSize());
  assert.equal(calcWalSize(pageSize, 0), WAL_HEADER_SIZE);
  for (const size of fx.commits) {
    assert.equal(frameAlign(size, pageSize), size);
    assert.equal(frameAlign(size + 1, pageSize), size);
    assert.equal(frameAlign(size + fs - 1, pageSize), size);
    assert.equal(frameAlign(size + fs, pageSize), size + fs);
    assert.equal(frameAlign(size - 1, pageSize), size - fs);
  }
  assert.equal(frameAlign(0, pageSize), 0);
  assert.equal(frameAlign(WAL_HEADER_SIZE - 1, pageSize), 0);
  assert.equal(frameAlign(WAL_HEADER_SIZE, pageSize), WAL_HEADER_SIZE);
  assert.equal(frameAlign(WAL_HEADER_SIZE + fs - 1, pageSize), WAL_HEADER_SIZE);
});

// ---------------------------------------------------------------------------------------
// Database header

for (const pageSize of [512, 4096, 65536]) {
  Deno.test(`decodeDbPageSize() reads page size ${pageSize} from real database files`, () => {
    const dir = Deno.makeTempDirSync({ prefix: "wal_test_page_" });
    try {
      // One file from the engine inside Deno, one from the sqlite3 CLI (3.40.1).
      const ours = `${dir}/ours.db`;
      const db = new DatabaseSync(ours);
      db.exec(`PRAGMA page_size=${pageSize}; PRAGMA journal_mode=wal; CREATE TABLE t (x)`);
      db.close();
      const cli = `${dir}/cli.db`;
      const reported = sqliteCli([
        cli,
        `PRAGMA page_size=${pageSize}; CREATE TABLE t (x); PRAGMA page_size;`,
      ]);
      assert.equal(Number(reported), pageSize);
      for (const path of [ours, cli]) {
        const bytes = Deno.readFileSync(path);
        assert.equal(decodeDbPageSize(bytes.subarray(0, 100)), pageSize, path);
        assert.equal(bytes.length % pageSize, 0);
      }
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  });
}

Deno.test("decodeDbPageSize() throws SyntaxError for short input, a WAL or a bad page size", () => {
  using fx = new WalDb();
  fx.commit(1);
  const header = Deno.readFileSync(fx.path).subarray(0, 100);
  assert.throws(() => decodeDbPageSize(header.subarray(0, 99)), SyntaxError);
  assert.throws(() => decodeDbPageSize(fx.wal().subarray(0, 100)), SyntaxError);
  const bad = header.slice();
  new DataView(bad.buffer).setUint16(16, 1000);
  assert.throws(() => decodeDbPageSize(bad), SyntaxError);
});

Deno.test("decodeWalIndexHeader() reads SQLite's committed frame count and salts, and refuses a torn or damaged header", () => {
  using w = new WalDb();
  for (let i = 0; i < 3; i++) w.commit(2);
  const shm = Deno.readFileSync(`${w.path}-shm`).slice(0, 2 * WAL_INDEX_HEADER_SIZE);
  const wal = Deno.readFileSync(`${w.path}-wal`);
  const h = decodeWalIndexHeader(shm);
  assert.ok(h);
  assert.equal(h.mxFrame, (wal.length - WAL_HEADER_SIZE) / walFrameSize(4096));
  assert.deepEqual(h.salt, wal.slice(16, 24));
  // SQLite's own count agrees (a PASSIVE checkpoint reports the frames in the WAL).
  assert.equal(w.checkpoint("PASSIVE").log, h.mxFrame);
  // The two copies differ (a writer was between them): try again.
  const torn = shm.slice();
  torn[WAL_INDEX_HEADER_SIZE + 16] ^= 1;
  assert.equal(decodeWalIndexHeader(torn), undefined);
  // Both copies changed alike but the checksum no longer matches.
  const bad = shm.slice();
  bad[16] ^= 1;
  bad[WAL_INDEX_HEADER_SIZE + 16] ^= 1;
  assert.equal(decodeWalIndexHeader(bad), undefined);
  assert.equal(decodeWalIndexHeader(shm.subarray(0, 60)), undefined);
});
