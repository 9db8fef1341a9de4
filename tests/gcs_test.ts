/**
 * {@linkcode GcsReplicaClient} on fake-gcs-server: the shared conformance suite, v0.3.13's
 * object names, one-line errors, the credentials chain against a loopback token endpoint,
 * resumed uploads, and both interop directions with the real Litestream v0.3.13.
 *
 * Locally a missing fake-gcs-server (`scripts/setup_gcs.sh` builds it) skips these tests
 * with a notice; under CI=true they fail instead.
 */
import assert from "node:assert/strict";
import {
  emulatorEndpoint,
  GcsReplicaClient,
  type GcsReplicaClientOptions,
  parseGcsUrl,
  UPLOAD_CHUNK_SIZE,
} from "../src/clients/gcs.ts";
import { collect, readAll } from "../src/replica_client.ts";
import { restore } from "../src/restore.ts";
import {
  type ClientFixture,
  GEN_A,
  type KindEnv,
  randomName,
  runConformance,
  streamOf,
  testBytes,
} from "./_conformance.ts";
import {
  gcsServerUnavailable,
  type GcsTestServer,
  isCi,
  startGcsAuthProxy,
  startGcsServer,
} from "./_gcs_server.ts";
import { createDb, dump, sqliteAsync, tempDir, waitFor } from "./_helpers.ts";
import { litestreamBin, oracleSample } from "./_oracle.ts";

const unavailable = await gcsServerUnavailable();
if (unavailable && !isCi()) {
  // deno-lint-ignore no-console
  console.warn(`gcs_test: skipping fake-gcs-server tests: ${unavailable}`);
}
const ignore = unavailable !== undefined && !isCi();

// ---------------------------------------------------------------------------------------
// Pure parts

Deno.test("parseGcsUrl() reads gcs://BUCKET/PATH as v0.3.13 does", () => {
  const cases: [string, GcsReplicaClientOptions][] = [
    ["gcs://bkt/db", { bucket: "bkt", path: "db" }],
    ["gcs://bkt", { bucket: "bkt", path: "" }],
    ["gcs://bkt/", { bucket: "bkt", path: "" }],
    ["gcs://bkt//a/./b/../c/", { bucket: "bkt", path: "a/c" }],
    ["GCS://bkt/a%20b?x=1#f", { bucket: "bkt", path: "a b" }],
  ];
  for (const [url, want] of cases) assert.deepEqual(parseGcsUrl(url), want, url);
  assert.throws(() => parseGcsUrl("s3://bkt/db"), SyntaxError);
  assert.throws(() => parseGcsUrl("gcs:///db"), RangeError);
  assert.throws(() => parseGcsUrl("gcs://bkt/%zz"), SyntaxError);
});

Deno.test("emulatorEndpoint() reads STORAGE_EMULATOR_HOST like Google's Go client", () => {
  assert.equal(emulatorEndpoint(undefined), undefined);
  assert.equal(emulatorEndpoint(""), undefined);
  assert.equal(emulatorEndpoint("127.0.0.1:4443"), "http://127.0.0.1:4443");
  assert.equal(emulatorEndpoint("localhost:9023"), "http://localhost:9023");
  assert.equal(emulatorEndpoint("https://127.0.0.1:4443/ignored"), "https://127.0.0.1:4443");
  assert.equal(emulatorEndpoint("http://gcs.test"), "http://gcs.test");
  assert.throws(() => emulatorEndpoint("http://"), SyntaxError);
});

Deno.test("GcsReplicaClient names its replica gcs://bucket/path and keeps v0.3.13's path", () => {
  const at = (path?: string) =>
    new GcsReplicaClient({ bucket: "bkt", path, endpoint: "http://127.0.0.1:1", anonymous: true });
  assert.equal(at("db").type, "gcs");
  assert.equal(at("db").location, "gcs://bkt/db");
  assert.equal(at().location, "gcs://bkt");
  assert.equal(at("a//b/./c/").path, "a/b/c");
  assert.equal(at(".").path, "");
  // v0.3.13 joins a config `path: /db` as is: its object names start with "/".
  assert.equal(at("/db").path, "/db");
  assert.throws(() => new GcsReplicaClient({ bucket: "", anonymous: true }), RangeError);
  for (const endpoint of ["127.0.0.1:4443", "ftp://host", "http://"]) {
    assert.throws(() => new GcsReplicaClient({ bucket: "b", endpoint }), SyntaxError, endpoint);
  }
});

Deno.test("GcsReplicaClient times out a stalled request and a stalled download", async () => {
  // A server that answers listings never, and downloads with 10 bytes and then nothing.
  const { promise: released, resolve: release } = Promise.withResolvers<void>();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    if (!new URL(req.url).searchParams.has("alt")) {
      await released;
      return new Response("late", { status: 503 });
    }
    let sent = false;
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (!sent) {
          sent = true;
          controller.enqueue(new Uint8Array(10));
          return;
        }
        await released;
        controller.close();
      },
    });
    return new Response(body);
  });
  try {
    const endpoint = `http://127.0.0.1:${server.addr.port}`;
    const client = new GcsReplicaClient({
      bucket: "bkt",
      path: "db",
      endpoint,
      anonymous: true,
      idleTimeoutMs: 200,
    });
    const host = endpoint.replace("http://", "");
    await assert.rejects(
      client.generations(),
      new Error(
        `Cannot list generations in "gcs://bkt/db": request to ${host} timed out (no data for 200 ms)`,
      ),
    );
    const stream = await client.openSnapshot({ generation: GEN_A, index: 0 });
    await assert.rejects(
      readAll(stream),
      new Error(
        `Cannot read snapshot "generations/${GEN_A}/snapshots/00000000.snapshot.lz4" in ` +
          `"gcs://bkt/db": request to ${host} timed out (no data for 200 ms)`,
      ),
    );
  } finally {
    release();
    await server.shutdown();
  }
});

// ---------------------------------------------------------------------------------------
// Against fake-gcs-server

/** Runs `fn` with environment variables set (`undefined` unsets), then restores them. */
async function withEnv<T>(vars: Record<string, string | undefined>, fn: () => Promise<T>) {
  const saved = Object.keys(vars).map((k) => [k, Deno.env.get(k)] as const);
  const set = (k: string, v: string | undefined) =>
    v === undefined ? Deno.env.delete(k) : Deno.env.set(k, v);
  for (const [k, v] of Object.entries(vars)) set(k, v);
  try {
    return await fn();
  } finally {
    for (const [k, v] of saved) set(k, v);
  }
}

/** Credentials the chain must not find by accident while a test runs. */
const NO_AMBIENT_CREDENTIALS = {
  STORAGE_EMULATOR_HOST: undefined,
  GOOGLE_APPLICATION_CREDENTIALS: undefined,
  CLOUDSDK_CONFIG: "/nonexistent",
  GCE_METADATA_HOST: undefined,
};

function openGcsEnv(server: GcsTestServer): KindEnv {
  return {
    newFixture(): Promise<ClientFixture> {
      const root = `${randomName()}/db`;
      const make = (path: string) =>
        new GcsReplicaClient({
          bucket: server.bucket,
          path,
          endpoint: server.endpoint,
          anonymous: true,
        });
      return Promise.resolve({
        kind: "gcs",
        client: make(root),
        clientAt: (sub: string) => make(`${root}/${sub}`),
        [Symbol.asyncDispose]: () => Promise.resolve(),
      });
    },
    [Symbol.asyncDispose]: () => Promise.resolve(),
  };
}

/** A loopback port nothing listens on (bound, then released). */
function deadPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

Deno.test({
  name: "GcsReplicaClient on fake-gcs-server",
  ignore,
  async fn(t) {
    await using server = await startGcsServer();
    await using dir = await tempDir();
    await using proxy = await startGcsAuthProxy(server.endpoint, dir.path);
    /** Storage requests the proxy saw since `mark`. */
    const requestsSince = (mark: number) => proxy.requests.slice(mark);
    const anon = (path: string, extra: Partial<GcsReplicaClientOptions> = {}) =>
      new GcsReplicaClient({
        bucket: server.bucket,
        path,
        endpoint: server.endpoint,
        anonymous: true,
        ...extra,
      });

    await runConformance(t, openGcsEnv(server));

    await t.step("object names follow v0.3.13's layout under the path", async () => {
      const root = randomName();
      const client = anon(`${root}/db`);
      await client.writeSnapshot({ generation: GEN_A, index: 0x1f }, testBytes(10));
      await client.writeWalSegment({ generation: GEN_A, index: 2, offset: 4152 }, testBytes(10));
      assert.deepEqual(await server.objectNames(server.bucket, `${root}/`), [
        `${root}/db/generations/${GEN_A}/snapshots/0000001f.snapshot.lz4`,
        `${root}/db/generations/${GEN_A}/wal/00000002_00001038.wal.lz4`,
      ]);
      // A leading slash in `path` stays in the names, as v0.3.13 writes them.
      const slashed = anon(`/${root}/x`);
      await slashed.writeSnapshot({ generation: GEN_A, index: 1 }, testBytes(3));
      assert.deepEqual(await server.objectNames(server.bucket, `/${root}/`), [
        `/${root}/x/generations/${GEN_A}/snapshots/00000001.snapshot.lz4`,
      ]);
      assert.deepEqual(await slashed.generations(), [GEN_A]);
    });

    await t.step("a missing bucket fails with one line naming the replica", async () => {
      const client = new GcsReplicaClient({
        bucket: "no-such-bucket",
        path: "db",
        endpoint: server.endpoint,
        anonymous: true,
      });
      for (
        const call of [
          () => client.generations(),
          () => client.writeSnapshot({ generation: GEN_A, index: 0 }, testBytes(10)),
          () => client.writeSnapshot({ generation: GEN_A, index: 0 }, streamOf(testBytes(10))),
          () => collect(client.walSegments(GEN_A)),
        ]
      ) {
        const err = await call().then(() => undefined, (e) => e);
        assert.ok(err instanceof Error, "rejects");
        assert.match(err.message, /^Cannot .* in "gcs:\/\/no-such-bucket\/db": /);
        assert.match(err.message, /bucket "no-such-bucket" does not exist$/);
        assert.doesNotMatch(err.message, /\n/);
      }
    });

    await t.step("an unreachable server fails with one line naming the replica", async () => {
      const port = deadPort();
      const client = new GcsReplicaClient({
        bucket: "bkt",
        path: "db",
        endpoint: `http://127.0.0.1:${port}`,
        anonymous: true,
      });
      const err = await client.generations().then(() => undefined, (e) => e);
      assert.ok(err instanceof Error);
      assert.equal(
        err.message,
        `Cannot list generations in "gcs://bkt/db": cannot connect to 127.0.0.1:${port}: ` +
          "connection refused",
      );
    });

    await t.step("a stream larger than one chunk goes up in a resumable upload", async () => {
      const client = anon(`${randomName()}/db`);
      const data = testBytes(2 * UPLOAD_CHUNK_SIZE + 1000, 5);
      const info = await client.writeSnapshot({ generation: GEN_A, index: 1 }, streamOf(data));
      assert.equal(info.size, data.length);
      const back = await readAll(await client.openSnapshot({ generation: GEN_A, index: 1 }));
      assert.ok(back.length === data.length && back.every((b, i) => b === data[i]));
    });

    await t.step("STORAGE_EMULATOR_HOST sends requests there, without credentials", async () => {
      const host = server.endpoint.replace("http://", "");
      await withEnv({ ...NO_AMBIENT_CREDENTIALS, STORAGE_EMULATOR_HOST: host }, async () => {
        const client = new GcsReplicaClient({ bucket: server.bucket, path: randomName() });
        assert.equal(client.endpoint, server.endpoint);
        await client.writeSnapshot({ generation: GEN_A, index: 0 }, testBytes(5));
        assert.deepEqual(await client.generations(), [GEN_A]);
      });
      // And no Authorization header: a proxy demanding one refuses the request.
      const mark = proxy.requests.length;
      await withEnv(
        { ...NO_AMBIENT_CREDENTIALS, STORAGE_EMULATOR_HOST: proxy.endpoint },
        async () => {
          const client = new GcsReplicaClient({ bucket: server.bucket, path: "db" });
          await assert.rejects(client.generations(), /rejected the credentials \(HTTP 401/);
        },
      );
      assert.ok(requestsSince(mark).length > 0);
      assert.ok(requestsSince(mark).every((r) => r.authorization === undefined));
    });

    await t.step("credentials: each source of the chain yields a working token", async () => {
      const mark = proxy.requests.length;
      const gcloud = `${dir.path}/gcloud`;
      await Deno.mkdir(gcloud);
      await Deno.copyFile(
        proxy.authorizedUserFile,
        `${gcloud}/application_default_credentials.json`,
      );
      const roundTrip = async (options: Partial<GcsReplicaClientOptions> = {}) => {
        const client = new GcsReplicaClient({
          bucket: server.bucket,
          path: randomName(),
          endpoint: proxy.endpoint,
          ...options,
        });
        const data = testBytes(UPLOAD_CHUNK_SIZE + 10, 2); // media and resumable requests
        await client.writeSnapshot({ generation: GEN_A, index: 0 }, streamOf(data));
        await client.writeWalSegment({ generation: GEN_A, index: 0, offset: 0 }, testBytes(9));
        assert.deepEqual(await client.generations(), [GEN_A]);
        const back = await readAll(await client.openSnapshot({ generation: GEN_A, index: 0 }));
        assert.equal(back.length, data.length);
        await client.deleteGeneration(GEN_A);
        assert.deepEqual(await client.generations(), []);
      };

      await withEnv(
        NO_AMBIENT_CREDENTIALS,
        () => roundTrip({ credentialsFile: proxy.serviceAccountFile }),
      );
      assert.equal(proxy.issued.jwt, 1, "one JWT-bearer token, reused for every request");
      await withEnv(
        { ...NO_AMBIENT_CREDENTIALS, GOOGLE_APPLICATION_CREDENTIALS: proxy.serviceAccountFile },
        () => roundTrip(),
      );
      assert.equal(proxy.issued.jwt, 2);
      await withEnv({ ...NO_AMBIENT_CREDENTIALS, CLOUDSDK_CONFIG: gcloud }, () => roundTrip());
      assert.equal(proxy.issued.refresh, 1, "gcloud's authorized-user file, refresh grant");
      await withEnv(
        { ...NO_AMBIENT_CREDENTIALS, GCE_METADATA_HOST: proxy.endpoint.replace("http://", "") },
        () => roundTrip(),
      );
      assert.equal(proxy.issued.metadata, 1, "the metadata server");
      assert.ok(requestsSince(mark).length > 20);
      assert.ok(requestsSince(mark).every((r) => r.authorization?.startsWith("Bearer tok-")));

      // No source at all: one line that says what to set.
      await withEnv(
        { ...NO_AMBIENT_CREDENTIALS, GCE_METADATA_HOST: `127.0.0.1:${deadPort()}` },
        async () => {
          const client = new GcsReplicaClient({
            bucket: "bkt",
            path: "db",
            endpoint: proxy.endpoint,
          });
          const err = await client.generations().then(() => undefined, (e) => e);
          assert.match(
            err.message,
            /^Cannot list generations in "gcs:\/\/bkt\/db": no Google credentials found: set GOOGLE_APPLICATION_CREDENTIALS/,
          );
          assert.doesNotMatch(err.message, /\n/);
        },
      );
      // A file of an unsupported type, and a key the token endpoint refuses.
      const external = `${dir.path}/external.json`;
      await Deno.writeTextFile(external, JSON.stringify({ type: "external_account" }));
      const bad = `${dir.path}/bad.json`;
      await Deno.writeTextFile(
        bad,
        JSON.stringify({
          ...JSON.parse(await Deno.readTextFile(proxy.authorizedUserFile)),
          refresh_token: "wrong",
        }),
      );
      await withEnv(NO_AMBIENT_CREDENTIALS, async () => {
        const at = (file: string) =>
          new GcsReplicaClient({ bucket: "bkt", endpoint: proxy.endpoint, credentialsFile: file });
        await assert.rejects(at(external).generations(), /has type "external_account"; supported/);
        await assert.rejects(at(bad).generations(), /refused to issue a token \(invalid_grant\)/);
        const offline = `${dir.path}/offline.json`;
        const key = JSON.parse(await Deno.readTextFile(proxy.serviceAccountFile));
        const port = deadPort();
        await Deno.writeTextFile(
          offline,
          JSON.stringify({ ...key, token_uri: `http://127.0.0.1:${port}/token` }),
        );
        await assert.rejects(
          at(offline).generations(),
          new RegExp(
            `: cannot connect to token endpoint 127\\.0\\.0\\.1:${port}: connection refused$`,
          ),
        );
        await assert.rejects(
          at(`${dir.path}/missing.json`).generations(),
          /cannot read credentials file ".*missing.json": no such file/,
        );
      });
    });

    await t.step(
      "a failed chunk of a resumable upload resumes from the committed offset",
      async () => {
        const client = new GcsReplicaClient({
          bucket: server.bucket,
          path: randomName(),
          endpoint: proxy.endpoint,
          credentialsFile: proxy.serviceAccountFile,
        });
        const data = testBytes(2 * UPLOAD_CHUNK_SIZE + 77, 4);
        const mark = proxy.requests.length;
        // The second chunk's PUT fails once with a 503.
        proxy.failNext("PUT", /upload_id=/, { skip: 1 });
        const info = await client.writeSnapshot({ generation: GEN_A, index: 3 }, streamOf(data));
        assert.equal(info.size, data.length);
        const back = await readAll(await client.openSnapshot({ generation: GEN_A, index: 3 }));
        assert.ok(back.length === data.length && back.every((b, i) => b === data[i]));
        const chunkPuts = requestsSince(mark).filter((r) => r.method === "PUT").length;
        // 3 chunks + the failed attempt + one status query.
        assert.equal(chunkPuts, 5);
      },
    );

    await t.step("v0.3.13 restores and lists what this client wrote", async () => {
      const sample = await oracleSample();
      const bin = await litestreamBin();
      const path = `${randomName()}/db`;
      const client = anon(path);
      // Copy the sample's file replica object by object through the client.
      const gens = `${sample.replicaPath}/generations`;
      for await (const gen of Deno.readDir(gens)) {
        for await (const e of Deno.readDir(`${gens}/${gen.name}/snapshots`)) {
          const index = parseInt(e.name, 16);
          const bytes = await Deno.readFile(`${gens}/${gen.name}/snapshots/${e.name}`);
          await client.writeSnapshot({ generation: gen.name, index }, bytes);
        }
        for await (const e of Deno.readDir(`${gens}/${gen.name}/wal`)) {
          const [index, offset] = e.name.split(".")[0].split("_").map((h) => parseInt(h, 16));
          const bytes = await Deno.readFile(`${gens}/${gen.name}/wal/${e.name}`);
          await client.writeWalSegment(
            { generation: gen.name, index, offset },
            streamOf(bytes, 100),
          );
        }
      }
      const env = { STORAGE_EMULATOR_HOST: server.endpoint };
      const run = async (...args: string[]) => {
        const out = await new Deno.Command(bin, { args, env, stdout: "piped", stderr: "piped" })
          .output();
        const text = new TextDecoder();
        assert.ok(out.success, `litestream ${args.join(" ")}: ${text.decode(out.stderr)}`);
        return text.decode(out.stdout);
      };
      const url = `gcs://${server.bucket}/${path}`;
      await run("restore", "-o", `${dir.path}/from-gcs.db`, url);
      await run("restore", "-o", `${dir.path}/from-file.db`, `file://${sample.replicaPath}`);
      assert.equal(await dump(`${dir.path}/from-gcs.db`), await dump(`${dir.path}/from-file.db`));
      const wal = await run("wal", url);
      assert.equal(wal.trim().split("\n").length, 1 + 3, wal);
    });

    await t.step("this client restores what v0.3.13 replicated", async () => {
      const bin = await litestreamBin();
      const db = `${dir.path}/app.db`;
      const path = `${randomName()}/db`;
      await createDb(db);
      const config = `${dir.path}/litestream.yml`;
      await Deno.writeTextFile(
        config,
        `dbs:\n  - path: ${db}\n    monitor-interval: 100ms\n    replicas:\n` +
          `      - type: gcs\n        bucket: ${server.bucket}\n        path: ${path}\n` +
          `        sync-interval: 100ms\n`,
      );
      // No scheme: v0.3.13's Go client assumes http, as emulatorEndpoint() does.
      const host = server.endpoint.replace("http://", "");
      const child = new Deno.Command(bin, {
        args: ["replicate", "-config", config],
        env: { STORAGE_EMULATOR_HOST: host },
        stdin: "null",
        stdout: "null",
        stderr: "piped",
      }).spawn();
      const output = child.output();
      const client = anon(path);
      try {
        const walCount = async () => {
          const gens = await client.generations();
          return gens.length === 1 ? (await collect(client.walSegments(gens[0]))).length : 0;
        };
        await waitFor(async () => (await walCount()) >= 1, 20_000, "v0.3.13's first WAL segment");
        await sqliteAsync(db, "INSERT INTO t (v) VALUES (randomblob(3000)), ('last');");
        await waitFor(async () => (await walCount()) >= 2, 20_000, "v0.3.13's second WAL segment");
      } finally {
        child.kill("SIGTERM");
        await output;
      }
      const [generation] = await client.generations();
      assert.equal((await collect(client.snapshots(generation))).length, 1);
      const out = `${dir.path}/restored.db`;
      await restore(client, { outputPath: out });
      assert.equal(await dump(out), await dump(db));
    });
  },
});
