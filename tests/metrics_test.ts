/**
 * `/metrics` of `replicate` against the real Litestream v0.3.13: both run the same config
 * (a file replica, then an S3 replica on moto) while a `sqlite3` process commits past a
 * checkpoint. Every `litestream_*` family v0.3.13 exports must be exported by us with the
 * same type and label names, plus our `litestream_write_lock_*`; and the values must mean
 * the same: sizes of the real files, the shadow WAL on disk, the position the replica holds
 * and, for S3, the objects stored.
 *
 * @module
 */
import assert from "node:assert/strict";
import { isDeepStrictEqual } from "node:util";
import { tempDir, waitFor, Writer } from "./_helpers.ts";
import { createLoadDb, Daemon, prepareWriter, writeLoad } from "./_daemon.ts";
import {
  closedPort,
  isCi,
  s3ServerUnavailable,
  type S3TestServer,
  startS3Server,
} from "./_s3_servers.ts";
import { FileReplicaClient } from "../src/clients/file.ts";
import { S3ReplicaClient } from "../src/clients/s3.ts";
import { lz4Compress, lz4Decompress } from "../src/lz4.ts";
import {
  formatMetrics,
  newDbMetrics,
  newReplicaMetrics,
  ReplicaOperationMetrics,
} from "../src/metrics.ts";
import {
  readAll,
  type ReplicaClient,
  sortedSnapshots,
  sortedWalSegments,
} from "../src/replica_client.ts";

// ---------------------------------------------------------------------------------------
// The exposition format

/** One series of a family. */
interface Sample {
  labels: Record<string, string>;
  value: number;
}

/** One metric family of a scrape: its type, every label name its series use, its series. */
interface Family {
  type: string;
  labelNames: string[];
  samples: Sample[];
}

const TYPE_REGEXP = /^# TYPE (\S+) (\S+)$/;
const SAMPLE_REGEXP = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: \S+)?$/;
const LABEL_REGEXP = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

/** Parses Prometheus text (0.0.4) into the `litestream_*` families; ignores Go's own. */
function parseMetrics(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  for (const line of text.split("\n")) {
    const t = TYPE_REGEXP.exec(line);
    if (t) {
      if (t[1].startsWith("litestream_")) {
        families.set(t[1], { type: t[2], labelNames: [], samples: [] });
      }
      continue;
    }
    const s = SAMPLE_REGEXP.exec(line);
    if (!s || line.startsWith("#")) continue;
    const family = families.get(s[1]);
    if (!family) continue;
    const labels: Record<string, string> = {};
    for (const [, k, v] of (s[2] ?? "").matchAll(LABEL_REGEXP)) {
      labels[k] = v.replace(/\\(.)/g, (_, c) => c === "n" ? "\n" : c);
    }
    family.samples.push({ labels, value: Number(s[3]) });
    family.labelNames = [...new Set([...family.labelNames, ...Object.keys(labels)])].sort();
  }
  return families;
}

/** The value of the first series of `name` carrying `labels`, if there is one. */
function valueOf(
  families: Map<string, Family>,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  return families.get(name)?.samples.find((s) =>
    Object.entries(labels).every(([k, v]) => s.labels[k] === v)
  )?.value;
}

// ---------------------------------------------------------------------------------------
// formatMetrics

Deno.test("formatMetrics() sums operation counters per replica type and escapes label values", () => {
  const db = newDbMetrics('/tmp/a "b"\\c\nd.db');
  const replica = newReplicaMetrics(db.db, "s3");
  const [one, two] = [new ReplicaOperationMetrics("s3"), new ReplicaOperationMetrics("s3")];
  one.record("PUT", 100);
  two.record("PUT", 20);
  two.record("LIST");
  const m = parseMetrics(formatMetrics([db], [replica], [one, two]));
  assert.deepEqual(m.get("litestream_replica_operation_total")?.samples, [
    { labels: { replica_type: "s3", operation: "PUT" }, value: 2 },
    { labels: { replica_type: "s3", operation: "LIST" }, value: 1 },
  ]);
  assert.deepEqual(m.get("litestream_replica_operation_bytes")?.samples, [
    { labels: { replica_type: "s3", operation: "PUT" }, value: 120 },
  ]);
  assert.deepEqual(m.get("litestream_db_size")?.samples, [{ labels: { db: db.db }, value: 0 }]);
});

Deno.test("formatMetrics() leaves out families without series, as v0.3.13's registry does", () => {
  const m = parseMetrics(formatMetrics([newDbMetrics("/x.db")], [], []));
  assert.ok(m.has("litestream_sync_count"));
  for (const name of ["litestream_checkpoint_count", "litestream_replica_wal_index"]) {
    assert.equal(m.has(name), false, name);
  }
  assert.equal(m.has("litestream_replica_operation_total"), false);
});

// ---------------------------------------------------------------------------------------
// Fixtures

type Tool = "v0.3.13" | "ours";

/** Where a replica goes: its lines in the config file and a client to read it back. */
interface Target {
  kind: "file" | "s3";
  /** YAML lines of the replica (indented for `replicas:`). */
  yaml: string[];
  client: ReplicaClient;
}

function fileTarget(root: string): Target {
  return {
    kind: "file",
    yaml: [`      - url: file://${root}`],
    client: new FileReplicaClient(root),
  };
}

function s3Target(server: S3TestServer, prefix: string): Target {
  const o = server.clientOptions(prefix);
  return {
    kind: "s3",
    yaml: [
      "      - type: s3",
      `        bucket: ${o.bucket}`,
      `        path: ${o.path}`,
      `        endpoint: ${o.endpoint}`,
      "        region: us-east-1",
      "        force-path-style: true",
      `        access-key-id: ${o.accessKeyId}`,
      `        secret-access-key: ${o.secretAccessKey}`,
      "        sync-interval: 100ms",
    ],
    client: new S3ReplicaClient(o),
  };
}

/** Families every run must show before it is compared: the lazily created ones. */
function lazyFamilies(kind: Target["kind"]): string[] {
  const families = [
    "litestream_checkpoint_count",
    "litestream_checkpoint_seconds",
    "litestream_replica_wal_bytes",
    "litestream_replica_wal_index",
    "litestream_replica_wal_offset",
  ];
  if (kind === "s3") {
    families.push("litestream_replica_operation_total", "litestream_replica_operation_bytes");
  }
  return families;
}

/** One replicator (ours or v0.3.13) running on its own database with a metrics address. */
class Run implements AsyncDisposable {
  readonly tool: Tool;
  readonly target: Target;
  readonly db: string;
  readonly addr: string;
  readonly writer: Writer;
  readonly daemon: Daemon;

  private constructor(
    tool: Tool,
    target: Target,
    db: string,
    addr: string,
    writer: Writer,
    daemon: Daemon,
  ) {
    this.tool = tool;
    this.target = target;
    this.db = db;
    this.addr = addr;
    this.writer = writer;
    this.daemon = daemon;
  }

  /**
   * Creates `dir/app.db`, starts `tool` replicating it to `target` with metrics on a free
   * port and, once the first WAL segment is replicated, commits enough to cross
   * `min-checkpoint-page-count` several times.
   */
  static async start(tool: Tool, target: Target, dir: string): Promise<Run> {
    const db = `${dir}/app.db`;
    const addr = `127.0.0.1:${closedPort()}`;
    const config = `${dir}/litestream.yml`;
    await Deno.writeTextFile(
      config,
      [
        `addr: "${addr}"`,
        "dbs:",
        `  - path: ${db}`,
        "    monitor-interval: 100ms",
        "    min-checkpoint-page-count: 20",
        "    replicas:",
        ...target.yaml,
        "",
      ].join("\n"),
    );
    const writer = new Writer(db);
    let daemon: Daemon | undefined;
    try {
      await prepareWriter(writer);
      await createLoadDb(writer);
      const args = ["replicate", "-config", config];
      daemon = tool === "ours" ? Daemon.ours(args) : await Daemon.oracle(args);
      const run = new Run(tool, target, db, addr, writer, daemon);
      // Commit while it replicates, so checkpoints and new shadow WAL files happen live.
      await run.scrapeWith(["litestream_replica_wal_offset"]);
      await writeLoad(writer, { txns: 20, pauseMs: 5 });
      return run;
    } catch (err) {
      await daemon?.[Symbol.asyncDispose]();
      await writer.close();
      throw err;
    }
  }

  /** Scrapes `/metrics`; `undefined` while the server is not up yet. */
  async scrape(): Promise<Map<string, Family> | undefined> {
    if (!this.daemon.running) {
      throw new Error(`${this.tool} exited; log:\n${this.daemon.log}`);
    }
    try {
      const res = await fetch(`http://${this.addr}/metrics`);
      const text = await res.text();
      return res.ok ? parseMetrics(text) : undefined;
    } catch (err) {
      if (err instanceof TypeError) return undefined; // connection refused: still starting
      throw err;
    }
  }

  /** Scrapes until every family in `names` has a series. */
  async scrapeWith(names: string[]): Promise<Map<string, Family>> {
    let families: Map<string, Family> | undefined;
    await this.#wait(`${this.tool} exporting ${names.join(", ")}`, async () => {
      families = await this.scrape();
      return families !== undefined &&
        names.every((n) => (families!.get(n)?.samples.length ?? 0) > 0);
    });
    return families!;
  }

  /**
   * Waits until `fn` gives equal `actual` and `expected` (both read anew each time, since
   * the daemon publishes what it saw at its last sync); then asserts it, so a timeout shows
   * the last values.
   */
  async eventuallyEqual<T>(
    what: string,
    fn: (m: Map<string, Family>) => Promise<{ actual: T; expected: T }>,
  ): Promise<void> {
    let last: { actual: T; expected: T } | undefined;
    try {
      await this.#wait(`${this.tool}: ${what}`, async () => {
        const m = await this.scrape();
        if (!m) return false;
        last = await fn(m);
        return isDeepStrictEqual(last.actual, last.expected);
      });
    } catch (err) {
      const timedOut = err instanceof Error && err.message.startsWith("Timed out");
      if (!last || !timedOut) throw err;
    }
    assert.deepEqual(last!.actual, last!.expected, `${this.tool}: ${what}`);
  }

  async #wait(what: string, fn: () => Promise<boolean>): Promise<void> {
    try {
      await waitFor(fn, 30_000, what);
    } catch (err) {
      if (err instanceof Error) err.message += `\n--- ${this.tool} log ---\n${this.daemon.log}`;
      throw err;
    }
  }

  /** The current generation and its shadow WAL files (index, size) on disk. */
  async shadowWal(): Promise<{ generation: string; files: { index: number; size: number }[] }> {
    const meta = this.db.replace(/[^/]+$/, (f) => `.${f}-litestream`);
    const generation = (await Deno.readTextFile(`${meta}/generation`)).trim();
    const dir = `${meta}/generations/${generation}/wal`;
    const files: { index: number; size: number }[] = [];
    for await (const e of Deno.readDir(dir)) {
      const m = /^([0-9a-f]{8})\.wal$/.exec(e.name);
      if (!m) continue;
      try {
        files.push({ index: parseInt(m[1], 16), size: (await Deno.stat(`${dir}/${e.name}`)).size });
      } catch (err) {
        if (!(err instanceof Deno.errors.NotFound)) throw err; // removed meanwhile
      }
    }
    return { generation, files };
  }

  /** Where the replica's last WAL segment of `generation` ends. */
  async replicaEnd(generation: string): Promise<{ index: number; offset: number } | undefined> {
    const last = (await sortedWalSegments(this.target.client, generation)).at(-1);
    if (!last) return undefined;
    const frames = lz4Decompress(await readAll(await this.target.client.openWalSegment(last)));
    return { index: last.index, offset: last.offset + frames.length };
  }

  /** Objects in the replica: count and stored bytes. */
  async stored(generation: string): Promise<{ objects: number; bytes: number }> {
    const all = [
      ...await sortedSnapshots(this.target.client, generation),
      ...await sortedWalSegments(this.target.client, generation),
    ];
    return { objects: all.length, bytes: all.reduce((n, x) => n + x.size, 0) };
  }

  /** Stops the daemon (v0.3.13 with its known shutdown defects tolerated). */
  async stop(): Promise<void> {
    if (this.tool === "ours") await this.daemon.stopCleanly();
    else await this.daemon.stopOracle();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.daemon[Symbol.asyncDispose]();
    await this.writer.close();
  }
}

/**
 * Checks that `run`'s values mean what v0.3.13's mean, once it is idle: the sizes of the
 * database and `-wal` files, the shadow WAL index and size on disk, the position the
 * replica holds, and for S3 the stored objects the PUT counters account for.
 */
async function checkValues(run: Run): Promise<void> {
  const db = { db: run.db };
  const m = await run.scrapeWith(lazyFamilies(run.target.kind));
  assert.ok((valueOf(m, "litestream_total_wal_bytes", db) ?? 0) > 0, `${run.tool}: total wal`);
  assert.ok((valueOf(m, "litestream_sync_count", db) ?? 0) > 0, `${run.tool}: syncs`);
  assert.ok(
    (valueOf(m, "litestream_checkpoint_count", { ...db, mode: "PASSIVE" }) ?? 0) > 0,
    `${run.tool}: PASSIVE checkpoints`,
  );

  await run.eventuallyEqual("litestream_db_size is the database file's size", async (m) => ({
    actual: valueOf(m, "litestream_db_size", db),
    expected: (await Deno.stat(run.db)).size,
  }));
  await run.eventuallyEqual("litestream_wal_size is the -wal file's size", async (m) => ({
    actual: valueOf(m, "litestream_wal_size", db),
    expected: (await Deno.stat(`${run.db}-wal`)).size,
  }));
  await run.eventuallyEqual("litestream_shadow_wal_index is the last shadow WAL", async (m) => ({
    actual: valueOf(m, "litestream_shadow_wal_index", db),
    expected: Math.max(...(await run.shadowWal()).files.map((f) => f.index)),
  }));
  const replica = { ...db, name: run.target.kind };
  await run.eventuallyEqual("litestream_replica_wal_* is the replica's end", async (m) => ({
    actual: {
      index: valueOf(m, "litestream_replica_wal_index", replica),
      offset: valueOf(m, "litestream_replica_wal_offset", replica),
    },
    expected: await run.replicaEnd((await run.shadowWal()).generation),
  }));
  if (run.target.kind === "s3") {
    const s3 = { "replica_type": "s3" };
    assert.ok(
      (valueOf(m, "litestream_replica_operation_total", { ...s3, operation: "LIST" }) ??
        0) > 0,
      `${run.tool}: LIST requests`,
    );
    await run.eventuallyEqual("PUT requests and bytes are the objects stored", async (m) => ({
      actual: {
        objects: valueOf(m, "litestream_replica_operation_total", { ...s3, operation: "PUT" }),
        bytes: valueOf(m, "litestream_replica_operation_bytes", { ...s3, operation: "PUT" }),
      },
      expected: await run.stored((await run.shadowWal()).generation),
    }));
  }

  // Last, so the checks above run even while this one fails.
  assert.ok(
    (valueOf(await run.scrapeWith([]), "litestream_shadow_wal_size", db) ?? 0) > 0,
    `${run.tool}: litestream_shadow_wal_size > 0 after commits`,
  );
  await run.eventuallyEqual("litestream_shadow_wal_size is the shadow WAL files' size", async (
    m,
  ) => ({
    actual: valueOf(m, "litestream_shadow_wal_size", db),
    expected: (await run.shadowWal()).files.reduce((n, f) => n + f.size, 0),
  }));
}

/**
 * Runs v0.3.13 and ours side by side on `targets`, then compares their families and checks
 * their values.
 */
async function compare(dir: string, targets: Record<Tool, Target>): Promise<void> {
  await using _clients = {
    async [Symbol.asyncDispose]() {
      for (const t of Object.values(targets)) await t.client.close?.();
    },
  };
  await Deno.mkdir(`${dir}/oracle`);
  await Deno.mkdir(`${dir}/ours`);
  const started = await Promise.allSettled([
    Run.start("v0.3.13", targets["v0.3.13"], `${dir}/oracle`),
    Run.start("ours", targets.ours, `${dir}/ours`),
  ]);
  const failed = started.find((r) => r.status === "rejected");
  if (failed) {
    for (const r of started) if (r.status === "fulfilled") await r.value[Symbol.asyncDispose]();
    throw failed.reason;
  }
  const [oracleRun, ourRun] = started.map((r) => (r as PromiseFulfilledResult<Run>).value);
  await using oracle = oracleRun;
  await using ours = ourRun;
  const lazy = lazyFamilies(targets.ours.kind);
  const [theirs, mine] = await Promise.all([oracle.scrapeWith(lazy), ours.scrapeWith(lazy)]);

  // Every family of v0.3.13's, with the same type and label names.
  assert.ok(theirs.size >= 14, `v0.3.13 exports its families: ${[...theirs.keys()]}`);
  for (const [name, family] of theirs) {
    const our = mine.get(name);
    assert.ok(our, `ours exports ${name}`);
    assert.equal(our.type, family.type, `type of ${name}`);
    assert.deepEqual(our.labelNames, family.labelNames, `label names of ${name}`);
  }
  for (
    const name of [
      "litestream_write_lock_count",
      "litestream_write_lock_seconds",
      "litestream_write_lock_long_count",
    ]
  ) {
    assert.deepEqual([mine.get(name)?.type, mine.get(name)?.labelNames], ["counter", ["db"]]);
  }
  assert.deepEqual(
    [
      mine.get("litestream_write_lock_max_seconds")?.type,
      mine.get("litestream_write_lock_max_seconds")?.labelNames,
    ],
    ["gauge", ["db"]],
  );
  if (targets.ours.kind === "s3") {
    for (const m of [theirs, mine]) {
      const types = m.get("litestream_replica_operation_total")!.samples.map((s) =>
        s.labels.replica_type
      );
      assert.deepEqual([...new Set(types)], ["s3"]);
    }
  }

  await checkValues(oracle);
  await checkValues(ours);

  // Our lock metrics agree with each other (PASSIVE checkpoints may never take the lock).
  const locks = await ours.scrapeWith([]);
  const [count, seconds, max] = ["count", "seconds", "max_seconds"].map((s) =>
    valueOf(locks, `litestream_write_lock_${s}`, { db: ours.db })!
  );
  assert.equal(count > 0, seconds > 0, `write lock held ${count} times for ${seconds} s`);
  assert.ok(
    max <= seconds + 1e-9 && (count === 0 || max >= seconds / count - 1e-9),
    `max ${max} s`,
  );
  await Promise.all([oracle.stop(), ours.stop()]);
}

Deno.test("/metrics with a file replica: v0.3.13's families, types, labels and meanings", async () => {
  await using dir = await tempDir();
  await compare(dir.path, {
    "v0.3.13": fileTarget(`${dir.path}/oracle-replica`),
    ours: fileTarget(`${dir.path}/our-replica`),
  });
});

const motoUnavailable = await s3ServerUnavailable("moto");

Deno.test({
  name: "S3ReplicaClient.operations counts requests and bytes as v0.3.13 does",
  ignore: motoUnavailable !== undefined && !isCi(),
  async fn() {
    await using server = await startS3Server("moto");
    await using client = new S3ReplicaClient(
      server.clientOptions(`m${crypto.randomUUID().slice(0, 8)}`),
    );
    const generation = "0123456789abcdef";
    const body = lz4Compress(new Uint8Array(5000).fill(7));
    await client.writeWalSegment({ generation, index: 1, offset: 0 }, body);
    await client.writeWalSegment(
      { generation, index: 1, offset: 5000 },
      ReadableStream.from([body]),
    );
    await readAll(await client.openWalSegment({ generation, index: 1, offset: 0 }));
    await assert.rejects(
      client.openWalSegment({ generation, index: 9, offset: 0 }),
      Deno.errors.NotFound,
    );
    assert.equal((await sortedWalSegments(client, generation)).length, 2);
    await client.deleteGeneration(generation);
    assert.deepEqual(client.operations.total, { PUT: 2, GET: 1, LIST: 2, DELETE: 1 });
    assert.deepEqual(client.operations.bytes, { PUT: 2 * body.length, GET: body.length });
  },
});

Deno.test({
  name: "/metrics with an S3 replica (moto): v0.3.13's families, operation counters included",
  ignore: motoUnavailable !== undefined && !isCi(),
  async fn() {
    await using server = await startS3Server("moto");
    await using dir = await tempDir();
    const prefix = `m${crypto.randomUUID().slice(0, 8)}`;
    await compare(dir.path, {
      "v0.3.13": s3Target(server, `${prefix}/oracle`),
      ours: s3Target(server, `${prefix}/ours`),
    });
  },
});
