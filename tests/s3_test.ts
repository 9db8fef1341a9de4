/**
 * End to end over S3: our CLI and the real Litestream v0.3.13 as separate processes, a real
 * `sqlite3` process writing, and real S3 servers on 127.0.0.1 (moto with IAM checks, and
 * fauxqs). Each server is started once and shared by its steps; every step works under its
 * own random key prefix.
 *
 * Per server: replicate while a writer crosses checkpoints and restore (config file, and the
 * `s3://BUCKET.localhost:PORT/prefix` URL form), interop both ways with v0.3.13, the failure
 * modes (wrong credentials, missing bucket) of `restore`, `generations` and `replicate`, an
 * S3 outage in the middle of replication, the idle request count, and listings past 1000
 * objects. An unreachable endpoint needs no server.
 *
 * @module
 */
import assert from "node:assert/strict";
import { lookup } from "node:dns/promises";
import * as net from "node:net";
import { cli, dump, integrity, tempDir, Writer } from "./_helpers.ts";
import {
  createLoadDb,
  Daemon,
  ok,
  parseTable,
  prepareWriter,
  rowCount,
  runOracle,
  sleep,
  writeLoad,
} from "./_daemon.ts";
import {
  closedPort,
  isCi,
  type S3Proxy,
  type S3ServerKind,
  s3ServerKinds,
  s3ServerUnavailable,
  type S3TestServer,
  startS3Proxy,
  startS3Server,
} from "./_s3_servers.ts";
import { S3ReplicaClient } from "../src/clients/s3.ts";
import { Db } from "../src/db.ts";
import { Replica } from "../src/replica.ts";
import { restore } from "../src/restore.ts";
import { lz4Compress, lz4Decompress } from "../src/lz4.ts";
import type { Pos } from "../src/pos.ts";
import { Logger, memorySink } from "../src/log.ts";
import { collect, readAll, sortedWalSegments } from "../src/replica_client.ts";

const dec = new TextDecoder();

// ---------------------------------------------------------------------------------------
// Fixtures

/** Output of a finished command. */
interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs our CLI to completion, with `env` added to the environment. */
async function ours(args: string[], env?: Record<string, string>): Promise<Run> {
  const o = await cli(args, { env }).output();
  return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr) };
}

/** Runs `fn` with the environment variables `vars` set (unset for `undefined`), then restores them. */
async function withEnv<T>(
  vars: Record<string, string | undefined>,
  fn: () => T | Promise<T>,
): Promise<T> {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, Deno.env.get(k)]));
  const set = (k: string, v: string | undefined) =>
    v === undefined ? Deno.env.delete(k) : Deno.env.set(k, v);
  for (const [k, v] of Object.entries(vars)) set(k, v);
  try {
    return await fn();
  } finally {
    for (const [k, v] of Object.entries(saved)) set(k, v);
  }
}

function randomPrefix(): string {
  return `t${crypto.randomUUID().slice(0, 8)}/db`;
}

/** Where a replica lives on S3 and how to reach it. */
interface S3Place {
  endpoint: string;
  bucket: string;
  prefix: string;
  accessKeyId: string;
  secretAccessKey: string;
}

function place(server: S3TestServer, prefix = randomPrefix(), endpoint = server.endpoint) {
  return {
    endpoint,
    bucket: server.bucket,
    prefix,
    accessKeyId: server.accessKeyId,
    secretAccessKey: server.secretAccessKey,
  };
}

/** A client in this process, straight to the server (never through a proxy under test). */
function directClient(server: S3TestServer, prefix: string): S3ReplicaClient {
  return new S3ReplicaClient(server.clientOptions(prefix));
}

/**
 * Writes a config file that both our CLI and v0.3.13 read: one database with one S3 replica
 * using v0.3.13's keys (`type: s3`, `bucket`, `path`, `endpoint`, `region`,
 * `force-path-style`, `access-key-id`, `secret-access-key`). Values are YAML scalars; `null`
 * leaves a default key out.
 */
async function writeS3Config(
  file: string,
  dbPath: string,
  s3: S3Place,
  keys: {
    top?: Record<string, string | number>;
    db?: Record<string, string | number>;
    replica?: Record<string, string | number | null>;
  } = {},
): Promise<string> {
  const q = (v: string | number) => typeof v === "number" ? String(v) : JSON.stringify(v);
  const replica: Record<string, string | number | null> = {
    type: "s3",
    bucket: s3.bucket,
    path: s3.prefix,
    endpoint: s3.endpoint,
    region: "us-east-1",
    "force-path-style": "true",
    "access-key-id": s3.accessKeyId,
    "secret-access-key": s3.secretAccessKey,
    ...keys.replica,
  };
  const lines: string[] = [];
  for (const [k, v] of Object.entries(keys.top ?? {})) lines.push(`${k}: ${q(v)}`);
  lines.push("dbs:", `  - path: ${q(dbPath)}`);
  for (const [k, v] of Object.entries(keys.db ?? {})) lines.push(`    ${k}: ${q(v)}`);
  lines.push("    replicas:");
  let first = true;
  for (const [k, v] of Object.entries(replica)) {
    if (v === null) continue;
    const value = k === "force-path-style" ? String(v) : q(v);
    lines.push(`${first ? "      - " : "        "}${k}: ${value}`);
    first = false;
  }
  await Deno.writeTextFile(file, lines.join("\n") + "\n");
  return file;
}

/** Checkpoints after 50 pages and wakes every 100 ms, so a short workload crosses several WAL indexes. */
const FAST_DB = { "monitor-interval": "100ms", "min-checkpoint-page-count": 50 };

/** Waits until the replica holds a snapshot and at least `segments` WAL segments. */
async function waitForS3Replica(
  client: S3ReplicaClient,
  segments = 1,
  daemon?: Daemon,
  timeoutMs = 20_000,
): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    let snaps = 0, segs = 0;
    for (const gen of await client.generations()) {
      snaps += (await collect(client.snapshots(gen))).length;
      segs += (await collect(client.walSegments(gen))).length;
    }
    if (snaps > 0 && segs >= segments) return;
    if (daemon && !daemon.running) {
      throw new Error(`${daemon.name} exited before the replica was written; log:\n${daemon.log}`);
    }
    if (Date.now() > end) {
      throw new Error(
        `Timed out waiting for ${segments} WAL segment(s) in ${client.location}` +
          (daemon ? `; ${daemon.name} log:\n${daemon.log}` : ""),
      );
    }
    await sleep(100);
  }
}

/** The WAL indexes the replica holds, over all generations. */
async function walIndexes(client: S3ReplicaClient): Promise<Set<number>> {
  const out = new Set<number>();
  for (const gen of await client.generations()) {
    for await (const s of client.walSegments(gen)) out.add(s.index);
  }
  return out;
}

/** Restores with our library into `out` and returns the dump, after checking integrity. */
async function libRestore(client: S3ReplicaClient, out: string): Promise<string> {
  await restore(client, { outputPath: out });
  assert.equal(await integrity(out), "ok");
  return await dump(out);
}

/** Restores with our CLI into `out` and returns the dump, after checking integrity. */
async function cliRestore(args: string[], out: string, env?: Record<string, string>) {
  ok(await ours(["restore", "-o", out, ...args], env), "our restore");
  assert.equal(await integrity(out), "ok");
  return await dump(out);
}

/** Restores with v0.3.13 into `out` and returns the dump, after checking integrity. */
async function oracleRestore(args: string[], out: string): Promise<string> {
  ok(await runOracle(["restore", "-o", out, ...args]), "v0.3.13 restore");
  assert.equal(await integrity(out), "ok");
  return await dump(out);
}

/**
 * Asserts that `generations`, `snapshots` and `wal` of both tools list the same rows for
 * the same arguments (`lag` of `generations` excepted: each tool measures it from its own
 * clock reading). Returns the number of `wal` rows.
 */
async function assertSameListings(args: string[]): Promise<number> {
  let walRows = 0;
  for (const cmd of ["generations", "snapshots", "wal"]) {
    const theirs = parseTable(ok(await runOracle([cmd, ...args]), `v0.3.13 ${cmd}`));
    const mine = parseTable(ok(await ours([cmd, ...args]), `our ${cmd}`));
    assert.deepEqual(mine.header, theirs.header, `${cmd} header`);
    assert.ok(theirs.rows.length > 0, `v0.3.13 ${cmd} lists something`);
    const lag = cmd === "generations" ? theirs.header.indexOf("lag") : -1;
    const strip = (rows: string[][]) => rows.map((r) => r.filter((_, i) => i !== lag));
    assert.deepEqual(strip(mine.rows), strip(theirs.rows), `${cmd} rows`);
    if (cmd === "wal") walRows = mine.rows.length;
  }
  return walRows;
}

/** Asserts one line on stderr matching `reason`, and that no secret appears anywhere. */
function assertOneLineFailure(r: Run, reason: RegExp, secrets: string[], what: string): void {
  assert.notEqual(r.code, 0, `${what} exits non-zero`);
  const lines = r.stderr.trimEnd().split("\n");
  assert.equal(lines.length, 1, `${what}: one line on stderr, got:\n${r.stderr}`);
  assert.match(lines[0], /^litestream: /, `${what}: stderr`);
  assert.match(lines[0], reason, `${what}: stderr`);
  for (const s of secrets) {
    assert.ok(!r.stderr.includes(s) && !r.stdout.includes(s), `${what} shows a credential`);
  }
}

/** SHA-256 of a file, or `undefined` if it does not exist. */
async function fileHash(path: string): Promise<string | undefined> {
  try {
    const data = await Deno.readFile(path);
    return Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", data)))
      .map((b) => b.toString(16).padStart(2, "0")).join("");
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return undefined;
    throw err;
  }
}

/** Names in `dir`. */
async function ls(dir: string): Promise<string[]> {
  return (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
}

/**
 * Runs our daemon on `config` for a while it cannot reach its replica: the writer commits
 * `txns` transactions meanwhile. Returns the finished process's output after SIGTERM.
 */
async function replicateFailing(config: string, w: Writer, txns: number): Promise<Run> {
  const child = cli(["replicate", "-config", config]).spawn();
  const output = child.output();
  try {
    await sleep(1500); // the first sync fails
    await writeLoad(w, { txns, pauseMs: 50, tag: crypto.randomUUID().slice(0, 6) });
    await sleep(1000);
  } finally {
    child.kill("SIGTERM");
  }
  const o = await output;
  return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr) };
}

/** The value of a Prometheus metric in `text` (the first series). */
function metric(text: string, name: string): number {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, "m").exec(text);
  if (!m) throw new Error(`No metric ${name} in:\n${text}`);
  return Number(m[1]);
}

/**
 * A TCP forwarder that can be switched off: while down it resets every open and new
 * connection, as an S3 endpoint that is unreachable for a while.
 */
interface Switch extends AsyncDisposable {
  readonly endpoint: string;
  up: boolean;
}

async function startSwitch(upstream: string): Promise<Switch> {
  const target = new URL(upstream);
  const sockets = new Set<net.Socket>();
  const track = (s: net.Socket) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    s.on("error", () => s.destroy());
  };
  let up = true;
  const server = net.createServer((client) => {
    track(client);
    if (!up) {
      client.resetAndDestroy();
      return;
    }
    const out = net.connect(Number(target.port), target.hostname);
    track(out);
    client.pipe(out);
    out.pipe(client);
    client.on("close", () => out.destroy());
    out.on("close", () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    get up() {
      return up;
    },
    set up(value: boolean) {
      up = value;
      if (!value) { for (const s of sockets) s.resetAndDestroy(); }
    },
    async [Symbol.asyncDispose]() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * True if the replica holds everything up to `pos` (index and offset as our metrics report
 * them): a segment of that index ends exactly at the offset.
 */
async function holds(client: S3ReplicaClient, generation: string, pos: Pos): Promise<boolean> {
  const segs = (await sortedWalSegments(client, generation)).filter((s) => s.index === pos.index);
  if (pos.offset === 0) return true; // nothing of this index claimed yet
  const last = segs.filter((s) => s.offset < pos.offset).at(-1);
  if (!last) return false;
  const data = lz4Decompress(await readAll(await client.openWalSegment(last)));
  return last.offset + data.length >= pos.offset;
}

/** True when `localhost` resolves to 127.0.0.1 first, as the `BUCKET.localhost` URLs need. */
async function localhostIsLoopback(): Promise<boolean> {
  try {
    return (await lookup("localhost")).address === "127.0.0.1";
  } catch {
    return false;
  }
}

const noticed = new Set<string>();

/** Locally a missing server skips its tests with a notice; under CI=true they fail instead. */
function skipUnavailable(name: string, unavailable: string | undefined): boolean {
  if (unavailable === undefined || isCi()) return false;
  if (!noticed.has(unavailable)) {
    noticed.add(unavailable);
    // deno-lint-ignore no-console
    console.warn(`s3_test: skipping ${name} tests: ${unavailable}`);
  }
  return true;
}

// ---------------------------------------------------------------------------------------
// Steps, each run on every server.

type Step = (env: { server: S3TestServer; proxy: S3Proxy; dir: string }) => Promise<void>;

const STEPS: [string, Step][] = [
  [
    "our replicate (config file) while a writer crosses checkpoints; our restore and v0.3.13's equal the source",
    async ({ server, dir }) => {
      const db = `${dir}/app.db`;
      const s3 = place(server);
      await using w = new Writer(db);
      await prepareWriter(w);
      await createLoadDb(w);
      // S3's default sync-interval (1 s) is kept: the final sync on SIGTERM ships the rest.
      const config = await writeS3Config(`${dir}/litestream.yml`, db, s3, { db: FAST_DB });
      await using client = directClient(server, s3.prefix);
      await using daemon = Daemon.ours(["replicate", "-config", config]);
      await waitForS3Replica(client, 1, daemon);
      await writeLoad(w, { txns: 60, pauseMs: 15 });
      assert.equal(await rowCount(w), 1 + 60 * 5 - 20);
      const log = await daemon.stopCleanly("SIGTERM");
      assert.ok(!log.includes(s3.secretAccessKey) && !log.includes(s3.accessKeyId));

      const indexes = await walIndexes(client);
      assert.ok(indexes.size >= 3, `crossed checkpoints: WAL indexes ${[...indexes]}`);
      const source = await dump(db);
      assert.equal(await cliRestore(["-config", config, db], `${dir}/cli.db`), source);
      assert.equal(await oracleRestore(["-config", config, db], `${dir}/oracle.db`), source);
      await assertSameListings(["-config", config, db]);
    },
  ],
  [
    "v0.3.13 replicates while a writer crosses checkpoints; v0.3.13 and ours restore it",
    async ({ server, dir }) => {
      const db = `${dir}/app.db`;
      const s3 = place(server);
      await using w = new Writer(db);
      await prepareWriter(w);
      await createLoadDb(w);
      const config = await writeS3Config(`${dir}/litestream.yml`, db, s3, {
        db: FAST_DB,
        replica: { "sync-interval": "100ms" },
      });
      await using client = directClient(server, s3.prefix);
      await using oracle = await Daemon.oracle(["replicate", "-config", config]);
      await waitForS3Replica(client, 1, oracle);
      await writeLoad(w, { txns: 60, pauseMs: 15 });
      await oracle.stopOracle("SIGTERM");

      const indexes = await walIndexes(client);
      assert.ok(indexes.size >= 3, `v0.3.13 crossed checkpoints: WAL indexes ${[...indexes]}`);
      const source = await dump(db);
      // The server itself is sound for v0.3.13: it restores what it wrote.
      assert.equal(await oracleRestore(["-config", config, db], `${dir}/oracle.db`), source);
      assert.equal(await cliRestore(["-config", config, db], `${dir}/cli.db`), source);
      assert.equal(await libRestore(client, `${dir}/lib.db`), source);
      await assertSameListings(["-config", config, db]);
    },
  ],
  [
    "s3://BUCKET.localhost:PORT/prefix URLs with LITESTREAM_* keys: replicate, list, restore",
    async ({ server, dir }) => {
      if (!await localhostIsLoopback()) {
        // deno-lint-ignore no-console
        console.warn("s3_test: localhost does not resolve to 127.0.0.1; URL form not tested");
        return;
      }
      const db = `${dir}/app.db`;
      const s3 = place(server);
      const url = `s3://${server.bucket}.localhost:${new URL(server.endpoint).port}/${s3.prefix}`;
      const env = {
        LITESTREAM_ACCESS_KEY_ID: s3.accessKeyId,
        LITESTREAM_SECRET_ACCESS_KEY: s3.secretAccessKey,
        AWS_ACCESS_KEY_ID: undefined,
        AWS_SECRET_ACCESS_KEY: undefined,
      };
      await using w = new Writer(db);
      await prepareWriter(w);
      await createLoadDb(w);
      await using client = directClient(server, s3.prefix);
      await using daemon = await withEnv(env, () => Daemon.ours(["replicate", db, url]));
      await waitForS3Replica(client, 1, daemon);
      await writeLoad(w, { txns: 20, pauseMs: 10 });
      await daemon.stopCleanly("SIGTERM");

      const source = await dump(db);
      const keys = {
        LITESTREAM_ACCESS_KEY_ID: s3.accessKeyId,
        LITESTREAM_SECRET_ACCESS_KEY: s3.secretAccessKey,
      };
      assert.equal(await cliRestore([url], `${dir}/cli.db`, keys), source);
      await withEnv(env, async () => {
        assert.equal(await oracleRestore([url], `${dir}/oracle.db`), source);
        await assertSameListings([url]);
      });
    },
  ],
  [
    "wrong credentials and a missing bucket: one line, non-zero exit, database untouched, nothing lost",
    async ({ server, dir }) => {
      const db = `${dir}/app.db`;
      const s3 = place(server);
      await using w = new Writer(db);
      await prepareWriter(w);
      await createLoadDb(w);
      await writeLoad(w, { txns: 5, pauseMs: 0 });
      const secrets = [s3.accessKeyId, s3.secretAccessKey];

      const cases: { name: string; s3: S3Place; reason: RegExp }[] = [{
        name: "missing bucket",
        s3: { ...s3, bucket: "no-such-bucket-4b1d" },
        reason: /bucket "no-such-bucket-4b1d" does not exist/,
      }];
      if (server.checksCredentials) {
        cases.push({
          name: "wrong secret key",
          s3: { ...s3, secretAccessKey: "WrongSecretKeyWrongSecretKey0000" },
          reason: /rejected the request signature \(check the secret access key\)/,
        }, {
          name: "unknown access key",
          s3: { ...s3, accessKeyId: "AKIAUNKNOWNKEY000000" },
          reason: /access key ID is not known to the server \(check the credentials\)/,
        });
      }
      for (const c of cases) {
        const config = await writeS3Config(`${dir}/${c.name.replaceAll(" ", "-")}.yml`, db, c.s3);
        const before = await fileHash(db);
        const out = `${dir}/restored.db`;
        const [gens, rest] = await Promise.all([
          ours(["generations", "-config", config, db]),
          ours(["restore", "-config", config, "-o", out, db]),
        ]);
        assertOneLineFailure(gens, c.reason, secrets, `generations (${c.name})`);
        assertOneLineFailure(rest, c.reason, secrets, `restore (${c.name})`);
        assert.equal(await fileHash(out), undefined, `restore (${c.name}) created no file`);
        assert.deepEqual((await ls(dir)).filter((n) => n.startsWith("restored")), []);
        assert.equal(await fileHash(db), before, `restore (${c.name}) left the database alone`);

        // The daemon keeps running (an outage must not stop replication), logs each failed
        // sync on one line, keeps the writer's commits, and fails its final sync on SIGTERM.
        const rows = await rowCount(w);
        const r = await replicateFailing(config, w, 3);
        assertOneLineFailure(r, c.reason, secrets, `replicate (${c.name})`);
        const errors = r.stdout.split("\n").filter((l) => /level=ERROR/.test(l));
        assert.ok(errors.length >= 1, `replicate (${c.name}) logged its failures:\n${r.stdout}`);
        for (const e of errors) assert.match(e.replaceAll('\\"', '"'), c.reason);
        assert.equal(await rowCount(w), rows + 3 * 5 - 1);
        assert.equal(await integrity(db), "ok");
      }

      // Nothing was lost: with the right config everything, including the commits made while
      // the daemon failed, reaches the replica.
      const config = await writeS3Config(`${dir}/good.yml`, db, s3, { db: FAST_DB });
      await using client = directClient(server, s3.prefix);
      await using daemon = Daemon.ours(["replicate", "-config", config]);
      await waitForS3Replica(client, 1, daemon);
      await daemon.stopCleanly("SIGTERM");
      assert.equal(await libRestore(client, `${dir}/after.db`), await dump(db));
    },
  ],
  [
    "S3 unreachable for 3 s mid-replication: the position never runs ahead of the store, replication catches up, nothing is lost",
    async ({ server, dir }) => {
      const db = `${dir}/app.db`;
      await using sw = await startSwitch(server.endpoint);
      const s3 = place(server, randomPrefix(), sw.endpoint);
      const addr = `127.0.0.1:${closedPort()}`;
      await using w = new Writer(db);
      await prepareWriter(w);
      await createLoadDb(w);
      const config = await writeS3Config(`${dir}/litestream.yml`, db, s3, {
        top: { addr },
        db: FAST_DB,
        replica: { "sync-interval": "100ms" },
      });
      await using client = directClient(server, s3.prefix);
      await using daemon = Daemon.ours(["replicate", "-config", config]);
      await waitForS3Replica(client, 1, daemon);
      const [generation] = await client.generations();
      const metrics = async () => {
        const text = await (await fetch(`http://${addr}/metrics`)).text();
        return {
          pos: {
            generation,
            index: metric(text, "litestream_replica_wal_index"),
            offset: metric(text, "litestream_replica_wal_offset"),
          },
          errors: metric(text, "litestream_replica_sync_error_count"),
          shadowBytes: metric(text, "litestream_total_wal_bytes"),
        };
      };
      await writeLoad(w, { txns: 10, pauseMs: 10, tag: "before" });
      await sleep(500);
      assert.ok(await holds(client, generation, (await metrics()).pos));

      // Outage: every connection is reset while the writer keeps writing.
      sw.up = false;
      await sleep(200);
      const atStart = await metrics();
      const writing = writeLoad(w, { txns: 30, pauseMs: 80, tag: "during" });
      const samples: Awaited<ReturnType<typeof metrics>>[] = [];
      const outageEnd = Date.now() + 3000;
      while (Date.now() < outageEnd) {
        samples.push(await metrics());
        await sleep(150);
      }
      const atEnd = await metrics();
      for (const s of samples) assert.deepEqual(s.pos, atStart.pos, "position frozen in outage");
      assert.ok(atEnd.errors > atStart.errors, "failed syncs are counted");
      assert.ok(atEnd.shadowBytes > atStart.shadowBytes, "the shadow WAL kept growing");
      assert.ok(await holds(client, generation, atStart.pos), "the store holds the position");

      sw.up = true;
      await writing;
      await writeLoad(w, { txns: 5, pauseMs: 10, tag: "after" });
      const source = await dump(db);
      let n = 0;
      await waitFor(
        async () => {
          try {
            return (await libRestore(client, `${dir}/caught-up-${n++}.db`)) === source;
          } catch {
            return false; // caught mid-upload; try again
          }
        },
        20_000,
        "the replica to catch up after the outage",
      );
      const caughtUp = await metrics();
      assert.ok(
        caughtUp.pos.index > atStart.pos.index || caughtUp.pos.offset > atStart.pos.offset,
      );
      assert.ok(await holds(client, generation, caughtUp.pos));
      const log = await daemon.stopCleanly("SIGTERM");
      assert.match(log, /replica sync failed/);
      assert.equal(await libRestore(client, `${dir}/final.db`), await dump(db));
    },
  ],
  [
    "an idle database costs no requests (checkpoint timer firing every second); writes resume them",
    async ({ server, proxy, dir }) => {
      const db = `${dir}/app.db`;
      const s3 = place(server, randomPrefix(), proxy.endpoint);
      await using w = new Writer(db);
      await prepareWriter(w);
      await createLoadDb(w);
      const config = await writeS3Config(`${dir}/litestream.yml`, db, s3, {
        db: { ...FAST_DB, "checkpoint-interval": "1s" },
      });
      await using client = directClient(server, s3.prefix);
      await using daemon = Daemon.ours(["replicate", "-config", config]);
      await waitForS3Replica(client, 1, daemon);
      await writeLoad(w, { txns: 10, pauseMs: 10 });
      // Quiet: no request for 2 s (twice the sync interval).
      let seen = proxy.requests.length;
      let since = Date.now();
      await waitFor(
        () => {
          if (proxy.requests.length !== seen) [seen, since] = [proxy.requests.length, Date.now()];
          return Date.now() - since > 2000;
        },
        15_000,
        "the daemon to go quiet",
      );

      const idleMs = 6000;
      const before = proxy.requests.length;
      await sleep(idleMs);
      const idle = proxy.requests.slice(before);
      assert.deepEqual(idle, [], `requests while idle for ${idleMs} ms`);

      await writeLoad(w, { txns: 3, pauseMs: 10, tag: "burst" });
      await waitFor(
        () => proxy.requests.slice(before).some((r) => r.method === "PUT" && r.status === 200),
        5000,
        "an upload after the burst",
      );
      const log = await daemon.stopCleanly("SIGTERM");
      assert.equal(await libRestore(client, `${dir}/r.db`), await dump(db));
      assert.equal((await client.generations()).length, 1, `one generation; log:\n${log}`);

      // What an idle hour costs: one retention check (hourly by default), listings only;
      // past the retention period, one new snapshot, then listings only again.
      const sink = memorySink("info");
      const d = new Db(db, { monitorIntervalMs: 0, logger: new Logger(sink) });
      await d.open();
      try {
        await using viaProxy = new S3ReplicaClient({
          ...server.clientOptions(s3.prefix),
          endpoint: proxy.endpoint,
        });
        const replica = new Replica(d, viaProxy, { retentionMs: 24 * 3600_000 });
        await replica.sync(); // resolves the position, as a restarted daemon does
        let n = proxy.requests.length;
        await replica.enforceRetention();
        const check = proxy.requests.slice(n);
        assert.ok(check.every((r) => r.method === "GET"), JSON.stringify(check));
        // Listings: generations, then snapshots and WAL of the one generation (an attempt
        // the SDK retried, on a loaded machine, is not a cost of ours).
        const answered = check.filter((r) => r.status === 200);
        assert.ok(
          answered.length <= 3,
          `one retention check: ${JSON.stringify(check)}; generations ${await client
            .generations()}; log:\n${sink.lines.join("\n")}`,
        );
        const expired = new Replica(d, viaProxy, { retentionMs: 1 });
        await expired.sync();
        await expired.enforceRetention(); // the WAL after the snapshot: snapshots once
        await sleep(5);
        n = proxy.requests.length;
        await expired.enforceRetention();
        const again = proxy.requests.slice(n);
        assert.ok(again.every((r) => r.method === "GET"), JSON.stringify(again));
      } finally {
        await d.close();
      }
    },
  ],
  [
    "wal lists more than 1000 objects, ours and v0.3.13's the same",
    async ({ server, dir }) => {
      const db = `${dir}/app.db`;
      const s3 = place(server);
      await using client = directClient(server, s3.prefix);
      const generation = "0123456789abcdef";
      const segments: Pos[] = Array.from({ length: 1005 }, (_, i) => ({
        generation,
        index: Math.floor(i / 100),
        offset: (i % 100) * 4152,
      }));
      const body = lz4Compress(new Uint8Array(16));
      let next = 0;
      await Promise.all(Array.from({ length: 16 }, async () => {
        while (next < segments.length) await client.writeWalSegment(segments[next++], body);
      }));
      await client.writeSnapshot({ generation, index: 0 }, body);
      await Deno.writeFile(db, new Uint8Array()); // v0.3.13's listings stat the database
      const config = await writeS3Config(`${dir}/litestream.yml`, db, s3);
      const rows = parseTable(ok(await ours(["wal", "-config", config, db]), "our wal")).rows;
      assert.equal(rows.length, 1005);
      assert.deepEqual(
        rows.map((r) => [r[1], Number(r[2]), Number(r[3])]),
        segments.map((p) => [p.generation, p.index, p.offset]),
      );
      assert.equal(await assertSameListings(["-config", config, db]), 1005);
    },
  ],
];

/** Waits until `fn` returns true (polling every 100 ms), or throws after `timeoutMs`. */
async function waitFor(
  fn: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
  what = "condition",
): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error(`Timed out waiting for ${what}`);
    await sleep(100);
  }
}

for (const kind of s3ServerKinds() as S3ServerKind[]) {
  Deno.test({
    name: `end to end over S3 (${kind}): ours and v0.3.13, failures, an outage, idle cost`,
    ignore: skipUnavailable(kind, await s3ServerUnavailable(kind)),
    async fn(t) {
      await using server = await startS3Server(kind);
      await using proxy = await startS3Proxy(server.endpoint);
      for (const [name, step] of STEPS) {
        await t.step(name, async () => {
          await using dir = await tempDir();
          await step({ server, proxy, dir: dir.path });
        });
      }
    },
  });
}

Deno.test("an unreachable S3 endpoint: one line, non-zero exit, database untouched", async () => {
  await using dir = await tempDir();
  const db = `${dir.path}/app.db`;
  await using w = new Writer(db);
  await prepareWriter(w);
  await createLoadDb(w);
  const s3: S3Place = {
    endpoint: `http://127.0.0.1:${closedPort()}`,
    bucket: "bkt",
    prefix: "db",
    accessKeyId: "AKIAUNREACHABLE00000",
    secretAccessKey: "unreachable-secret-key-0000",
  };
  const config = await writeS3Config(`${dir.path}/litestream.yml`, db, s3);
  const reason = /cannot connect to 127\.0\.0\.1:\d+: connection refused/;
  const secrets = [s3.accessKeyId, s3.secretAccessKey];
  const out = `${dir.path}/restored.db`;
  const [gens, rest, r] = await Promise.all([
    ours(["generations", "-config", config, db]),
    ours(["restore", "-config", config, "-o", out, db]),
    replicateFailing(config, w, 2),
  ]);
  assertOneLineFailure(gens, reason, secrets, "generations");
  assertOneLineFailure(rest, reason, secrets, "restore");
  assertOneLineFailure(r, reason, secrets, "replicate");
  assert.equal(await fileHash(out), undefined);
  assert.equal(await rowCount(w), 1 + 2 * 5 - 1);
  assert.equal(await integrity(db), "ok");
});
