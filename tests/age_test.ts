/**
 * {@linkcode AgeReplicaClient}: the conformance suite over an encrypted file replica,
 * interoperability with the reference `age` CLI (Debian's `age` 1.1.1, the age version
 * inside Litestream v0.3.13; `scripts/setup_age.sh` installs it), failures, and both
 * directions against the real v0.3.13 with `age:` in its config.
 *
 * @module
 */
import assert from "node:assert/strict";
import { AgeReplicaClient, generateAgeKey } from "../src/clients/age.ts";
import { FileReplicaClient } from "../src/clients/file.ts";
import { describeError, findCause, ReplicaIntegrityError, UsageError } from "../src/errors.ts";
import { snapshotKey, walSegmentKey } from "../src/layout.ts";
import type { Pos } from "../src/pos.ts";
import {
  type Body,
  type CallOptions,
  collect,
  readAll,
  type ReplicaClient,
  type SnapshotInfo,
  type SnapshotKey,
  sortedWalSegments,
  type WalSegmentInfo,
} from "../src/replica_client.ts";
import { Db } from "../src/db.ts";
import { Replica } from "../src/replica.ts";
import { restore } from "../src/restore.ts";
import {
  type ClientFixture,
  GEN_A,
  type KindEnv,
  openFileEnv,
  runConformance,
  streamOf,
  testBytes,
} from "./_conformance.ts";
import {
  blobs,
  createDb,
  dump,
  integrity,
  sqliteAsync,
  tempDir,
  WrappedClient,
  Writer,
} from "./_helpers.ts";
import {
  createLoadDb,
  Daemon,
  ok,
  prepareWriter,
  replicaFiles,
  runOracle,
  settled,
  waitForReplica,
  walSegmentNames,
  withLogs,
  writeLoad,
} from "./_daemon.ts";

const KEY = await generateAgeKey();
const OTHER = await generateAgeKey();
const CHUNK = 64 * 1024;
/**
 * Bytes before the payload of a file for one X25519 recipient: the version line (22), the
 * stanza line `-> X25519 <43>` (54), its body (44), the MAC line `--- <43>` (48), the nonce
 * (16).
 */
const PREFIX_BYTES = 22 + 54 + 44 + 48 + 16;
const AGE_MAGIC = "age-encryption.org/v1\n";

/** Stored size of `n` plaintext bytes encrypted to one X25519 recipient. */
function storedSize(n: number): number {
  return PREFIX_BYTES + n + 16 * Math.max(1, Math.ceil(n / CHUNK));
}

/** Plaintext size of a stored object of `size` bytes (the inverse of {@linkcode storedSize}). */
function plainSize(size: number): number {
  const payload = size - PREFIX_BYTES;
  const chunks = Math.max(1, Math.ceil(payload / (CHUNK + 16)));
  const n = payload - 16 * chunks;
  assert.equal(storedSize(n), size, `a stored size of ${size} bytes is an age file's`);
  return n;
}

function ageClient(inner: ReplicaClient, identities = [KEY.identity]): AgeReplicaClient {
  return new AgeReplicaClient(inner, { identities, recipients: [KEY.recipient] });
}

/**
 * The suite asserts plaintext sizes; an age replica lists stored (encrypted) sizes, as
 * v0.3.13 does. This view converts them back, asserting on the way that each one is exactly
 * the encrypted size, so the suite checks both.
 */
class PlainSizes extends WrappedClient {
  override async *snapshots(gen: string, o?: CallOptions): AsyncIterable<SnapshotInfo> {
    for await (const s of super.snapshots(gen, o)) yield { ...s, size: plainSize(s.size) };
  }
  override async writeSnapshot(key: SnapshotKey, data: Body, o?: CallOptions) {
    const info = await super.writeSnapshot(key, data, o);
    return { ...info, size: plainSize(info.size) };
  }
  override async *walSegments(gen: string, o?: CallOptions): AsyncIterable<WalSegmentInfo> {
    for await (const s of super.walSegments(gen, o)) yield { ...s, size: plainSize(s.size) };
  }
  override async writeWalSegment(pos: Pos, data: Body, o?: CallOptions) {
    const info = await super.writeWalSegment(pos, data, o);
    return { ...info, size: plainSize(info.size) };
  }
}

/** The file kind's environment, every client wrapped in age (and the size view). */
async function openAgeFileEnv(): Promise<KindEnv> {
  const env = await openFileEnv();
  return {
    async newFixture(): Promise<ClientFixture> {
      const fx = await env.newFixture();
      return {
        kind: "file+age",
        client: new PlainSizes(ageClient(fx.client)),
        clientAt: (sub: string) => new PlainSizes(ageClient(fx.clientAt(sub))),
        [Symbol.asyncDispose]: () => fx[Symbol.asyncDispose](),
      };
    },
    [Symbol.asyncDispose]: () => env[Symbol.asyncDispose](),
  };
}

/** Runs `cmd` and returns its stdout; throws with its stderr if it fails. */
async function run(cmd: string, args: string[]): Promise<Uint8Array> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    const stderr = new TextDecoder().decode(out.stderr);
    throw new Error(`${cmd} ${args.join(" ")} exited ${out.code}: ${stderr}`);
  }
  return out.stdout;
}

/** Writes `identity` to a key file as `age-keygen` does (mode 0600). */
async function keyFile(path: string, identity: string): Promise<string> {
  await Deno.writeTextFile(path, `# test key\n${identity}\n`, { mode: 0o600 });
  return path;
}

/** A config for v0.3.13: one database, one file replica with an `age:` block. */
async function ageConfig(path: string, db: string, replica: string): Promise<string> {
  await Deno.writeTextFile(
    path,
    [
      "dbs:",
      `  - path: ${db}`,
      "    monitor-interval: 100ms",
      "    min-checkpoint-page-count: 50",
      "    replicas:",
      `      - url: file://${replica}`,
      "        sync-interval: 100ms",
      "        age:",
      "          identities:",
      `            - ${KEY.identity}`,
      "          recipients:",
      `            - ${KEY.recipient}`,
      "",
    ].join("\n"),
  );
  return path;
}

/** Asserts that every object of the replica starts with the age header; returns how many. */
async function assertAllEncrypted(root: string): Promise<number> {
  const objects = (await replicaFiles(root)).filter((f) => f.path.endsWith(".lz4"));
  for (const { path } of objects) {
    const head = (await Deno.readFile(`${root}/${path}`)).slice(0, AGE_MAGIC.length);
    assert.equal(new TextDecoder().decode(head), AGE_MAGIC, `${path} is age-encrypted`);
  }
  return objects.length;
}

// ---------------------------------------------------------------------------------------

Deno.test("AgeReplicaClient(file) passes the ReplicaClient conformance suite", async (t) => {
  await using env = await openAgeFileEnv();
  await runConformance(t, env);
});

Deno.test("AgeReplicaClient keeps the inner client's type and location and lists stored sizes", async () => {
  await using dir = await tempDir();
  const inner = new FileReplicaClient(`${dir.path}/r`);
  const client = ageClient(inner);
  assert.equal(client.type, "file");
  assert.equal(client.location, inner.location);
  const data = testBytes(3 * CHUNK + 5);
  const info = await client.writeSnapshot({ generation: GEN_A, index: 0 }, streamOf(data, 5000));
  const stored = await Deno.stat(`${inner.root}/${snapshotKey(GEN_A, 0)}`);
  assert.equal(info.size, stored.size);
  assert.equal(info.size, storedSize(data.length));
  assert.deepEqual((await collect(client.snapshots(GEN_A))).map((s) => s.size), [stored.size]);
  // Reading through the inner client gives the age file itself.
  const raw = await readAll(await inner.openSnapshot({ generation: GEN_A, index: 0 }));
  assert.equal(new TextDecoder().decode(raw.slice(0, 22)), AGE_MAGIC);
});

Deno.test("AgeReplicaClient's objects decrypt with `age -d` and it decrypts what `age -r` wrote", async () => {
  await using dir = await tempDir();
  const inner = new FileReplicaClient(`${dir.path}/r`);
  const client = ageClient(inner);
  const keys = await keyFile(`${dir.path}/key.txt`, KEY.identity);
  // Sizes around the 64 KiB chunk boundary: the last chunk may be full, or empty only alone.
  const sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 300_001];
  for (const [i, n] of sizes.entries()) {
    const data = testBytes(n, i + 1);
    const pos = { generation: GEN_A, index: i, offset: 0 };
    // Whole arrays and streams take different paths: check both.
    if (i % 2) await client.writeWalSegment(pos, data);
    else await client.writeSnapshot(pos, streamOf(data, 10_000));
    const stored = `${inner.root}/${i % 2 ? walSegmentKey(GEN_A, i, 0) : snapshotKey(GEN_A, i)}`;
    assert.deepEqual(await run("age", ["-d", "-i", keys, stored]), data, `age -d of ${n} bytes`);

    // The other way: age encrypts (to another key too), we decrypt.
    const out = `${dir.path}/plain-${i}`;
    await Deno.writeFile(out, data);
    const theirs = `${inner.root}/${snapshotKey(GEN_A, 100 + i)}`;
    await run("age", ["-r", OTHER.recipient, "-r", KEY.recipient, "-o", theirs, out]);
    const back = await readAll(await client.openSnapshot({ generation: GEN_A, index: 100 + i }));
    assert.deepEqual(back, data, `our decryption of ${n} bytes from age -r`);
  }
});

Deno.test("AgeReplicaClient fails with one clear line when no identity matches", async () => {
  await using dir = await tempDir();
  const inner = new FileReplicaClient(`${dir.path}/r`);
  await ageClient(inner).writeSnapshot({ generation: GEN_A, index: 7 }, testBytes(1000));
  const wrong = ageClient(inner, [OTHER.identity]);
  const err = await wrong.openSnapshot({ generation: GEN_A, index: 7 }).catch((e) => e);
  assert.ok(err instanceof Error && !(err instanceof SyntaxError), String(err));
  const line = describeError(err);
  assert.equal(
    line,
    `Cannot decrypt snapshot "${snapshotKey(GEN_A, 7)}" in "${inner.location}":` +
      " the age identities do not match its recipients",
  );
  assert.ok(!line.includes(OTHER.identity) && !line.includes(KEY.identity), "no secret shown");
  // Several identities, one of which matches, decrypt.
  const both = ageClient(inner, [`# two keys\n${OTHER.identity}\n\n${KEY.identity}\n`]);
  assert.deepEqual(
    await readAll(await both.openSnapshot({ generation: GEN_A, index: 7 })),
    testBytes(1000),
  );
});

Deno.test("AgeReplicaClient refuses plaintext, damaged objects and unusable keys", async () => {
  await using dir = await tempDir();
  const inner = new FileReplicaClient(`${dir.path}/r`);
  const client = ageClient(inner);
  const key = { generation: GEN_A, index: 1 };

  await inner.writeSnapshot(key, testBytes(500));
  await assert.rejects(client.openSnapshot(key), /not age-encrypted/);

  // A flipped payload byte, then a cut at a chunk boundary: the stream errors as corrupt.
  await client.writeSnapshot(key, testBytes(3 * CHUNK));
  const path = `${inner.root}/${snapshotKey(GEN_A, 1)}`;
  const good = await Deno.readFile(path);
  const flipped = good.slice();
  flipped[PREFIX_BYTES + CHUNK + 100] ^= 1;
  const cut = good.slice(0, PREFIX_BYTES + 2 * (CHUNK + 16));
  for (const [what, bytes] of [["flipped", flipped], ["cut", cut]] as const) {
    await Deno.writeFile(path, bytes);
    await assert.rejects(
      client.openSnapshot(key).then(readAll),
      (err) => err instanceof SyntaxError && /failed authentication/.test(err.message),
      what,
    );
  }
  const badMac = good.slice();
  badMac[PREFIX_BYTES - 20] ^= 1; // inside the MAC
  await Deno.writeFile(path, badMac);
  await assert.rejects(client.openSnapshot(key), SyntaxError);
  await Deno.writeFile(path, good.slice(0, 100));
  await assert.rejects(client.openSnapshot(key), /truncated age header/);

  // Writing needs recipients; reading needs identities; keys must parse; secrets stay hidden.
  const readOnly = new AgeReplicaClient(inner, { identities: [KEY.identity] });
  await assert.rejects(readOnly.writeSnapshot(key, testBytes(1)), UsageError);
  const writeOnly = new AgeReplicaClient(inner, { recipients: [KEY.recipient] });
  await assert.rejects(writeOnly.openSnapshot(key), UsageError);
  assert.throws(() => new AgeReplicaClient(inner, {}), UsageError);
  const badSecret = KEY.identity.slice(0, -1) + (KEY.identity.endsWith("Q") ? "P" : "Q");
  for (const options of [{ identities: [badSecret] }, { identities: ["AGE-SECRET-KEY-1XYZ"] }]) {
    let err: unknown;
    try {
      new AgeReplicaClient(inner, options);
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof UsageError, String(err));
    assert.ok(!describeError(err).includes(options.identities[0]), describeError(err));
  }
  assert.throws(() => new AgeReplicaClient(inner, { recipients: ["age1pq1xyz"] }), UsageError);
  assert.throws(() => new AgeReplicaClient(inner, { recipients: ["# none\n"] }), /no key in it/);
});

Deno.test("restore() reads what v0.3.13 replicated with age while a writer crossed its checkpoints", async () => {
  await using dir = await tempDir();
  const db = `${dir.path}/app.db`, replica = `${dir.path}/replica`;
  await using w = new Writer(db);
  await prepareWriter(w);
  await createLoadDb(w);
  const config = await ageConfig(`${dir.path}/litestream.yml`, db, replica);
  await using oracle = await Daemon.oracle(["replicate", "-config", config]);
  await waitForReplica(replica, 1, 15_000, oracle);
  await writeLoad(w, { txns: 40, pauseMs: 15 });
  await settled(replica);
  await oracle.stopOracle("SIGTERM");

  await withLogs([oracle], async () => {
    assert.ok(await assertAllEncrypted(replica) >= 3, "several objects");
    const indexes = new Set((await walSegmentNames(replica)).map((s) => s.index));
    assert.ok(indexes.size >= 2, `v0.3.13 checkpointed: WAL indexes ${[...indexes]}`);
    const out = `${dir.path}/restored.db`;
    await restore(ageClient(new FileReplicaClient(replica)), { outputPath: out });
    assert.equal(await integrity(out), "ok");
    assert.equal(await dump(out), await dump(db));

    // With the wrong identity: one line naming the object, and no database.
    const wrong = `${dir.path}/wrong.db`;
    const err = await restore(ageClient(new FileReplicaClient(replica), [OTHER.identity]), {
      outputPath: wrong,
    }).catch((e) => e);
    assert.match(describeError(err), /^Cannot decrypt .*: the age identities do not match/);
    assert.equal(findCause(err, ReplicaIntegrityError), undefined, "not reported as corrupt");
    const left = [...Deno.readDirSync(dir.path)].filter((e) => e.name.includes("wrong"));
    assert.deepEqual(left, [], "no database and no temporary file is left");
  });
});

Deno.test("v0.3.13 restores what our Replica wrote through AgeReplicaClient", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/app.db`, replica = `${dir.path}/replica`;
  await createDb(path);
  // Two runs of the replicator: the second finds its position by decrypting the last segment.
  for (const run of [0, 1]) {
    const db = new Db(path, { monitorIntervalMs: 0, minCheckpointPageCount: 20 });
    await db.open();
    const rep = new Replica(db, ageClient(new FileReplicaClient(replica)), { retentionMs: 0 });
    try {
      for (let i = 0; i < 3; i++) {
        await sqliteAsync(path, blobs(15, 3000)); // ~15 pages: crosses the 20-page checkpoint
        await db.sync();
        await rep.sync();
      }
      assert.deepEqual(rep.pos(), db.pos(), `run ${run} shipped everything`);
    } finally {
      await rep.close();
      await db.close();
    }
  }
  const gen = (await new FileReplicaClient(replica).generations())[0];
  const segments = await sortedWalSegments(new FileReplicaClient(replica), gen);
  assert.ok(new Set(segments.map((s) => s.index)).size >= 2, "we checkpointed");
  assert.deepEqual(await new FileReplicaClient(replica).generations(), [gen], "one generation");
  assert.ok(await assertAllEncrypted(replica) >= 3);

  const config = await ageConfig(`${dir.path}/litestream.yml`, path, replica);
  const out = `${dir.path}/theirs.db`;
  ok(await runOracle(["restore", "-config", config, "-o", out, path]), "v0.3.13 restore");
  assert.equal(await integrity(out), "ok");
  assert.equal(await dump(out), await dump(path));
});
