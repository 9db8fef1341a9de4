/**
 * {@linkcode AbsReplicaClient} against Azurite (a real Blob service with SharedKey checks)
 * on 127.0.0.1: the shared conformance suite, then Azure-only steps (marker paging, blob
 * names and types, errors for a wrong key, a missing container and an unreachable endpoint,
 * the `LITESTREAM_AZURE_ACCOUNT_KEY` fallback) and round trips with the real Litestream
 * v0.3.13 in both directions. Pure parts (URL parsing, the string-to-sign, List Blobs XML)
 * need no server. Without Azurite installed the server test is skipped with a notice;
 * under CI=true it fails instead.
 */
import assert from "node:assert/strict";
import {
  AbsReplicaClient,
  type AbsReplicaClientOptions,
  ACCOUNT_KEY_ENV,
  parseAbsUrl,
  parseListBlobsXml,
  sharedKeyStringToSign,
  signAbsRequest,
} from "../src/clients/abs.ts";
import { FileReplicaClient } from "../src/clients/file.ts";
import { describeError } from "../src/errors.ts";
import { collect, readAll, type ReplicaClient } from "../src/replica_client.ts";
import { restore } from "../src/restore.ts";
import { type AzuriteServer, azuriteUnavailable, startAzurite } from "./_azurite.ts";
import {
  type ClientFixture,
  GEN_A,
  type KindEnv,
  randomName,
  runConformance,
  testBytes,
} from "./_conformance.ts";
import { dump, sqliteAsync, tempDir, waitFor } from "./_helpers.ts";
import { litestreamBin, oracleSample } from "./_oracle.ts";
import { closedPort, isCi, startS3Proxy } from "./_s3_servers.ts";

const CONTAINER = "litestream-test";

// ---------------------------------------------------------------------------------------
// No server needed.

Deno.test("parseAbsUrl() follows v0.3.13's URL rules", () => {
  const cases: [string, ReturnType<typeof parseAbsUrl>][] = [
    ["abs://acct@cont/db", { accountName: "acct", bucket: "cont", path: "db" }],
    ["abs://cont/db", { bucket: "cont", path: "db" }],
    ["abs://acct@cont", { accountName: "acct", bucket: "cont", path: "" }],
    ["abs://acct@cont/", { accountName: "acct", bucket: "cont", path: "" }],
    ["abs://acct@cont//a/./b/../c/", { accountName: "acct", bucket: "cont", path: "a/c" }],
    ["abs://acct:ignored@cont/x", { accountName: "acct", bucket: "cont", path: "x" }],
    ["abs://acct@cont/a%20b?q=1#f", { accountName: "acct", bucket: "cont", path: "a b" }],
    ["ABS://acct@cont/x", { accountName: "acct", bucket: "cont", path: "x" }],
  ];
  for (const [url, want] of cases) assert.deepEqual(parseAbsUrl(url), want, url);

  assert.throws(() => parseAbsUrl("s3://bkt/db"), SyntaxError);
  assert.throws(() => parseAbsUrl("abs://acct@/db"), RangeError);
  assert.throws(() => parseAbsUrl("abs://acct@cont/%zz"), SyntaxError);
  const err = (() => {
    try {
      parseAbsUrl("abs://acct:hunter2@/db");
    } catch (e) {
      return e as Error;
    }
    return undefined;
  })();
  assert.ok(err && !err.message.includes("hunter2"), "a password in the URL is not echoed");
});

Deno.test("AbsReplicaClient() checks its options and names the replica without the key", () => {
  const key = btoa("not-a-real-key-but-base64");
  const client = new AbsReplicaClient({
    accountName: "acct",
    accountKey: key,
    bucket: "cont",
    path: "/a//b/",
  });
  assert.equal(client.type, "abs");
  assert.equal(client.location, "abs://acct@cont/a/b");
  assert.equal(client.endpoint, "https://acct.blob.core.windows.net");
  assert.equal(
    new AbsReplicaClient({ accountName: "a", bucket: "c", endpoint: "http://h:1/acc/" }).endpoint,
    "http://h:1/acc",
  );
  assert.ok(!JSON.stringify(client).includes(key));

  const bad: AbsReplicaClientOptions[] = [
    { accountName: "", bucket: "cont" },
    { accountName: "acct", bucket: "" },
    { accountName: "acct", bucket: "cont", endpoint: "127.0.0.1:10000" },
    { accountName: "acct", bucket: "cont", endpoint: "ftp://h/x" },
    { accountName: "acct", bucket: "cont", endpoint: "https://h/?sv=2020&sig=x" },
    { accountName: "acct", bucket: "cont", listPageSize: 0 },
    { accountName: "acct", bucket: "cont", listPageSize: 5001 },
  ];
  for (const options of bad) {
    assert.throws(() => new AbsReplicaClient(options), RangeError, JSON.stringify(options));
  }
});

Deno.test("sharedKeyStringToSign() builds Azure's SharedKey string-to-sign", () => {
  const headers = new Headers({
    "x-ms-version": "2021-08-06",
    "X-MS-Date": "Fri, 26 Jun 2015 23:39:12 GMT",
    "x-ms-blob-type": "BlockBlob",
    "content-type": "application/octet-stream",
  });
  const url = new URL(
    "http://127.0.0.1:10000/devstoreaccount1/cont/a%20b/x.lz4?comp=block&blockid=YWJj%2BZA%3D%3D",
  );
  assert.equal(
    sharedKeyStringToSign("devstoreaccount1", "put", url, headers, 3),
    [
      "PUT",
      "",
      "",
      "3",
      "",
      "application/octet-stream",
      "",
      "",
      "",
      "",
      "",
      "",
      "x-ms-blob-type:BlockBlob",
      "x-ms-date:Fri, 26 Jun 2015 23:39:12 GMT",
      "x-ms-version:2021-08-06",
      "/devstoreaccount1/devstoreaccount1/cont/a%20b/x.lz4",
      "blockid:YWJj+ZA==",
      "comp:block",
    ].join("\n"),
  );
  // A zero content length is signed as empty; a listing's parameters are sorted.
  const list = new URL(
    "https://acct.blob.core.windows.net/cont?restype=container&comp=list&prefix=p%2F",
  );
  assert.equal(
    sharedKeyStringToSign("acct", "GET", list, new Headers({ "x-ms-version": "v" }), 0),
    "GET\n\n\n\n\n\n\n\n\n\n\n\nx-ms-version:v\n/acct/cont\ncomp:list\nprefix:p/\nrestype:container",
  );
});

Deno.test("parseListBlobsXml() reads blobs, prefixes, entities, encoded names and markers", () => {
  const xml = `<?xml version="1.0" encoding="utf-8"?>
<EnumerationResults ServiceEndpoint="http://x/" ContainerName="c"><Prefix>p/</Prefix>
<Blobs><Blob><Name>p/a&amp;b.wal.lz4</Name><Properties>
<Creation-Time>Wed, 02 Dec 2026 10:00:00 GMT</Creation-Time>
<Last-Modified>Wed, 02 Dec 2026 11:00:00 GMT</Last-Modified><Content-Length>42</Content-Length>
<BlobType>BlockBlob</BlobType></Properties></Blob>
<Blob><Name Encoded="true">p%2F%EF%BF%BF</Name><Properties>
<Last-Modified>Wed, 02 Dec 2026 11:00:00 GMT</Last-Modified><Content-Length>0</Content-Length>
</Properties></Blob>
<BlobPrefix><Name>p/0123456789abcdef/</Name></BlobPrefix></Blobs>
<NextMarker>2!72!MDAwMDA</NextMarker></EnumerationResults>`;
  assert.deepEqual(parseListBlobsXml(xml), {
    blobs: [
      { name: "p/a&b.wal.lz4", size: 42, createdAt: new Date("2026-12-02T10:00:00Z") },
      { name: "p/\uffff", size: 0, createdAt: new Date("2026-12-02T11:00:00Z") },
    ],
    prefixes: ["p/0123456789abcdef/"],
    nextMarker: "2!72!MDAwMDA",
  });
  assert.equal(
    parseListBlobsXml("<EnumerationResults><Blobs /><NextMarker /></EnumerationResults>")
      .nextMarker,
    "",
  );
  assert.throws(() => parseListBlobsXml("<Error><Code>X</Code></Error>"), SyntaxError);
});

// ---------------------------------------------------------------------------------------
// Against Azurite.

const unavailable = await azuriteUnavailable();

/** Locally a missing Azurite skips the test with a notice; under CI=true it fails instead. */
function skipUnavailable(): boolean {
  if (unavailable === undefined || isCi()) return false;
  // deno-lint-ignore no-console
  console.warn(`abs_test: skipping Azurite tests: ${unavailable}`);
  return true;
}

/** Client options for `server`'s test container under `path`. */
function options(server: AzuriteServer, path: string): AbsReplicaClientOptions {
  return {
    accountName: server.accountName,
    accountKey: server.accountKey,
    bucket: CONTAINER,
    path,
    endpoint: server.endpoint,
  };
}

function openAbsEnv(server: AzuriteServer): KindEnv {
  return {
    newFixture(): Promise<ClientFixture> {
      const root = `${randomName()}/db`;
      const make = (path: string) => new AbsReplicaClient(options(server, path));
      return Promise.resolve({
        kind: "abs",
        client: make(root),
        clientAt: (sub: string) => make(`${root}/${sub}`),
        [Symbol.asyncDispose]: () => Promise.resolve(),
      });
    },
    [Symbol.asyncDispose]: () => Promise.resolve(),
  };
}

/** The one-line message of the error `call` rejects with. */
async function failure(call: Promise<unknown>): Promise<string> {
  const err = await call.then(() => undefined, (e) => e);
  assert.ok(err instanceof Error, "the call fails");
  return describeError(err);
}

function assertOneLine(message: string, client: ReplicaClient, secrets: string[]): void {
  assert.ok(!message.includes("\n"), `one line: ${message}`);
  assert.ok(message.includes(`"${client.location}"`), `names the replica: ${message}`);
  for (const s of secrets) assert.ok(!message.includes(s), `does not hold the key: ${message}`);
}

/** Sends a signed request the client does not make (to look at a blob's properties). */
async function signedFetch(server: AzuriteServer, method: string, url: string) {
  const headers = new Headers();
  await signAbsRequest(server.accountName, server.accountKey, method, url, headers);
  const res = await fetch(url, { method, headers });
  await res.body?.cancel();
  return res;
}

Deno.test({
  name: "AbsReplicaClient(azurite) conforms to the ReplicaClient contract and Azure's rules",
  ignore: skipUnavailable(),
  async fn(t) {
    await using server = await startAzurite();
    await server.createContainer(CONTAINER);
    await runConformance(t, openAbsEnv(server));

    await t.step("listings page with markers; deletes span pages", async () => {
      const client = new AbsReplicaClient({
        ...options(server, `${randomName()}/db`),
        listPageSize: 7,
      });
      const positions = Array.from({ length: 30 }, (_, i) => ({
        generation: GEN_A,
        index: i,
        offset: 0,
      }));
      for (const p of positions) await client.writeWalSegment(p, testBytes(3, p.index));
      for (let i = 0; i < 9; i++) {
        const gen = `${i.toString(16).padStart(16, "0")}`;
        await client.writeSnapshot({ generation: gen, index: 0 }, testBytes(1));
      }
      assert.equal((await collect(client.walSegments(GEN_A))).length, 30);
      assert.equal((await client.generations()).length, 10);
      const lists = client.operations.total.LIST ?? 0;
      assert.ok(lists >= 5 + 2, `paged with markers (${lists} LIST requests)`);
      await client.deleteGeneration(GEN_A);
      assert.deepEqual(await collect(client.walSegments(GEN_A)), []);
    });

    await t.step(
      "blobs sit at v0.3.13's names as application/octet-stream block blobs",
      async () => {
        const path = `${randomName()}/a b/db`;
        const client = new AbsReplicaClient(options(server, path));
        await client.writeSnapshot({ generation: GEN_A, index: 0x1f }, testBytes(10));
        await client.writeWalSegment({ generation: GEN_A, index: 2, offset: 4152 }, testBytes(10));
        const blobUrl = (name: string) =>
          `${server.endpoint}/${CONTAINER}/${
            `${path}/${name}`.split("/").map(encodeURIComponent).join("/")
          }`;
        for (
          const name of [
            `generations/${GEN_A}/snapshots/0000001f.snapshot.lz4`,
            `generations/${GEN_A}/wal/00000002_00001038.wal.lz4`,
          ]
        ) {
          const res = await signedFetch(server, "HEAD", blobUrl(name));
          assert.equal(res.status, 200, name);
          assert.equal(res.headers.get("x-ms-blob-type"), "BlockBlob");
          assert.equal(res.headers.get("content-type"), "application/octet-stream");
        }
      },
    );

    await t.step("streamed uploads past one block are committed whole", async () => {
      const client = new AbsReplicaClient(options(server, `${randomName()}/db`));
      const data = testBytes(4 * 1024 * 1024, 5); // exactly one block: staged, then committed
      const stream = new ReadableStream<Uint8Array>({
        start(c) {
          c.enqueue(data.subarray(0, 1000));
          c.enqueue(data.subarray(1000));
          c.close();
        },
      });
      const info = await client.writeSnapshot({ generation: GEN_A, index: 0 }, stream);
      assert.equal(info.size, data.length);
      const back = await readAll(await client.openSnapshot({ generation: GEN_A, index: 0 }));
      assert.ok(back.length === data.length && back.every((b, i) => b === data[i]));
      assert.deepEqual(client.operations.total.PUT, 1);
      assert.deepEqual(client.operations.bytes.PUT, data.length);
    });

    await t.step(
      "a wrong account key fails with one line naming the replica, not the key",
      async () => {
        const wrongKey = btoa("0123456789abcdef0123456789abcdef");
        const client = new AbsReplicaClient({
          ...options(server, `${randomName()}/db`),
          accountKey: wrongKey,
        });
        for (
          const call of [
            () => client.generations(),
            () => client.writeSnapshot({ generation: GEN_A, index: 0 }, testBytes(10)),
            () => client.openSnapshot({ generation: GEN_A, index: 0 }),
          ]
        ) {
          const message = await failure(call());
          assertOneLine(message, client, [wrongKey, server.accountKey]);
          assert.match(message, /rejected the request signature/);
        }
        const notBase64 = "this is not base64!";
        const client2 = new AbsReplicaClient({ ...options(server, "x"), accountKey: notBase64 });
        const message = await failure(client2.generations());
        assertOneLine(message, client2, [notBase64]);
        assert.match(message, /not valid base64/);
      },
    );

    await t.step("a missing container fails with one line naming the replica", async () => {
      const client = new AbsReplicaClient({
        ...options(server, "db"),
        bucket: "no-such-container",
      });
      for (
        const call of [
          () => client.generations(),
          () => collect(client.snapshots(GEN_A)),
          () => client.writeWalSegment({ generation: GEN_A, index: 0, offset: 0 }, testBytes(1)),
          () => client.openWalSegment({ generation: GEN_A, index: 0, offset: 0 }),
          () => client.deleteGeneration(GEN_A),
        ]
      ) {
        const message = await failure(call());
        assertOneLine(message, client, [server.accountKey]);
        assert.match(message, /container "no-such-container" does not exist/);
      }
    });

    await t.step("an unreachable endpoint fails with one line naming the replica", async () => {
      const port = closedPort();
      const client = new AbsReplicaClient({
        ...options(server, "db"),
        endpoint: `http://127.0.0.1:${port}/${server.accountName}`,
      });
      const message = await failure(client.generations());
      assertOneLine(message, client, [server.accountKey]);
      assert.match(message, new RegExp(`cannot connect to 127\\.0\\.0\\.1:${port}`));
    });

    await t.step("retries 5xx answers, resets and stalls; gives up with one line", async () => {
      await using proxy = await startS3Proxy(new URL(server.endpoint).origin);
      const client = new AbsReplicaClient({
        ...options(server, `${randomName()}/db`),
        endpoint: `${proxy.endpoint}/${server.accountName}`,
        idleTimeoutMs: 300,
      });
      const key = { generation: GEN_A, index: 0 };
      const data = testBytes(200_000, 4);

      proxy.inject({ kind: "status", status: 503, code: "ServerBusy" }, 2, "PUT");
      let from = proxy.requests.length;
      await client.writeSnapshot(key, data);
      assert.deepEqual(proxy.requests.slice(from).map((r) => r.status), [503, 503, 201]);

      proxy.inject({ kind: "reset" }, 1, "GET");
      proxy.inject({ kind: "stall" }, 1, "GET");
      from = proxy.requests.length;
      assert.deepEqual(await client.generations(), [GEN_A]);
      assert.deepEqual(await readAll(await client.openSnapshot(key)), data);
      assert.equal(proxy.stats(from).faults, 2);

      // A download that stalls after its headers fails while it is read, on one line.
      proxy.inject({ kind: "stall", midResponse: true }, 1, "GET");
      const stream = await client.openSnapshot(key);
      const midStream = await failure(readAll(stream));
      assertOneLine(midStream, client, [server.accountKey]);
      assert.match(midStream, /read snapshot .* timed out/);

      proxy.setFaultMode({ faults: [{ kind: "status", status: 500, code: "InternalError" }] });
      from = proxy.requests.length;
      const message = await failure(client.generations());
      proxy.setFaultMode(undefined);
      assertOneLine(message, client, [server.accountKey]);
      assert.match(message, /answered HTTP 500 InternalError, retries gave up/);
      assert.equal(proxy.requests.length - from, 5, "5 attempts");
    });

    await t.step(`the key comes from ${ACCOUNT_KEY_ENV} when account-key is unset`, async () => {
      const saved = Deno.env.get(ACCOUNT_KEY_ENV);
      const { accountKey: _, ...noKey } = options(server, `${randomName()}/db`);
      try {
        Deno.env.delete(ACCOUNT_KEY_ENV);
        const without = new AbsReplicaClient(noKey);
        const message = await failure(without.generations());
        assertOneLine(message, without, []);
        assert.match(message, new RegExp(`no account key .*${ACCOUNT_KEY_ENV}`));

        Deno.env.set(ACCOUNT_KEY_ENV, server.accountKey);
        const withEnv = new AbsReplicaClient({ ...noKey, accountKey: "" });
        await withEnv.writeSnapshot({ generation: GEN_A, index: 0 }, testBytes(1));
        assert.deepEqual(await withEnv.generations(), [GEN_A]);
      } finally {
        if (saved === undefined) Deno.env.delete(ACCOUNT_KEY_ENV);
        else Deno.env.set(ACCOUNT_KEY_ENV, saved);
      }
    });

    await t.step("Litestream v0.3.13 restores a replica AbsReplicaClient wrote", async () => {
      await using dir = await tempDir();
      const sample = await oracleSample();
      const path = `${randomName()}/db`;
      await copyReplica(
        new FileReplicaClient(sample.replicaPath),
        new AbsReplicaClient(options(server, path)),
      );
      const bin = await litestreamBin();
      await Deno.writeTextFile(
        `${dir.path}/litestream.yml`,
        `dbs:\n  - path: ${dir.path}/db\n    replicas:\n` +
          `      - type: abs\n        account-name: ${server.accountName}\n` +
          `        account-key: ${server.accountKey}\n        endpoint: ${server.endpoint}\n` +
          `        bucket: ${CONTAINER}\n        path: ${path}\n`,
      );
      await oracle(bin, [
        "restore",
        "-config",
        `${dir.path}/litestream.yml`,
        "-o",
        `${dir.path}/from-abs.db`,
        `${dir.path}/db`,
      ]);
      await oracle(bin, [
        "restore",
        "-o",
        `${dir.path}/from-file.db`,
        `file://${sample.replicaPath}`,
      ]);
      const want = await dump(`${dir.path}/from-file.db`);
      assert.match(want, /INSERT INTO t/);
      assert.equal(await dump(`${dir.path}/from-abs.db`), want);
    });

    await t.step("AbsReplicaClient restores a replica Litestream v0.3.13 wrote", async () => {
      await using dir = await tempDir();
      const db = `${dir.path}/app.db`;
      const path = `${randomName()}/db`;
      const client = new AbsReplicaClient(options(server, path));
      await sqliteAsync(
        db,
        "PRAGMA journal_mode=wal; CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);" +
          " INSERT INTO t (v) VALUES (randomblob(3000));",
      );
      await Deno.writeTextFile(
        `${dir.path}/litestream.yml`,
        `dbs:\n  - path: ${db}\n    monitor-interval: 100ms\n    replicas:\n` +
          `      - url: abs://${server.accountName}@${CONTAINER}/${path}\n` +
          `        endpoint: ${server.endpoint}\n        sync-interval: 100ms\n`,
      );
      const child = new Deno.Command(await litestreamBin(), {
        args: ["replicate", "-config", `${dir.path}/litestream.yml`],
        env: { [ACCOUNT_KEY_ENV]: server.accountKey },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const output = child.output(); // drains the pipes while it runs
      let waited: unknown;
      try {
        const segments = async () => {
          const [gen] = await client.generations();
          return gen ? (await collect(client.walSegments(gen))).length : 0;
        };
        await waitFor(async () => await segments() >= 1, 20_000, "v0.3.13's first WAL segment");
        const before = await segments();
        await sqliteAsync(db, "INSERT INTO t (v) VALUES (randomblob(5000));");
        await waitFor(async () => await segments() > before, 20_000, "v0.3.13's next segment");
      } catch (err) {
        waited = err;
      }
      child.kill("SIGTERM");
      const out = await output;
      if (waited) {
        const log = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-5).join("\n");
        throw new Error(`${(waited as Error).message}; litestream logged:\n${log}`);
      }
      const [snapshot] = await collect(client.snapshots((await client.generations())[0]));
      assert.ok(snapshot, "v0.3.13 wrote a snapshot");
      await restore(client, { outputPath: `${dir.path}/restored.db` });
      assert.equal(await dump(`${dir.path}/restored.db`), await dump(db));
    });
  },
});

/** Copies every snapshot and WAL segment of `from` to `to`, streaming each. */
async function copyReplica(from: ReplicaClient, to: ReplicaClient): Promise<void> {
  for (const generation of await from.generations()) {
    for await (const s of from.snapshots(generation)) {
      await to.writeSnapshot(s, await from.openSnapshot(s));
    }
    for await (const w of from.walSegments(generation)) {
      await to.writeWalSegment(w, await from.openWalSegment(w));
    }
  }
}

async function oracle(bin: string, args: string[]): Promise<void> {
  const out = await new Deno.Command(bin, { args, stdin: "null", stdout: "piped", stderr: "piped" })
    .output();
  if (!out.success) {
    throw new Error(`litestream ${args[0]} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
}
