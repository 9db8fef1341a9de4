/**
 * One conformance suite for every {@linkcode ReplicaClient} kind: `file` (a temp dir) and
 * `s3-moto`, `s3-fauxqs` (real S3 servers on 127.0.0.1, reached through a recording proxy
 * that enforces S3's 1000-key DeleteObjects limit). Each kind is one test whose steps share
 * one server (started once per kind); every step works under a fresh random prefix. S3
 * kinds then run S3-only steps on the same server (error translation, retries, batching,
 * credentials, URLs, region lookup), and a few S3 tests need no server or their own (TLS).
 */
import assert from "node:assert/strict";
import { FileReplicaClient } from "../src/clients/file.ts";
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
import {
  collect,
  readAll,
  type ReplicaClient,
  sortedSnapshots,
  sortedWalSegments,
} from "../src/replica_client.ts";
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

const GEN_A = "0123456789abcdef";
const GEN_B = "fedcba9876543210";
const GEN_C = "00000000000000aa";
const MIB = 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Fixtures

/** Where a suite step runs: a fresh client of one kind, under its own random root. */
interface ClientFixture extends AsyncDisposable {
  readonly kind: string;
  readonly client: ReplicaClient;
  /** A client of the same kind rooted at `sub`, a sub-path of this client's root. */
  clientAt(sub: string): ReplicaClient;
}

/** One kind's shared environment (temp dir, or S3 server plus proxy), for one test. */
interface KindEnv extends AsyncDisposable {
  newFixture(): Promise<ClientFixture>;
}

function randomName(): string {
  return `t${crypto.randomUUID().slice(0, 8)}`;
}

async function openFileEnv(): Promise<KindEnv> {
  const dir = await Deno.makeTempDir({ prefix: "replica_client_test_" });
  return {
    newFixture() {
      const root = `${dir}/${randomName()}`;
      const client = new FileReplicaClient(root);
      return Promise.resolve({
        kind: "file",
        client,
        clientAt: (sub: string) => new FileReplicaClient(`${root}/${sub}`),
        [Symbol.asyncDispose]: () => Promise.resolve(),
      });
    },
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}

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

/** Bytes that are not all alike (a cheap xorshift fill), so mix-ups show. */
function testBytes(n: number, seed = 1): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed * 2654435761 >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** A stream of `bytes` in `chunk`-sized pieces, produced on demand. */
function streamOf(bytes: Uint8Array, chunk = 64 * 1024): ReadableStream<Uint8Array> {
  let at = 0;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (at >= bytes.length) {
        controller.close();
        return;
      }
      controller.enqueue(bytes.slice(at, at + chunk));
      at += chunk;
    },
  }, { highWaterMark: 0 });
}

function assertRecent(date: Date, what: string): void {
  assert.ok(date instanceof Date, `${what} is a Date`);
  const skewMs = Math.abs(Date.now() - date.getTime());
  assert.ok(skewMs < 120_000, `${what} ${date.toISOString()} is within 2 minutes of now`);
}

/** Runs `fn` on `items` with at most `limit` at once. */
async function eachLimit<T>(items: T[], limit: number, fn: (x: T) => Promise<void>) {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

// ---------------------------------------------------------------------------------------
// The conformance suite: [name, body] pairs, run as steps for every kind.

type Case = [name: string, fn: (fx: ClientFixture) => Promise<void>];

const SUITE: Case[] = [
  ["generations() returns nothing for an empty replica", async ({ client }) => {
    assert.deepEqual(await client.generations(), []);
    assert.deepEqual(await collect(client.snapshots(GEN_A)), []);
    assert.deepEqual(await collect(client.walSegments(GEN_A)), []);
  }],

  ["generations() lists generations sorted and ignores other names", async (fx) => {
    const { client } = fx;
    await client.writeWalSegment({ generation: GEN_B, index: 0, offset: 0 }, testBytes(10));
    await client.writeSnapshot({ generation: GEN_A, index: 0 }, testBytes(10));
    await client.writeSnapshot({ generation: GEN_C, index: 3 }, testBytes(10));
    // Directories under generations/ whose names are not 16 lowercase hex digits.
    for (const bad of ["0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0", "notagen"]) {
      await fx.clientAt(`generations/${bad}`).writeSnapshot(
        { generation: GEN_A, index: 0 },
        testBytes(5),
      );
    }
    assert.deepEqual(await client.generations(), [GEN_C, GEN_A, GEN_B]);
  }],

  ["writeSnapshot() stores a Uint8Array that openSnapshot() and snapshots() return", async (fx) => {
    const { client } = fx;
    const data = testBytes(100_000, 7);
    const info = await client.writeSnapshot({ generation: GEN_A, index: 0x1f }, data);
    assert.equal(info.generation, GEN_A);
    assert.equal(info.index, 0x1f);
    assert.equal(info.size, data.length);
    assertRecent(info.createdAt, "writeSnapshot().createdAt");

    assert.deepEqual(
      await readAll(await client.openSnapshot({ generation: GEN_A, index: 0x1f })),
      data,
    );
    const [listed, ...rest] = await collect(client.snapshots(GEN_A));
    assert.equal(rest.length, 0);
    assert.equal(listed.generation, GEN_A);
    assert.equal(listed.index, 0x1f);
    assert.equal(listed.size, data.length);
    assertRecent(listed.createdAt, "snapshots().createdAt");
  }],

  ["writeSnapshot() stores a multi-MiB ReadableStream (multipart on S3)", async ({ client }) => {
    const data = testBytes(12 * MIB + 12_345, 3);
    const info = await client.writeSnapshot({ generation: GEN_A, index: 1 }, streamOf(data));
    assert.equal(info.size, data.length);
    const back = await readAll(await client.openSnapshot({ generation: GEN_A, index: 1 }));
    assert.equal(back.length, data.length);
    assert.ok(back.every((b, i) => b === data[i]), "bytes read back equal bytes written");
    assert.deepEqual((await collect(client.snapshots(GEN_A))).map((s) => s.size), [data.length]);
  }],

  ["writeSnapshot() stores a small stream and an empty body", async ({ client }) => {
    const small = testBytes(1000, 9);
    assert.equal(
      (await client.writeSnapshot({ generation: GEN_A, index: 2 }, streamOf(small, 100))).size,
      1000,
    );
    assert.equal(
      (await client.writeSnapshot({ generation: GEN_A, index: 3 }, new Uint8Array())).size,
      0,
    );
    assert.equal(
      (await client.writeSnapshot({ generation: GEN_A, index: 4 }, streamOf(new Uint8Array())))
        .size,
      0,
    );
    assert.deepEqual(
      await readAll(await client.openSnapshot({ generation: GEN_A, index: 2 })),
      small,
    );
    assert.equal(
      (await readAll(await client.openSnapshot({ generation: GEN_A, index: 3 }))).length,
      0,
    );
    assert.deepEqual(
      (await sortedSnapshots(client, GEN_A)).map((s) => [s.index, s.size]),
      [[2, 1000], [3, 0], [4, 0]],
    );
  }],

  ["writeSnapshot() overwrites an existing snapshot", async ({ client }) => {
    await client.writeSnapshot({ generation: GEN_A, index: 5 }, testBytes(50, 1));
    await client.writeSnapshot({ generation: GEN_A, index: 5 }, testBytes(70, 2));
    assert.deepEqual(
      await readAll(await client.openSnapshot({ generation: GEN_A, index: 5 })),
      testBytes(70, 2),
    );
  }],

  [
    "writeWalSegment() stores segments that walSegments() lists and openWalSegment() reads",
    async ({ client }) => {
      const positions: Pos[] = [
        { generation: GEN_A, index: 0, offset: 0 },
        { generation: GEN_A, index: 0, offset: 4152 },
        { generation: GEN_A, index: 1, offset: 32 },
        { generation: GEN_A, index: 0x7fffffff, offset: 0x1_0000_0020 }, // > 4 GiB: 9 hex digits
      ];
      for (const [i, pos] of positions.entries()) {
        const body = i % 2 ? streamOf(testBytes(1000 + i, i)) : testBytes(1000 + i, i);
        const info = await client.writeWalSegment(pos, body);
        assert.deepEqual({ ...info, createdAt: undefined }, {
          ...pos,
          size: 1000 + i,
          createdAt: undefined,
        });
        assertRecent(info.createdAt, "writeWalSegment().createdAt");
      }
      await client.writeWalSegment({ generation: GEN_B, index: 9, offset: 0 }, testBytes(3));

      const listed = await sortedWalSegments(client, GEN_A);
      assert.deepEqual(
        listed.map(({ generation, index, offset, size }) => ({ generation, index, offset, size })),
        positions.map((p, i) => ({ ...p, size: 1000 + i })),
      );
      for (const s of listed) assertRecent(s.createdAt, "walSegments().createdAt");
      for (const [i, pos] of positions.entries()) {
        assert.deepEqual(await readAll(await client.openWalSegment(pos)), testBytes(1000 + i, i));
      }
    },
  ],

  ["openSnapshot() and openWalSegment() throw NotFound for missing objects", async ({ client }) => {
    await assert.rejects(
      client.openSnapshot({ generation: GEN_A, index: 0 }),
      Deno.errors.NotFound,
    );
    await assert.rejects(
      client.openWalSegment({ generation: GEN_A, index: 0, offset: 0 }),
      Deno.errors.NotFound,
    );
    await client.writeSnapshot({ generation: GEN_A, index: 1 }, testBytes(1));
    await client.writeWalSegment({ generation: GEN_A, index: 1, offset: 0 }, testBytes(1));
    const err = await client.openSnapshot({ generation: GEN_A, index: 2 }).catch((e) => e);
    assert.ok(err instanceof Deno.errors.NotFound);
    assert.match(err.message, /00000002\.snapshot\.lz4/, "the message names the missing key");
    await assert.rejects(
      client.openWalSegment({ generation: GEN_A, index: 1, offset: 8 }),
      Deno.errors.NotFound,
    );
  }],

  ["deleteSnapshot() removes one snapshot; a missing one is not an error", async ({ client }) => {
    await client.writeSnapshot({ generation: GEN_A, index: 1 }, testBytes(10));
    await client.writeSnapshot({ generation: GEN_A, index: 2 }, testBytes(20));
    await client.deleteSnapshot({ generation: GEN_A, index: 1 });
    await client.deleteSnapshot({ generation: GEN_A, index: 1 });
    await client.deleteSnapshot({ generation: GEN_B, index: 7 });
    assert.deepEqual((await collect(client.snapshots(GEN_A))).map((s) => s.index), [2]);
    await assert.rejects(
      client.openSnapshot({ generation: GEN_A, index: 1 }),
      Deno.errors.NotFound,
    );
  }],

  [
    "deleteWalSegments() removes the given segments only; missing ones are not an error",
    async ({ client }) => {
      const pos = (index: number, offset: number): Pos => ({ generation: GEN_A, index, offset });
      for (const p of [pos(0, 0), pos(0, 100), pos(1, 0)]) {
        await client.writeWalSegment(
          p,
          testBytes(5),
        );
      }
      await client.deleteWalSegments([pos(0, 0), pos(1, 0), pos(5, 5)]);
      await client.deleteWalSegments([]);
      assert.deepEqual((await sortedWalSegments(client, GEN_A)).map((s) => [s.index, s.offset]), [[
        0,
        100,
      ]]);
    },
  ],

  [
    "deleteGeneration() removes a generation's snapshots and WAL, and nothing else",
    async ({ client }) => {
      await client.writeSnapshot({ generation: GEN_A, index: 0 }, testBytes(10));
      await client.writeWalSegment({ generation: GEN_A, index: 0, offset: 0 }, testBytes(10));
      await client.writeSnapshot({ generation: GEN_B, index: 0 }, testBytes(10));
      await client.deleteGeneration(GEN_A);
      await client.deleteGeneration(GEN_C); // never existed
      assert.deepEqual(await client.generations(), [GEN_B]);
      assert.deepEqual(await collect(client.snapshots(GEN_A)), []);
      assert.deepEqual(await collect(client.walSegments(GEN_A)), []);
      assert.equal((await collect(client.snapshots(GEN_B))).length, 1);
    },
  ],

  [
    "walSegments() pages past 1000 objects; deletes of more than 1000 succeed",
    async ({ client }) => {
      const positions = Array.from({ length: 1005 }, (_, i): Pos => ({
        generation: GEN_A,
        index: Math.floor(i / 100),
        offset: (i % 100) * 4096,
      }));
      await eachLimit(positions, 16, async (p) => {
        await client.writeWalSegment(p, testBytes(8, p.offset + p.index));
      });
      await client.writeSnapshot({ generation: GEN_A, index: 0 }, testBytes(8));

      const listed = await sortedWalSegments(client, GEN_A);
      assert.equal(listed.length, 1005);
      assert.deepEqual(
        listed.map(({ index, offset }) => ({ generation: GEN_A, index, offset })),
        positions,
      );

      await client.deleteWalSegments(positions.slice(0, 2));
      assert.equal((await collect(client.walSegments(GEN_A))).length, 1003);
      await client.deleteGeneration(GEN_A); // 1004 objects
      assert.deepEqual(await client.generations(), []);
      assert.deepEqual(await collect(client.walSegments(GEN_A)), []);

      await eachLimit(positions, 16, async (p) => {
        await client.writeWalSegment({ ...p, generation: GEN_B }, testBytes(4));
      });
      await client.deleteWalSegments(positions.map((p) => ({ ...p, generation: GEN_B })));
      assert.deepEqual(await collect(client.walSegments(GEN_B)), []);
    },
  ],

  ["calls with an aborted signal reject with the signal's reason", async ({ client }) => {
    await client.writeSnapshot({ generation: GEN_A, index: 0 }, testBytes(10));
    const reason = new Error("stop now");
    const signal = AbortSignal.abort(reason);
    const calls: [string, () => Promise<unknown>][] = [
      ["generations", () => client.generations({ signal })],
      ["snapshots", () => collect(client.snapshots(GEN_A, { signal }))],
      ["walSegments", () => collect(client.walSegments(GEN_A, { signal }))],
      [
        "writeSnapshot",
        () => client.writeSnapshot({ generation: GEN_A, index: 1 }, testBytes(1), { signal }),
      ],
      [
        "writeWalSegment",
        () =>
          client.writeWalSegment({ generation: GEN_A, index: 0, offset: 0 }, testBytes(1), {
            signal,
          }),
      ],
      ["openSnapshot", () => client.openSnapshot({ generation: GEN_A, index: 0 }, { signal })],
      ["deleteSnapshot", () => client.deleteSnapshot({ generation: GEN_A, index: 0 }, { signal })],
      [
        "deleteWalSegments",
        () => client.deleteWalSegments([{ generation: GEN_A, index: 0, offset: 0 }], { signal }),
      ],
      ["deleteGeneration", () => client.deleteGeneration(GEN_A, { signal })],
    ];
    for (const [name, call] of calls) {
      await assert.rejects(call(), (err) => err === reason, `${name}() rejects with signal.reason`);
    }
    // Nothing was changed.
    assert.equal((await collect(client.snapshots(GEN_A))).length, 1);
  }],

  [
    "writeSnapshot() of a stalled stream rejects with the reason when aborted",
    async ({ client }) => {
      // A body that sends 1 MiB, then waits forever (until cancelled).
      let cancelled = false;
      let sent = false;
      const { promise: neverEnds, resolve: unblock } = Promise.withResolvers<void>();
      const body = new ReadableStream<Uint8Array>({
        async pull(controller) {
          if (!sent) {
            sent = true;
            controller.enqueue(testBytes(MIB));
            return;
          }
          await neverEnds;
          controller.close();
        },
        cancel() {
          cancelled = true;
          unblock();
        },
      }, { highWaterMark: 0 });
      const controller = new AbortController();
      const reason = new Error("abort the write");
      const writing = client.writeSnapshot({ generation: GEN_A, index: 1 }, body, {
        signal: controller.signal,
      });
      setTimeout(() => controller.abort(reason), 200);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const outcome = await Promise.race([
        writing.then(() => "resolved", (err) => err === reason ? "rejected with reason" : err),
        new Promise((resolve) =>
          timer = setTimeout(() => resolve("still pending after 5 s"), 5_000)
        ),
      ]);
      clearTimeout(timer);
      unblock(); // let a client that ignored the signal finish, so the test does not leak
      await writing.catch(() => {});
      assert.equal(outcome, "rejected with reason");
      assert.ok(cancelled, "the body stream was cancelled");
      await assert.rejects(
        client.openSnapshot({ generation: GEN_A, index: 1 }),
        Deno.errors.NotFound,
      );
    },
  ],
];

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
      for (const [name, fn] of SUITE) {
        await t.step(name, async () => {
          await using fx = await env.newFixture();
          await fn(fx);
        });
      }
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
