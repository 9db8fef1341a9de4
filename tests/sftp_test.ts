/**
 * SftpReplicaClient against a real OpenSSH sshd on 127.0.0.1 (tests/_sftp_server.ts): the
 * shared conformance suite, then SFTP's own rules (logins, one-line errors without the
 * password, reconnecting, the on-disk layout, v0.3.13 restoring what we wrote). Locally a
 * missing sshd skips with a notice; under CI=true it fails.
 *
 * @module
 */
import assert from "node:assert/strict";
import {
  parseSftpUrl,
  sftpOptionsFromConfig,
  SftpReplicaClient,
  type SftpReplicaClientOptions,
} from "../src/clients/sftp.ts";
import { describeError, findCause } from "../src/errors.ts";
import { parseSnapshotName, parseWalSegmentName } from "../src/layout.ts";
import { collect, readAll } from "../src/replica_client.ts";
import {
  type ClientFixture,
  GEN_A,
  type KindEnv,
  MIB,
  randomName,
  runConformance,
  testBytes,
} from "./_conformance.ts";
import { dump, integrity } from "./_helpers.ts";
import { litestreamBin, oracleSample } from "./_oracle.ts";
import {
  isCi,
  sftpServerUnavailable,
  type SftpTestServer,
  startSftpServer,
} from "./_sftp_server.ts";

/** The conformance environment: one sshd, each fixture under its own random directory. */
interface SftpEnv extends KindEnv {
  server: SftpTestServer;
  /** Options for a key login to `path` (absolute, or relative to the start directory). */
  options(path: string, extra?: Partial<SftpReplicaClientOptions>): SftpReplicaClientOptions;
  /** A client closed when the env is disposed. */
  client(path: string, extra?: Partial<SftpReplicaClientOptions>): SftpReplicaClient;
}

async function openSftpEnv(): Promise<SftpEnv> {
  const server = await startSftpServer();
  const all: SftpReplicaClient[] = [];
  const options = (path: string, extra: Partial<SftpReplicaClientOptions> = {}) => ({
    host: server.hostPort,
    user: server.user,
    keyPath: server.keyPath,
    path,
    ...extra,
  });
  const track = (c: SftpReplicaClient, list: SftpReplicaClient[]) => {
    list.push(c);
    return c;
  };
  return {
    server,
    options,
    client: (path, extra) => track(new SftpReplicaClient(options(path, extra)), all),
    newFixture(): Promise<ClientFixture> {
      const root = `${server.root}/${randomName()}/db`;
      const mine: SftpReplicaClient[] = [];
      const make = (path: string) => track(new SftpReplicaClient(options(path)), mine);
      return Promise.resolve({
        kind: "sftp",
        client: make(root),
        clientAt: (sub: string) => make(`${root}/${sub}`),
        async [Symbol.asyncDispose]() {
          for (const c of mine) await c.close();
        },
      });
    },
    async [Symbol.asyncDispose]() {
      for (const c of all) await c.close();
      await server.stop();
    },
  };
}

const unavailable = await sftpServerUnavailable();

/** Locally a missing sshd skips the tests with a notice; under CI=true they fail instead. */
function skipUnavailable(): boolean {
  if (unavailable === undefined || isCi()) return false;
  // deno-lint-ignore no-console
  console.warn(`sftp_test: skipping SFTP server tests: ${unavailable}`);
  return true;
}

Deno.test({
  name: "SftpReplicaClient conforms to the ReplicaClient contract and SFTP's rules",
  ignore: skipUnavailable(),
  async fn(t) {
    await using env = await openSftpEnv();
    await runConformance(t, env);
    await runSftpSteps(t, env);
  },
});

/** Every message of an error's cause chain, for checks that nothing leaks. */
function chainText(err: unknown): string {
  const parts: string[] = [];
  for (let e = err; e instanceof Error; e = e.cause) parts.push(`${e.message}\n${e.stack ?? ""}`);
  return parts.join("\n");
}

async function runSftpSteps(t: Deno.TestContext, env: SftpEnv): Promise<void> {
  const { server } = env;

  await t.step("logs in with a key and with a password, to the same files", async (t) => {
    const path = `${server.root}/${randomName()}`;
    const byKey = env.client(path);
    await byKey.writeSnapshot({ generation: GEN_A, index: 1 }, testBytes(3000, 4));
    const noPassword = server.password === undefined && !isCi();
    if (noPassword) {
      // deno-lint-ignore no-console
      console.warn(`sftp_test: skipping password login: ${server.passwordUnavailable}`);
    }
    await t.step({
      name: "password login",
      ignore: noPassword,
      async fn() {
        assert.ok(server.password, `no password login: ${server.passwordUnavailable}`);
        const byPassword = env.client(path, { keyPath: undefined, password: server.password });
        assert.deepEqual(await byPassword.generations(), [GEN_A]);
        assert.deepEqual(
          await readAll(await byPassword.openSnapshot({ generation: GEN_A, index: 1 })),
          testBytes(3000, 4),
        );
        // With both a key and a password configured, login works too.
        const both = env.client(path, { password: server.password });
        assert.deepEqual(await both.generations(), [GEN_A]);
      },
    });
  });

  await t.step(
    "a wrong password, a missing key file and a closed port fail with one line naming the replica",
    async () => {
      const secret = `pw-${crypto.randomUUID()}`;
      const closedPort = (() => {
        const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
        const { port } = l.addr as Deno.NetAddr;
        l.close();
        return port;
      })();
      const cases: [string, SftpReplicaClientOptions, RegExp][] = [
        [
          "wrong password",
          env.options(`${server.root}/x`, { keyPath: undefined, password: secret }),
          /cannot log in to 127\.0\.0\.1:\d+ as "[^"]+" with the configured password/,
        ],
        [
          "missing key file",
          env.options(`${server.root}/x`, {
            keyPath: `${server.root}/no-such-key`,
            password: secret,
          }),
          /cannot read key file ".*no-such-key": no such file/,
        ],
        [
          "closed port",
          { ...env.options("/x"), host: `127.0.0.1:${closedPort}`, password: secret },
          /cannot connect to 127\.0\.0\.1:\d+: connection refused/,
        ],
      ];
      // A port that accepts connections and never speaks SSH.
      using silent = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const held: Deno.Conn[] = [];
      const accepting = (async () => {
        for await (const conn of silent) held.push(conn);
      })().catch(() => {});
      cases.push(
        [
          "silent server",
          {
            ...env.options("/x"),
            host: `127.0.0.1:${(silent.addr as Deno.NetAddr).port}`,
            dialTimeoutMs: 300,
          },
          /the SSH handshake with 127\.0\.0\.1:\d+ timed out after 300 ms/,
        ],
        [
          "unparsable key file",
          env.options(`${server.root}/x`, { keyPath: `${server.keyPath}.pub` }),
          /cannot parse key file ".*\.pub": /,
        ],
      );
      for (const [what, options, reason] of cases) {
        const client = env.client(options.path!, options);
        const started = performance.now();
        const err = await client.generations().then(() => undefined, (e) => e);
        assert.ok(err instanceof Error, `${what}: generations() rejects`);
        const line = describeError(err);
        assert.ok(!line.includes("\n"), `${what}: one line: ${line}`);
        assert.ok(
          line.startsWith(`Cannot list generations in "${client.location}": `),
          `${what}: names the replica: ${line}`,
        );
        assert.match(line, reason, what);
        assert.ok(!chainText(err).includes(secret), `${what}: the password appears nowhere`);
        assert.ok(!client.location.includes(secret));
        assert.equal(findCause(err, Deno.errors.NotFound), undefined, `${what}: not a NotFound`);
        assert.ok(performance.now() - started < 10_000, `${what}: fails fast`);
        // The next call tries again (and fails the same way) rather than reusing a failure.
        await assert.rejects(client.snapshots(GEN_A)[Symbol.asyncIterator]().next(), (e) => {
          assert.match(describeError(e), reason);
          return true;
        });
      }
      silent.close();
      await accepting;
      for (const conn of held) conn.close();
    },
  );

  await t.step("listing a missing directory yields nothing, as for files", async () => {
    const client = env.client(`${server.root}/${randomName()}/not/made/yet`);
    assert.deepEqual(await client.generations(), []);
    assert.deepEqual(await collect(client.snapshots(GEN_A)), []);
    assert.deepEqual(await collect(client.walSegments(GEN_A)), []);
    await client.deleteGeneration(GEN_A);
    await client.deleteSnapshot({ generation: GEN_A, index: 0 });
    await client.deleteWalSegments([{ generation: GEN_A, index: 0, offset: 0 }]);
  });

  await t.step(
    "stores v0.3.13's layout under path, atomically, without .tmp leftovers",
    async () => {
      const dir = `${server.root}/${randomName()}`;
      const gen = `${dir}/generations/${GEN_A}`;
      // A leftover of an interrupted write, removed the first time the directory is written.
      await Deno.mkdir(`${gen}/snapshots`, { recursive: true });
      await Deno.writeFile(`${gen}/snapshots/00000007.snapshot.lz4.tmp`, testBytes(9));
      const client = env.client(dir);
      await client.writeSnapshot({ generation: GEN_A, index: 0x2a }, testBytes(5000, 1));
      await client.writeWalSegment({ generation: GEN_A, index: 0x2a, offset: 4152 }, testBytes(70));
      assert.deepEqual(
        await Deno.readFile(`${gen}/snapshots/0000002a.snapshot.lz4`),
        testBytes(5000, 1),
      );
      assert.deepEqual(await Deno.readFile(`${gen}/wal/0000002a_00001038.wal.lz4`), testBytes(70));
      const names = async (d: string) =>
        (await Array.fromAsync(Deno.readDir(d))).map((e) => e.name);
      assert.deepEqual(await names(`${gen}/snapshots`), ["0000002a.snapshot.lz4"]);
      assert.deepEqual(await names(`${gen}/wal`), ["0000002a_00001038.wal.lz4"]);
    },
  );

  await t.step("a relative path resolves against the session's start directory", async () => {
    const rel = `${randomName()}/db`;
    const client = env.client(rel);
    assert.equal(client.path, rel);
    assert.equal(client.location, `sftp://${server.user}@127.0.0.1:${server.port}/~/${rel}`);
    await client.writeSnapshot({ generation: GEN_A, index: 1 }, testBytes(10));
    assert.deepEqual(
      await Deno.readFile(
        `${server.root}/${rel}/generations/${GEN_A}/snapshots/00000001.snapshot.lz4`,
      ),
      testBytes(10),
    );
    const viaUrl = env.client(
      "",
      parseSftpUrl(`sftp://${server.user}@${server.hostPort}/~/${rel}`),
    );
    assert.deepEqual(await viaUrl.generations(), [GEN_A]);
  });

  await t.step("reconnects after the server drops the connection", async () => {
    const client = env.client(`${server.root}/${randomName()}`);
    // Larger than the read-ahead (1 MiB), so reads are still to be sent when it drops.
    const data = testBytes(3 * MIB, 2);
    await client.writeSnapshot({ generation: GEN_A, index: 1 }, data);
    // A read in progress when the connection drops fails with one line naming the replica.
    const reading = (await client.openSnapshot({ generation: GEN_A, index: 1 })).getReader();
    await reading.read();
    assert.ok(await server.dropConnections() >= 1, "killed the session's sshd process");
    const readError = await (async () => {
      while (!(await reading.read()).done);
    })().then(() => undefined, (err) => err);
    assert.match(
      describeError(readError),
      /^Cannot read snapshot "generations\/.*" in "sftp:\/\/.*": the connection to .* was lost/,
    );
    // The next calls open a new connection without the caller doing anything.
    assert.deepEqual(await client.generations(), [GEN_A]);
    assert.deepEqual(
      await readAll(await client.openSnapshot({ generation: GEN_A, index: 1 })),
      data,
    );
    await server.dropConnections();
    await client.writeWalSegment({ generation: GEN_A, index: 1, offset: 0 }, testBytes(10));
    assert.equal((await collect(client.walSegments(GEN_A))).length, 1);
  });

  await t.step("counts GET, PUT and DELETE operations like v0.3.13", async () => {
    const client = env.client(`${server.root}/${randomName()}`);
    await client.writeSnapshot({ generation: GEN_A, index: 1 }, testBytes(123));
    await client.writeWalSegment({ generation: GEN_A, index: 1, offset: 0 }, testBytes(7));
    await (await client.openSnapshot({ generation: GEN_A, index: 1 })).cancel();
    await client.deleteGeneration(GEN_A);
    assert.deepEqual(client.operations.total, { PUT: 2, GET: 1, DELETE: 2 });
    assert.deepEqual(client.operations.bytes, { PUT: 130 });
  });

  await t.step("Litestream v0.3.13 restores a replica this client wrote", async () => {
    const sample = await oracleSample();
    const path = `${server.root}/${randomName()}`;
    const client = env.client(path);
    for await (const gen of Deno.readDir(`${sample.replicaPath}/generations`)) {
      const base = `${sample.replicaPath}/generations/${gen.name}`;
      for await (const e of Deno.readDir(`${base}/snapshots`)) {
        const index = parseSnapshotName(e.name)!;
        const data = await Deno.readFile(`${base}/snapshots/${e.name}`);
        await client.writeSnapshot({ generation: gen.name, index }, data);
      }
      for await (const e of Deno.readDir(`${base}/wal`)) {
        const p = parseWalSegmentName(e.name)!;
        const data = await Deno.open(`${base}/wal/${e.name}`);
        await client.writeWalSegment({ generation: gen.name, ...p }, data.readable);
      }
    }
    const work = await Deno.makeTempDir({ prefix: "sftp-interop-" });
    try {
      await Deno.writeTextFile(
        `${work}/litestream.yml`,
        [
          "dbs:",
          `  - path: ${work}/app.db`,
          "    replicas:",
          "      - type: sftp",
          `        host: ${server.hostPort}`,
          `        user: ${server.user}`,
          `        key-path: ${server.keyPath}`,
          `        path: ${path}`,
          "",
        ].join("\n"),
      );
      const out = await new Deno.Command(await litestreamBin(), {
        args: [
          "restore",
          "-config",
          `${work}/litestream.yml`,
          "-o",
          `${work}/restored.db`,
          `${work}/app.db`,
        ],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      const log = new TextDecoder().decode(out.stderr);
      assert.ok(out.success, `v0.3.13 restore failed: ${log}`);
      assert.equal(await integrity(`${work}/restored.db`), "ok");
      assert.equal(await dump(`${work}/restored.db`), await dump(sample.dbPath));
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  });
}

// ---------------------------------------------------------------------------------------
// No server needed.

Deno.test("parseSftpUrl() reads v0.3.13's URL form", () => {
  const cases: [string, SftpReplicaClientOptions][] = [
    ["sftp://bob@db2.internal/srv/app", { host: "db2.internal", user: "bob", path: "/srv/app" }],
    ["sftp://bob@db2.internal:2222/srv/app/", {
      host: "db2.internal:2222",
      user: "bob",
      path: "/srv/app/",
    }],
    ["sftp://bob:s3cr%40t@10.0.0.5:22/x", {
      host: "10.0.0.5:22",
      user: "bob",
      password: "s3cr@t",
      path: "/x",
    }],
    ["sftp://bob@h", { host: "h", user: "bob", path: "" }],
    ["sftp://bob@h/", { host: "h", user: "bob", path: "/" }],
    ["sftp://bob@h/~/backups/app", { host: "h", user: "bob", path: "backups/app" }],
    ["sftp://b%C3%B6b@[::1]:2200/x?ignored=1#frag", {
      host: "[::1]:2200",
      user: "böb",
      path: "/x",
    }],
    ["SFTP://bob@h/x", { host: "h", user: "bob", path: "/x" }],
  ];
  for (const [url, want] of cases) assert.deepEqual(parseSftpUrl(url), want, url);
});

Deno.test("parseSftpUrl() rejects bad URLs without echoing the password", () => {
  for (
    const url of [
      "sftp://bob:hunter2@h:notaport/x",
      "s3://bob:hunter2@h/x",
      "sftp://bob:hunter2%zz@h/x",
    ]
  ) {
    let err: unknown;
    try {
      parseSftpUrl(url);
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof SyntaxError, url);
    assert.ok(!err.message.includes("hunter2"), err.message);
  }
  assert.throws(() => parseSftpUrl("sftp:///x"), RangeError);
});

Deno.test("sftpOptionsFromConfig() applies v0.3.13's rules for url and keys", () => {
  assert.deepEqual(
    sftpOptionsFromConfig({ url: "sftp://u:p@h:2/x", user: "v", password: "q", keyPath: "/k" }),
    { host: "h:2", user: "v", password: "q", keyPath: "/k", path: "/x" },
  );
  assert.deepEqual(
    sftpOptionsFromConfig({ host: "h", user: "u", path: "rel" }),
    { host: "h", user: "u", path: "rel" },
  );
  assert.throws(() => sftpOptionsFromConfig({ url: "sftp://u@h/x", path: "/y" }), /url & path/);
  assert.throws(() => sftpOptionsFromConfig({ url: "sftp://u@h/x", host: "h" }), /url & host/);
  assert.throws(() => sftpOptionsFromConfig({ user: "u", path: "/y" }), /Host required/);
  assert.throws(() => sftpOptionsFromConfig({ url: "sftp://h/x" }), /User required/);
});

Deno.test("SftpReplicaClient names its replica without the password and checks its options", () => {
  const c = new SftpReplicaClient({
    host: "h",
    user: "bob",
    password: "hunter2",
    path: "/a/./b/../c/",
  });
  assert.equal(c.type, "sftp");
  assert.equal(c.port, 22);
  assert.equal(c.path, "/a/c");
  assert.equal(c.location, "sftp://bob@h:22/a/c");
  assert.ok(!JSON.stringify(c).includes("hunter2"));
  assert.equal(
    new SftpReplicaClient({ host: "[::1]:2200", user: "u" }).location,
    "sftp://u@[::1]:2200",
  );
  assert.equal(
    new SftpReplicaClient({ host: "::1", user: "u", path: "x" }).location,
    "sftp://u@[::1]:22/~/x",
  );
  assert.throws(() => new SftpReplicaClient({ host: "", user: "u" }), RangeError);
  assert.throws(() => new SftpReplicaClient({ host: "h", user: "" }), RangeError);
  assert.throws(() => new SftpReplicaClient({ host: "h:99999", user: "u" }), RangeError);
});
