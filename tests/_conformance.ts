/**
 * The conformance suite every {@linkcode ReplicaClient} kind runs: a test file opens one
 * environment of its kind ({@linkcode KindEnv}) and calls {@linkcode runConformance}, which
 * runs each case as a step under a fresh random root.
 *
 * @module
 */
import assert from "node:assert/strict";
import { FileReplicaClient } from "../src/clients/file.ts";
import type { Pos } from "../src/pos.ts";
import {
  collect,
  readAll,
  type ReplicaClient,
  sortedSnapshots,
  sortedWalSegments,
} from "../src/replica_client.ts";

export const GEN_A = "0123456789abcdef";
export const GEN_B = "fedcba9876543210";
export const GEN_C = "00000000000000aa";
export const MIB = 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Fixtures

/** Where a suite step runs: a fresh client of one kind, under its own random root. */
export interface ClientFixture extends AsyncDisposable {
  readonly kind: string;
  readonly client: ReplicaClient;
  /** A client of the same kind rooted at `sub`, a sub-path of this client's root. */
  clientAt(sub: string): ReplicaClient;
}

/** One kind's shared environment (temp dir, or S3 server plus proxy), for one test. */
export interface KindEnv extends AsyncDisposable {
  newFixture(): Promise<ClientFixture>;
}

export function randomName(): string {
  return `t${crypto.randomUUID().slice(0, 8)}`;
}

export async function openFileEnv(): Promise<KindEnv> {
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

/** Bytes that are not all alike (a cheap xorshift fill), so mix-ups show. */
export function testBytes(n: number, seed = 1): Uint8Array {
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
export function streamOf(bytes: Uint8Array, chunk = 64 * 1024): ReadableStream<Uint8Array> {
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

export function assertRecent(date: Date, what: string): void {
  assert.ok(date instanceof Date, `${what} is a Date`);
  const skewMs = Math.abs(Date.now() - date.getTime());
  assert.ok(skewMs < 120_000, `${what} ${date.toISOString()} is within 2 minutes of now`);
}

/** Runs `fn` on `items` with at most `limit` at once. */
export async function eachLimit<T>(items: T[], limit: number, fn: (x: T) => Promise<void>) {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

// ---------------------------------------------------------------------------------------
// The conformance suite: [name, body] pairs, run as steps for every kind.

export type Case = [name: string, fn: (fx: ClientFixture) => Promise<void>];

export const SUITE: Case[] = [
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

/** Runs every case of {@linkcode SUITE} as a step of `t`, each on a fresh fixture of `env`. */
export async function runConformance(t: Deno.TestContext, env: KindEnv): Promise<void> {
  for (const [name, fn] of SUITE) {
    await t.step(name, async () => {
      await using fx = await env.newFixture();
      await fn(fx);
    });
  }
}
