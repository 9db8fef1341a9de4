/**
 * One conformance suite for every {@linkcode ReplicaClient} kind: `file` (a temp dir) and
 * `s3-moto`, `s3-fauxqs` (real S3 servers on 127.0.0.1, reached through a recording proxy
 * that enforces S3's 1000-key DeleteObjects limit). Each kind is one test whose steps share
 * one server (started once per kind); every step works under a fresh random prefix. S3
 * kinds then run S3-only steps on the same server (error translation, retries, batching,
 * credentials, URLs, region lookup), and a few S3 tests need no server or their own (TLS).
 */
import assert from "node:assert/strict";
import {
  applyLitestreamEnv,
  describeS3Error,
  MAX_DELETE_KEYS,
  parseS3Url,
  S3ReplicaClient,
  type S3ReplicaClientOptions,
} from "../src/clients/s3.ts";
import { describeError } from "../src/errors.ts";
import type { Pos } from "../src/pos.ts";
import { collect, readAll } from "../src/replica_client.ts";
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

import {
  GEN_A,
  GEN_B,
  GEN_C,
  type KindEnv,
  MIB,
  openFileEnv,
  randomName,
  runConformance,
  streamOf,
  testBytes,
} from "./_conformance.ts";

/** An S3 server with a proxy in front; clients talk to the proxy. */
interface S3Env extends KindEnv {
  readonly server: S3TestServer;
  readonly proxy: S3Proxy;
  /** Options for a client of this env under `path` (through the proxy). */
  options(path: string): S3ReplicaClientOptions;
}

async function openS3Env(kind: S3ServerKind): Promise<S3Env> {
  const server = await startS3Server(kind);
  let proxy: S3Proxy;
  try {
    proxy = await startS3Proxy(server.endpoint);
  } catch (err) {
    await server.stop();
    throw err;
  }
  const options = (path: string) => ({ ...server.clientOptions(path), endpoint: proxy.endpoint });
  return {
    server,
    proxy,
    options,
    newFixture() {
      const root = `${randomName()}/db`;
      const clients: S3ReplicaClient[] = [];
      const make = (path: string) => {
        const c = new S3ReplicaClient(options(path));
        clients.push(c);
        return c;
      };
      return Promise.resolve({
        kind: `s3-${kind}`,
        client: make(root),
        clientAt: (sub: string) => make(`${root}/${sub}`),
        async [Symbol.asyncDispose]() {
          for (const c of clients) await c.close();
        },
      });
    },
    async [Symbol.asyncDispose]() {
      await proxy.stop();
      await server.stop();
    },
  };
}

// ---------------------------------------------------------------------------------------
// Registration: one test per kind, one step per case.

interface KindEntry {
  name: string;
  title: string;
  open: () => Promise<KindEnv>;
  unavailable?: string;
  /** S3 kinds also run {@linkcode runS3Steps} on the same server. */
  s3?: boolean;
}

const KINDS: KindEntry[] = [
  {
    name: "file",
    title: "FileReplicaClient conforms to the ReplicaClient contract",
    open: openFileEnv,
  },
];
for (const kind of s3ServerKinds()) {
  KINDS.push({
    name: `s3-${kind}`,
    title: `S3ReplicaClient(${kind}) conforms to the ReplicaClient contract and S3's rules`,
    open: () => openS3Env(kind),
    unavailable: await s3ServerUnavailable(kind),
    s3: true,
  });
}

const noticed = new Set<string>();

/** Locally a missing server skips its tests with a notice; under CI=true they fail instead. */
function skipUnavailable(name: string, unavailable: string | undefined): boolean {
  if (unavailable === undefined || isCi()) return false;
  if (!noticed.has(unavailable)) {
    noticed.add(unavailable);
    // deno-lint-ignore no-console
    console.warn(`replica_client_test: skipping ${name} tests: ${unavailable}`);
  }
  return true;
}

for (const kind of KINDS) {
  Deno.test({
    name: kind.title,
    ignore: skipUnavailable(kind.name, kind.unavailable),
    async fn(t) {
      await using env = await kind.open();
      await runConformance(t, env);
      if (kind.s3) await runS3Steps(t, env as S3Env);
    },
  });
}

// ---------------------------------------------------------------------------------------
// S3-only behaviour.

Deno.test("parseS3Url() applies v0.3.13's host rules", () => {
  const cases: [string, S3ReplicaClientOptions][] = [
    ["s3://mybkt/db", { bucket: "mybkt", path: "db" }],
    ["s3://mybkt", { bucket: "mybkt", path: "" }],
    ["s3://mybkt/", { bucket: "mybkt", path: "" }],
    ["s3://mybkt//a/./b/../c/", { bucket: "mybkt", path: "a/c" }],
    ["s3://my.bkt.s3.amazonaws.com/x", { bucket: "my.bkt.s3.amazonaws.com", path: "x" }],
    ["s3://mybkt:9000/x", { bucket: "mybkt", path: "x" }], // port dropped, as upstream
    ["s3://mybkt/x?ignored=1#frag", { bucket: "mybkt", path: "x" }],
    ["s3://mybkt/a%20b", { bucket: "mybkt", path: "a b" }],
    ["s3://mybkt.localhost:15000/dbs/s3db", {
      bucket: "mybkt",
      path: "dbs/s3db",
      region: "us-east-1",
      endpoint: "http://localhost:15000",
      forcePathStyle: true,
    }],
    ["s3://mybkt.localhost/db", {
      bucket: "mybkt",
      path: "db",
      region: "us-east-1",
      endpoint: "http://localhost",
      forcePathStyle: true,
    }],
    ["s3://a.b.localhost:9/db", {
      bucket: "a.b",
      path: "db",
      region: "us-east-1",
      endpoint: "http://localhost:9",
      forcePathStyle: true,
    }],
    ["s3://bkt.s3.us-west-002.backblazeb2.com/db", {
      bucket: "bkt",
      path: "db",
      region: "us-west-002",
      endpoint: "https://s3.us-west-002.backblazeb2.com",
      forcePathStyle: true,
    }],
    ["s3://bkt.s3.filebase.com/db", {
      bucket: "bkt",
      path: "db",
      endpoint: "https://s3.filebase.com",
      forcePathStyle: true,
    }],
    ["s3://bkt.nyc3.digitaloceanspaces.com:8443/db", {
      bucket: "bkt",
      path: "db",
      region: "nyc3",
      endpoint: "https://nyc3.digitaloceanspaces.com:8443",
      forcePathStyle: true,
    }],
    ["s3://bkt.s3.fr-par.scw.cloud/db", {
      bucket: "bkt",
      path: "db",
      region: "fr-par",
      endpoint: "https://s3.fr-par.scw.cloud",
      forcePathStyle: true,
    }],
    ["s3://bkt.us-east-1.linodeobjects.com/db", {
      bucket: "bkt",
      path: "db",
      region: "us-east-1",
      endpoint: "https://us-east-1.linodeobjects.com",
      forcePathStyle: true,
    }],
  ];
  for (const [url, want] of cases) assert.deepEqual(parseS3Url(url), want, url);
});

Deno.test("parseS3Url() rejects malformed URLs with an error naming the URL", () => {
  const cases: [string, ErrorConstructor][] = [
    ["file:///tmp/x", SyntaxError],
    ["mybkt/db", SyntaxError],
    ["s3:/mybkt/db", SyntaxError],
    ["s3:///db", RangeError],
    ["s3://localhost:9000/db", RangeError], // provider host without a bucket
    ["s3://s3.filebase.com/db", RangeError],
    ["s3://mybkt/%zz", SyntaxError],
  ];
  for (const [url, type] of cases) {
    assert.throws(() => parseS3Url(url), (err: Error) => {
      assert.ok(err instanceof type, `${url}: ${err.name}`);
      assert.ok(err.message.includes(`"${url}"`), `${url}: message names the URL: ${err.message}`);
      return true;
    });
  }
});

Deno.test("S3ReplicaClient derives location, path and path style from its options", async () => {
  const a = new S3ReplicaClient({
    bucket: "b",
    path: "/x//y/",
    accessKeyId: "AKIA1",
    secretAccessKey: "s",
  });
  assert.equal(a.type, "s3");
  assert.equal(a.path, "x/y");
  assert.equal(a.location, "s3://b/x/y");
  assert.equal(a.forcePathStyle, false);
  assert.equal(a.skipVerify, false);
  const b = new S3ReplicaClient({
    bucket: "b",
    endpoint: "http://127.0.0.1:9",
    accessKeyId: "k",
    secretAccessKey: "s",
  });
  assert.equal(b.location, "s3://b");
  assert.equal(b.forcePathStyle, true);
  const c = new S3ReplicaClient({
    bucket: "b",
    endpoint: "http://h",
    forcePathStyle: false,
    accessKeyId: "k",
  });
  assert.equal(c.forcePathStyle, false);
  assert.throws(() => new S3ReplicaClient({ bucket: "" }), RangeError);
  await assert.rejects(collect(a.snapshots("nothex")), RangeError);
  await assert.rejects(a.deleteGeneration(""), RangeError);
});

Deno.test("applyLitestreamEnv() copies LITESTREAM_* keys only to unset AWS_* variables", () => {
  const names = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "LITESTREAM_ACCESS_KEY_ID",
    "LITESTREAM_SECRET_ACCESS_KEY",
  ];
  using _env = saveEnv(names);
  Deno.env.set("LITESTREAM_ACCESS_KEY_ID", "ls-id");
  Deno.env.set("LITESTREAM_SECRET_ACCESS_KEY", "ls-secret");
  Deno.env.set("AWS_SECRET_ACCESS_KEY", "aws-secret");
  applyLitestreamEnv();
  assert.equal(Deno.env.get("AWS_ACCESS_KEY_ID"), "ls-id");
  assert.equal(Deno.env.get("AWS_SECRET_ACCESS_KEY"), "aws-secret");
});

Deno.test("describeS3Error() turns SDK and network errors into short reasons", () => {
  const ctx = { bucket: "bkt", endpoint: "http://127.0.0.1:9000" };
  const cases: [unknown, string | RegExp][] = [
    [{ name: "NoSuchBucket", $metadata: { httpStatusCode: 404 } }, 'bucket "bkt" does not exist'],
    [
      { name: "InvalidAccessKeyId" },
      "the access key ID is not known to the server (check the credentials)",
    ],
    [
      { name: "AccessDenied", $metadata: { httpStatusCode: 403 } },
      /^access denied to bucket "bkt"/,
    ],
    [
      { name: "Error", code: "ECONNREFUSED", address: "127.0.0.1", port: 9 },
      "cannot connect to 127.0.0.1:9: connection refused",
    ],
    [
      { name: "Error", code: "ENOTFOUND", hostname: "nope.invalid" },
      "cannot resolve host nope.invalid",
    ],
    [
      { name: "Error", code: "DEPTH_ZERO_SELF_SIGNED_CERT" },
      /127\.0\.0\.1:9000 is not trusted .*skip-verify/,
    ],
    [
      { name: "InternalError", message: "boom", $metadata: { httpStatusCode: 500 } },
      "server error 500 InternalError: boom",
    ],
    [{ name: "PermanentRedirect", $metadata: { httpStatusCode: 301 } }, /is in another region/],
    [new Error("first line\nsecond line"), "first line"],
  ];
  for (const [err, want] of cases) {
    const got = describeS3Error(err, ctx);
    if (want instanceof RegExp) assert.match(got, want);
    else assert.equal(got, want);
  }
});

/** Sets env variables for a test and restores them on dispose. */
function saveEnv(names: string[]): Disposable {
  const saved = new Map(names.map((n) => [n, Deno.env.get(n)]));
  for (const n of names) Deno.env.delete(n);
  return {
    [Symbol.dispose]() {
      for (const [n, v] of saved) v === undefined ? Deno.env.delete(n) : Deno.env.set(n, v);
    },
  };
}

/** Asserts `err` reads as one line starting with `prefix` and holds no secret anywhere. */
function assertOneLineError(err: unknown, want: RegExp, secrets: string[]): void {
  assert.ok(err instanceof Error, `an Error: ${err}`);
  const line = describeError(err);
  assert.ok(!line.includes("\n"), `one line: ${line}`);
  assert.match(err.message, want);
  const everything = `${line}\n${Deno.inspect(err, { depth: Infinity, showHidden: true })}`;
  for (const s of secrets) assert.ok(!everything.includes(s), `no credential in ${everything}`);
}

Deno.test("S3ReplicaClient reports an unreachable endpoint in one line", async () => {
  const port = closedPort();
  await using client = new S3ReplicaClient({
    bucket: "bkt",
    path: "db",
    endpoint: `http://127.0.0.1:${port}`,
    accessKeyId: "AKIAUNREACHABLE1",
    secretAccessKey: "unreachable-secret-1",
  });
  const err = await client.generations().catch((e) => e);
  assertOneLineError(
    err,
    new RegExp(
      `^Cannot list generations in "s3://bkt/db": cannot connect to 127\\.0\\.0\\.1:${port}: connection refused$`,
    ),
    ["AKIAUNREACHABLE1", "unreachable-secret-1"],
  );
});

/**
 * S3-only steps, run after the contract steps on the same server: error translation,
 * retries, DeleteObjects batching, multipart abort, credentials, URLs and region lookup.
 */
async function runS3Steps(t: Deno.TestContext, env: S3Env): Promise<void> {
  const { server, proxy } = env;
  const secrets = [server.accessKeyId, server.secretAccessKey];
  const requestsSince = (n: number) => proxy.requests.slice(n);

  await t.step("a missing bucket gives one line naming the bucket", async () => {
    await using client = new S3ReplicaClient({
      ...env.options("db"),
      bucket: "no-such-bucket",
    });
    const err = await client.generations().catch((e) => e);
    assertOneLineError(
      err,
      /^Cannot list generations in "s3:\/\/no-such-bucket\/db": bucket "no-such-bucket" does not exist$/,
      secrets,
    );
    const werr = await client.writeSnapshot({ generation: GEN_A, index: 0 }, testBytes(5))
      .catch((e) => e);
    assertOneLineError(
      werr,
      /^Cannot write snapshot ".*00000000\.snapshot\.lz4" in .*: bucket "no-such-bucket" does not exist$/,
      secrets,
    );
  });

  await t.step({
    name: "wrong credentials give one line without the secret",
    ignore: !server.checksCredentials,
    async fn() {
      const wrongSecret = "Wrong-Secret-0123456789";
      await using badSecret = new S3ReplicaClient({
        ...env.options("db"),
        secretAccessKey: wrongSecret,
      });
      const err = await badSecret.generations().catch((e) => e);
      assertOneLineError(
        err,
        /^Cannot list generations in "s3:\/\/litestream-test\/db": the server rejected the request signature \(check the secret access key\)$/,
        [...secrets, wrongSecret],
      );
      const wrongId = "AKIAWRONGWRONGWRONG1";
      await using badId = new S3ReplicaClient({ ...env.options("db"), accessKeyId: wrongId });
      const err2 = await badId.writeWalSegment(
        { generation: GEN_A, index: 0, offset: 0 },
        testBytes(4),
      ).catch((e) => e);
      assertOneLineError(
        err2,
        /: the access key ID is not known to the server \(check the credentials\)$/,
        [
          ...secrets,
          wrongId,
        ],
      );
    },
  });

  await t.step({
    name: "LITESTREAM_* credentials are used when AWS_* are unset",
    ignore: !server.checksCredentials,
    async fn() {
      using _env = saveEnv([
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "LITESTREAM_ACCESS_KEY_ID",
        "LITESTREAM_SECRET_ACCESS_KEY",
      ]);
      const { accessKeyId: _a, secretAccessKey: _s, ...noKeys } = env.options(randomName());
      Deno.env.set("LITESTREAM_ACCESS_KEY_ID", server.accessKeyId);
      Deno.env.set("LITESTREAM_SECRET_ACCESS_KEY", server.secretAccessKey);
      await using good = new S3ReplicaClient(noKeys);
      await good.writeSnapshot({ generation: GEN_A, index: 0 }, testBytes(3));
      assert.deepEqual(await good.generations(), [GEN_A]);

      // AWS_* win over LITESTREAM_*: a wrong AWS secret is what gets used.
      Deno.env.set("AWS_ACCESS_KEY_ID", server.accessKeyId);
      Deno.env.set("AWS_SECRET_ACCESS_KEY", "Wrong-Aws-Secret-0123");
      await using bad = new S3ReplicaClient(noKeys);
      assertOneLineError(await bad.generations().catch((e) => e), /request signature/, [
        ...secrets,
        "Wrong-Aws-Secret-0123",
      ]);
    },
  });

  await t.step("DeleteObjects goes in quiet batches of at most 1000 keys", async () => {
    await using client = new S3ReplicaClient(env.options(randomName()));
    const positions = Array.from(
      { length: 2500 },
      (_, i): Pos => ({ generation: GEN_A, index: 0, offset: i }),
    );
    const n = proxy.requests.length;
    await client.deleteWalSegments(positions);
    const deletes = requestsSince(n).filter((r) => r.deleteKeys !== undefined);
    assert.deepEqual(deletes.map((r) => r.deleteKeys), [MAX_DELETE_KEYS, MAX_DELETE_KEYS, 500]);
    assert.ok(deletes.every((r) => r.deleteQuiet && r.status === 200));
  });

  await t.step("5xx, throttling and connection resets are retried", async () => {
    await using client = new S3ReplicaClient(env.options(randomName()));
    let n = proxy.requests.length;
    proxy.inject({ kind: "status", status: 503, code: "SlowDown" }, 1, "PUT");
    proxy.inject({ kind: "reset" }, 1, "PUT");
    await client.writeSnapshot({ generation: GEN_A, index: 0 }, testBytes(1000));
    assert.deepEqual(requestsSince(n).map((r) => [r.method, r.status]), [["PUT", 503], [
      "PUT",
      -1,
    ], ["PUT", 200]]);

    n = proxy.requests.length;
    proxy.inject({ kind: "status", status: 500, code: "InternalError" }, 1, "GET");
    proxy.inject({ kind: "reset" }, 1, "GET");
    assert.deepEqual(
      await readAll(await client.openSnapshot({ generation: GEN_A, index: 0 })),
      testBytes(1000),
    );
    assert.deepEqual(await client.generations(), [GEN_A]);
    assert.equal(requestsSince(n).filter((r) => r.status !== 200).length, 2);

    // A multipart upload whose parts fail once still stores the right bytes.
    const data = testBytes(11 * MIB, 5);
    proxy.inject({ kind: "reset" }, 1, "PUT");
    proxy.inject({ kind: "status", status: 503, code: "SlowDown" }, 1, "PUT");
    n = proxy.requests.length;
    await client.writeSnapshot({ generation: GEN_A, index: 1 }, streamOf(data));
    const calls = requestsSince(n).filter((r) => r.status === 200).map((r) =>
      `${r.method} ${
        r.url.replace(/^[^?]*/, "").replace(/uploadId=[^&]*/, "uploadId=*").replace(
          /&x-id=[^&]*/,
          "",
        )
      }`
    );
    assert.deepEqual(calls.sort(), [
      "POST ?uploadId=*", // CompleteMultipartUpload
      "POST ?uploads=", // CreateMultipartUpload
      "PUT ?partNumber=1&uploadId=*",
      "PUT ?partNumber=2&uploadId=*",
      "PUT ?partNumber=3&uploadId=*",
    ]);
    const back = await readAll(await client.openSnapshot({ generation: GEN_A, index: 1 }));
    assert.ok(back.length === data.length && back.every((b, i) => b === data[i]));
  });

  await t.step("an aborted multipart upload is aborted on the server too", async () => {
    await using client = new S3ReplicaClient(env.options(randomName()));
    const { promise: stalled, resolve: stall } = Promise.withResolvers<void>();
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (sent < 7 * MIB) {
          controller.enqueue(testBytes(MIB, sent));
          sent += MIB;
          return;
        }
        stall();
        await new Promise(() => {}); // never ends; cancel() releases it
      },
    }, { highWaterMark: 0 });
    const n = proxy.requests.length;
    const controller = new AbortController();
    const writing = client.writeSnapshot({ generation: GEN_A, index: 2 }, body, {
      signal: controller.signal,
    });
    await stalled;
    // Wait for part 1 to be stored, so a multipart upload exists to abort.
    while (!requestsSince(n).some((r) => /partNumber=1/.test(r.url) && r.status === 200)) {
      await new Promise((r) => setTimeout(r, 20));
    }
    const reason = new Error("stop the upload");
    controller.abort(reason);
    await assert.rejects(writing, (err) => err === reason);
    // lib-storage sends AbortMultipartUpload in the background; give it a moment.
    for (let i = 0; i < 50; i++) {
      if (requestsSince(n).some((r) => r.method === "DELETE")) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.ok(
      requestsSince(n).some((r) => r.method === "DELETE" && /uploadId=/.test(r.url)),
      "AbortMultipartUpload was sent",
    );
    await assert.rejects(
      client.openSnapshot({ generation: GEN_A, index: 2 }),
      Deno.errors.NotFound,
    );
  });

  await t.step("a server error that persists gives one line after 5 attempts", async () => {
    await using client = new S3ReplicaClient(env.options("persist"));
    const n = proxy.requests.length;
    proxy.inject({ kind: "status", status: 500, code: "InternalError" }, 5, "GET");
    const err = await client.openSnapshot({ generation: GEN_A, index: 7 }).catch((e) => e);
    assertOneLineError(
      err,
      /^Cannot open snapshot "generations\/0123456789abcdef\/snapshots\/00000007\.snapshot\.lz4" in "s3:\/\/litestream-test\/persist": server error 500 InternalError: /,
      secrets,
    );
    assert.equal(requestsSince(n).length, 5);
  });

  await t.step("a BUCKET.localhost:PORT URL reaches the server", async () => {
    const { port } = new URL(proxy.endpoint);
    const url = `s3://${server.bucket}.localhost:${port}/${randomName()}/db`;
    await using client = new S3ReplicaClient({
      ...parseS3Url(url),
      accessKeyId: server.accessKeyId,
      secretAccessKey: server.secretAccessKey,
    });
    await client.writeSnapshot({ generation: GEN_B, index: 0 }, testBytes(9));
    assert.deepEqual(await client.generations(), [GEN_B]);
  });

  await t.step({
    name: "the region is looked up when neither region nor endpoint is set",
    ignore: server.otherRegionBucket === undefined,
    async fn() {
      const other = server.otherRegionBucket!;
      // No endpoint option: the SDK's own AWS_ENDPOINT_URL_S3 points it at the proxy.
      using _env = saveEnv(["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION"]);
      Deno.env.set("AWS_ENDPOINT_URL_S3", proxy.endpoint);
      await using client = new S3ReplicaClient({
        bucket: other.name,
        path: randomName(),
        forcePathStyle: true,
        accessKeyId: server.accessKeyId,
        secretAccessKey: server.secretAccessKey,
      });
      const n = proxy.requests.length;
      await client.writeSnapshot({ generation: GEN_C, index: 0 }, testBytes(9));
      assert.deepEqual(await client.generations(), [GEN_C]);
      const [lookup, ...rest] = requestsSince(n);
      assert.match(lookup.url, new RegExp(`^/${other.name}/?\\?location`));
      assert.equal(lookup.signedRegion, "us-east-1");
      assert.ok(rest.length >= 2 && rest.every((r) => r.signedRegion === other.region));
    },
  });
}

Deno.test({
  name: "S3ReplicaClient checks TLS certificates unless skipVerify is set",
  ignore: skipUnavailable("s3-moto (https)", await s3ServerUnavailable("moto")),
  async fn() {
    await using server = await startS3Server("moto", { tls: true });
    const options = server.clientOptions(randomName());
    await using strict = new S3ReplicaClient(options);
    assertOneLineError(
      await strict.generations().catch((e) => e),
      /^Cannot list generations in "s3:\/\/litestream-test\/t.*": the TLS certificate of 127\.0\.0\.1:\d+ is not trusted/,
      [server.accessKeyId, server.secretAccessKey],
    );
    await using lax = new S3ReplicaClient({ ...options, skipVerify: true });
    await lax.writeSnapshot({ generation: GEN_A, index: 0 }, testBytes(9));
    assert.deepEqual(await lax.generations(), [GEN_A]);
  },
});
