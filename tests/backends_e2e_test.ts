/**
 * End to end over the SFTP, GCS and Azure Blob backends and age encryption, through the real
 * command line: our CLI (`main.ts`) and the real Litestream v0.3.13 as separate processes, a
 * real `sqlite3` process writing, and real servers on 127.0.0.1 (OpenSSH's sshd,
 * fake-gcs-server, Azurite). Each server is started once per test; every step works under
 * its own random path.
 *
 * Per backend: our `replicate` while a writer crosses checkpoints, then our `restore` and
 * v0.3.13's, both equal to the source (ours under exactly the README's permission flags);
 * v0.3.13's `replicate`, then our `restore`; what an idle database costs (requests counted by
 * our `/metrics` and by a TCP tap in front of the server, v0.3.13 measured the same way);
 * and the failure modes (refused credentials, a missing bucket, container or directory, an
 * unreachable server, a missing permission): `restore` exits non-zero with one line naming
 * the replica and writes nothing, `replicate` logs one error line however often it retries.
 * age encryption runs the same round trips on a file replica and on an SFTP one.
 *
 * @module
 */
import assert from "node:assert/strict";
import * as net from "node:net";
import { basename } from "node:path";
import {
  cli,
  closedPort,
  createDb,
  dump,
  integrity,
  REPO,
  tempDir,
  waitFor,
  Writer,
} from "./_helpers.ts";
import { randomName } from "./_conformance.ts";
import { createLoadDb, Daemon, prepareWriter, writeLoad } from "./_daemon.ts";
import { litestreamBin } from "./_oracle.ts";
import { isCi, sftpServerUnavailable, startSftpServer } from "./_sftp_server.ts";
import { gcsServerUnavailable, startGcsAuthProxy, startGcsServer } from "./_gcs_server.ts";
import { azuriteUnavailable, startAzurite } from "./_azurite.ts";
import { CONFIG_ENV } from "../scripts/permissions.ts";
import { SftpReplicaClient } from "../src/clients/sftp.ts";
import { GcsReplicaClient } from "../src/clients/gcs.ts";
import { AbsReplicaClient, ACCOUNT_KEY_ENV } from "../src/clients/abs.ts";
import { AgeReplicaClient, generateAgeKey } from "../src/clients/age.ts";
import { FileReplicaClient } from "../src/clients/file.ts";
import { restore } from "../src/restore.ts";
import { collect, type ReplicaClient } from "../src/replica_client.ts";

const dec = new TextDecoder();

// ---------------------------------------------------------------------------------------
// Processes

/** Output of a finished command. */
interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program to completion with `env` added to the environment. */
async function run(program: string, args: string[], env?: Record<string, string>): Promise<Run> {
  const o = await new Deno.Command(program, { args, env, stdin: "null" }).output();
  return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr) };
}

/** Throws with the output unless the command exited 0. */
function ok(r: Run, what: string): Run {
  if (r.code !== 0) throw new Error(`${what} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
  return r;
}

/** Our CLI under exactly `flags` (plus `--no-prompt`), never the tasks' broad ones. */
function oursArgs(flags: string[], args: string[]): string[] {
  return ["run", "--no-prompt", ...flags, `${REPO}/main.ts`, ...args];
}

/** Runs our CLI to completion under the test tasks' broad permissions. */
async function ours(args: string[], env?: Record<string, string>): Promise<Run> {
  const o = await cli(args, { env }).output();
  return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr) };
}

/**
 * Starts a replicator whose output is collected. Daemon's constructor is private so that
 * callers use its factories; like `startInNewGroup` of `_daemon.ts` this is one more, for a
 * command line with exact permissions and an environment (`Daemon.ours` and
 * `Daemon.oracle` take neither).
 */
function spawn(name: string, program: string, args: string[], env?: Record<string, string>) {
  const make = Daemon as unknown as new (name: string, cmd: Deno.Command) => Daemon;
  return new make(
    name,
    new Deno.Command(program, { args, env, stdin: "null", stdout: "piped", stderr: "piped" }),
  );
}

/** A loopback port nothing listens on (just released by us). */

/** The sum of every series of the metric `name` in a Prometheus text page (0 if none). */
function metricSum(text: string, name: string): number {
  let sum = 0;
  for (const m of text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, "gm"))) {
    sum += Number(m[1]);
  }
  return sum;
}

async function scrape(addr: string): Promise<string> {
  return await (await fetch(`http://${addr}/metrics`)).text();
}

// ---------------------------------------------------------------------------------------
// A TCP tap: forwards to the server and counts what clients send.

/** Bytes and chunks (socket reads, about one per request) sent by clients through the tap. */
interface Tap extends AsyncDisposable {
  readonly hostPort: string;
  readonly sent: { chunks: number; bytes: number };
}

async function startTap(target: string): Promise<Tap> {
  const [host, port] = [target.slice(0, target.lastIndexOf(":")), target.split(":").at(-1)];
  const sockets = new Set<net.Socket>();
  const track = (s: net.Socket) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    s.on("error", () => s.destroy());
  };
  const sent = { chunks: 0, bytes: 0 };
  const server = net.createServer((client) => {
    track(client);
    const out = net.connect(Number(port), host);
    track(out);
    client.on("data", (b: Uint8Array) => {
      sent.chunks++;
      sent.bytes += b.length;
    });
    client.pipe(out);
    out.pipe(client);
    client.on("close", () => out.destroy());
    out.on("close", () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port: tapPort } = server.address() as net.AddressInfo;
  return {
    hostPort: `127.0.0.1:${tapPort}`,
    sent,
    async [Symbol.asyncDispose]() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

// ---------------------------------------------------------------------------------------
// Backends

/** An age key pair, and the `age:` block of a replica that uses it. */
interface AgeKeys {
  identity: string;
  recipient: string;
}

/** Where one replica lives: v0.3.13's replica keys and the environment both tools need. */
interface Place {
  keys: Record<string, string>;
  env: Record<string, string>;
  /** Values no output may show. @default {none} */
  secrets?: string[];
}

/** A configuration our `restore` and `replicate` must refuse, and why. */
interface Failure {
  name: string;
  place: Place;
  /** What `restore`'s one line says (after the replica's location). */
  restore: RegExp;
  /** What `replicate`'s error line says. @default {restore} */
  replicate?: RegExp;
  /** Values that must never be printed. */
  secrets: string[];
}

/** A running server of one backend, with what the tests need to know about it. */
interface Remote extends AsyncDisposable {
  /** The replica type, also our and v0.3.13's default replica name. */
  readonly kind: string;
  /** `HOST:PORT` of the server, or `undefined` for a file replica. */
  readonly hostPort?: string;
  /** A fresh replica path (a directory on the server, or an object-name prefix). */
  newPath(dir: string): string;
  /** The replica at `path`, reached through `via` (a tap) instead of the server itself. */
  place(path: string, via?: string): Place;
  /** A client in this process, straight to the server (never through a tap). */
  client(path: string): ReplicaClient;
  /** Permission flags our CLI needs for this backend beyond the database's directory. */
  permissions(hostPort: string | undefined): { read: string[]; env: string[]; net: string[] };
  failures(dir: string): Promise<Failure[]>;
}

async function sftpRemote(): Promise<Remote> {
  const server = await startSftpServer();
  const clients: SftpReplicaClient[] = [];
  const keys = (path: string, host = server.hostPort) => ({
    type: "sftp",
    host,
    user: server.user,
    "key-path": server.keyPath,
    path,
  });
  return {
    kind: "sftp",
    hostPort: server.hostPort,
    newPath: () => `${server.root}/${randomName()}`,
    place: (path, via) => ({ keys: keys(path, via), env: {} }),
    client(path) {
      const c = new SftpReplicaClient({
        host: server.hostPort,
        user: server.user,
        keyPath: server.keyPath,
        path,
      });
      clients.push(c);
      return c;
    },
    permissions: (hostPort) => ({ read: [server.keyPath], env: [], net: [hostPort!] }),
    async failures(dir) {
      const password = `wrong-${crypto.randomUUID()}`;
      const otherKey = `${dir}/other_ed25519`;
      ok(
        await run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", otherKey]),
        "ssh-keygen",
      );
      const notADir = `${server.root}/${randomName()}`;
      await Deno.writeTextFile(notADir, "a regular file");
      const base = keys(`${server.root}/${randomName()}`);
      const { "key-path": _, ...noKey } = base;
      return [{
        name: "wrong password",
        place: { keys: { ...noKey, password }, env: {} },
        restore: /cannot log in to 127\.0\.0\.1:\d+ as "\w+" with the configured password/,
        secrets: [password],
      }, {
        name: "key not authorized",
        place: { keys: { ...base, "key-path": otherKey }, env: {} },
        restore: /cannot log in to 127\.0\.0\.1:\d+ as "\w+" with the configured key/,
        secrets: [],
      }, {
        name: "directory cannot exist (a file is in the way)",
        place: { keys: { ...base, path: `${notADir}/db` }, env: {} },
        restore: /No backups found in replica "sftp:\/\/\w+@127\.0\.0\.1:\d+\/.*\/db"/,
        replicate: /is not a directory/,
        secrets: [],
      }, {
        name: "unreachable server",
        place: { keys: { ...base, host: `127.0.0.1:${closedPort()}` }, env: {} },
        restore: /cannot connect to 127\.0\.0\.1:\d+: connection refused/,
        secrets: [],
      }];
    },
    async [Symbol.asyncDispose]() {
      for (const c of clients) await c.close();
      await server.stop();
    },
  };
}

async function gcsRemote(): Promise<Remote> {
  const server = await startGcsServer();
  const hostPort = server.endpoint.replace("http://", "");
  const proxies: AsyncDisposable[] = [];
  // No scheme: v0.3.13's Go client and ours both take it as http.
  const place = (path: string, via = hostPort, bucket = server.bucket): Place => ({
    keys: { type: "gcs", bucket, path },
    env: { STORAGE_EMULATOR_HOST: via },
  });
  return {
    kind: "gcs",
    hostPort,
    newPath: () => `${randomName()}/db`,
    place: (path, via) => place(path, via),
    client: (path) =>
      new GcsReplicaClient({
        bucket: server.bucket,
        path,
        endpoint: server.endpoint,
        anonymous: true,
      }),
    permissions: (hp) => ({ read: [], env: ["STORAGE_EMULATOR_HOST"], net: [hp!] }),
    async failures(dir) {
      // Storage behind Google's auth: requests without a token it issued get 401.
      const auth = await startGcsAuthProxy(server.endpoint, dir);
      proxies.push(auth);
      const path = `${randomName()}/db`;
      return [{
        name: "missing bucket",
        place: place(path, hostPort, "no-such-bucket-4b1d"),
        restore: /bucket "no-such-bucket-4b1d" does not exist/,
        secrets: [],
      }, {
        name: "credentials refused",
        place: place(path, auth.endpoint.replace("http://", "")),
        restore: /the server rejected the credentials \(HTTP 401/,
        secrets: [],
      }, {
        name: "unreachable server",
        place: place(path, `127.0.0.1:${closedPort()}`),
        restore: /cannot connect to 127\.0\.0\.1:\d+: connection refused/,
        secrets: [],
      }];
    },
    async [Symbol.asyncDispose]() {
      for (const p of proxies) await p[Symbol.asyncDispose]();
      await server.stop();
    },
  };
}

const CONTAINER = "litestream-e2e";

async function absRemote(): Promise<Remote> {
  const server = await startAzurite();
  await server.createContainer(CONTAINER);
  const base = new URL(server.endpoint);
  const keys = (path: string, via = base.host) => ({
    type: "abs",
    "account-name": server.accountName,
    endpoint: `http://${via}${base.pathname}`,
    bucket: CONTAINER,
    path,
  });
  /** With the key in the config (v0.3.13's `account-key`). */
  const place = (path: string, via = base.host, over: Record<string, string> = {}): Place => ({
    keys: { ...keys(path, via), "account-key": server.accountKey, ...over },
    env: {},
  });
  return {
    kind: "abs",
    hostPort: base.host,
    newPath: () => `${randomName()}/db`,
    // The key from the environment, as both tools read it when account-key is not set.
    place: (path, via) => ({
      keys: keys(path, via),
      env: { [ACCOUNT_KEY_ENV]: server.accountKey },
      secrets: [server.accountKey],
    }),
    client: (path) =>
      new AbsReplicaClient({
        accountName: server.accountName,
        accountKey: server.accountKey,
        bucket: CONTAINER,
        path,
        endpoint: server.endpoint,
      }),
    permissions: (hp) => ({ read: [], env: [ACCOUNT_KEY_ENV], net: [hp!] }),
    failures() {
      const path = `${randomName()}/db`;
      const wrongKey = btoa("wrong key wrong key wrong key wrong key wrong key wrong!!");
      return Promise.resolve([{
        name: "wrong account key",
        place: place(path, base.host, { "account-key": wrongKey }),
        restore: /rejected the request signature \(check account-name and account-key\)/,
        secrets: [wrongKey, server.accountKey],
      }, {
        name: "missing container",
        place: place(path, base.host, { bucket: "no-such-container" }),
        restore: /container "no-such-container" does not exist/,
        secrets: [server.accountKey],
      }, {
        name: "unreachable server",
        place: place(path, `127.0.0.1:${closedPort()}`),
        restore: /cannot connect to 127\.0\.0\.1:\d+: connection refused/,
        secrets: [server.accountKey],
      }]);
    },
    async [Symbol.asyncDispose]() {
      await server.stop();
    },
  };
}

/** File replicas, for age: no server. */
function fileRemote(): Remote {
  return {
    kind: "file",
    newPath: (dir) => `${dir}/replica-${randomName()}`,
    place: (path) => ({ keys: { type: "file", path }, env: {} }),
    client: (path) => new FileReplicaClient(path),
    permissions: () => ({ read: [], env: [], net: [] }),
    failures: () => Promise.resolve([]),
    [Symbol.asyncDispose]: () => Promise.resolve(),
  };
}

// ---------------------------------------------------------------------------------------
// Configs and checks

/** Wakes every 100 ms and checkpoints after 50 pages, so a short workload crosses WAL indexes. */
const FAST_DB = { "monitor-interval": "100ms", "min-checkpoint-page-count": 50 };

/** Writes a config that both our CLI and v0.3.13 read: one database, one replica. */
async function writeConfig(
  file: string,
  dbPath: string,
  place: Place,
  options: { addr?: string; age?: AgeKeys; db?: Record<string, string | number> } = {},
): Promise<string> {
  const q = (v: string | number) => typeof v === "number" ? String(v) : JSON.stringify(v);
  const lines: string[] = [];
  if (options.addr) lines.push(`addr: ${q(options.addr)}`);
  lines.push("dbs:", `  - path: ${q(dbPath)}`);
  for (const [k, v] of Object.entries(options.db ?? {})) lines.push(`    ${k}: ${q(v)}`);
  lines.push("    replicas:");
  let first = true;
  for (const [k, v] of Object.entries(place.keys)) {
    lines.push(`${first ? "      - " : "        "}${k}: ${q(v)}`);
    first = false;
  }
  if (options.age) {
    lines.push(
      "        age:",
      `          identities: [${q(options.age.identity)}]`,
      `          recipients: [${q(options.age.recipient)}]`,
    );
  }
  await Deno.writeTextFile(file, lines.join("\n") + "\n");
  return file;
}

type Permission = "read" | "env" | "net";

/**
 * The README's minimal flags for our CLI on this backend: the working directory (config,
 * database, restore output, file replicas), the config file's variables, and the backend's
 * own row; plus `extraNet` (the metrics address).
 */
function exactFlags(
  remote: Remote,
  dir: string,
  hostPort: string | undefined,
  options: { extraNet?: string[]; drop?: Permission } = {},
): string[] {
  const p = remote.permissions(hostPort);
  if (options.drop) p[options.drop] = [];
  const flags = [
    `--allow-read=${[dir, ...p.read].join(",")}`,
    `--allow-write=${dir}`,
    `--allow-env=${[...CONFIG_ENV, ...p.env].join(",")}`,
  ];
  const netHosts = [...p.net, ...options.extraNet ?? []];
  if (netHosts.length > 0) flags.push(`--allow-net=${netHosts.join(",")}`);
  return flags;
}

/** Waits until the replica holds a snapshot and at least `segments` WAL segments. */
async function waitForSegments(client: ReplicaClient, daemon: Daemon, segments = 1) {
  await waitFor(
    async () => {
      if (!daemon.running) {
        throw new Error(`${daemon.name} exited before the replica was written:\n${daemon.log}`);
      }
      let snaps = 0, segs = 0;
      for (const gen of await client.generations()) {
        snaps += (await collect(client.snapshots(gen))).length;
        segs += (await collect(client.walSegments(gen))).length;
      }
      return snaps > 0 && segs >= segments;
    },
    30_000,
    `${segments} WAL segment(s) in ${client.location}; ${daemon.name} log:\n${daemon.log}`,
  ).catch((err) => {
    throw new Error(`${err.message}\n${daemon.log}`);
  });
}

/** Waits until a restore in this process from `client` equals `source` (replication settled). */
async function waitForRestorable(client: ReplicaClient, source: string, dir: string) {
  let n = 0;
  await waitFor(
    async () => {
      const out = `${dir}/settle-${n++}.db`;
      try {
        // One download at a time: v0.3.13's SFTP client writes objects in place, so a read
        // can catch several half-written; restore() leaves the rejections of segments it
        // fetched ahead unhandled (reported), which would end this process.
        await restore(client, { outputPath: out, parallelism: 1 });
        return await dump(out) === source;
      } catch {
        return false; // caught between uploads
      } finally {
        await Deno.remove(out).catch(() => {});
      }
    },
    30_000,
    `the replica ${client.location} to hold the source`,
  );
}

/** The WAL indexes the replica holds, over all generations. */
async function walIndexes(client: ReplicaClient): Promise<Set<number>> {
  const out = new Set<number>();
  for (const gen of await client.generations()) {
    for await (const s of client.walSegments(gen)) out.add(s.index);
  }
  return out;
}

/** For the idle measurement: also a checkpoint timer firing every second. */
const IDLE_DB = { ...FAST_DB, "checkpoint-interval": "1s" };

/**
 * v0.3.13 with age, stopped once the replica holds the source: no checkpoint at all. Each
 * v0.3.13 checkpoint writes a row of its own, a new WAL segment to upload; when SIGTERM comes
 * during that upload, its final sync uploads the same segment again, both in place over
 * SFTP, and two age encryptions of it (each with its own key) interleave into an object
 * nobody can decrypt (seen here; plain segments are equal bytes, so they survive).
 */
const ORACLE_AGE_DB = { "monitor-interval": "100ms" };

/** Idle measurement window: well past the sync interval (1 s) and the monitor's 100 ms. */
const IDLE_MS = 2500;

/** What a settled replicator sends in {@linkcode IDLE_MS}: operations (its metrics) and tap traffic. */
async function idleCost(addr: string, tap: Tap | undefined) {
  const ops = async () => operationCounts(await scrape(addr));
  const before = { ops: await ops(), ...tap?.sent };
  await new Promise((r) => setTimeout(r, IDLE_MS));
  const after = await ops();
  const kinds = Object.entries(after).map(([op, n]) => [op, n - (before.ops[op] ?? 0)] as const)
    .filter(([, n]) => n > 0);
  return {
    operations: kinds.reduce((sum, [, n]) => sum + n, 0),
    /** e.g. "PUT 1", or "none". */
    shown: kinds.map(([op, n]) => `${op} ${n}`).join(", ") || "none",
    chunks: tap ? tap.sent.chunks - before.chunks! : 0,
    bytes: tap ? tap.sent.bytes - before.bytes! : 0,
  };
}

/** `litestream_replica_operation_total` by its `operation` label. */
function operationCounts(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  const re = /^litestream_replica_operation_total\{[^}]*operation="(\w+)"[^}]*\} (\S+)$/gm;
  for (const m of text.matchAll(re)) out[m[1]] = (out[m[1]] ?? 0) + Number(m[2]);
  return out;
}

/** Asserts one line on stderr matching `reason`, exit code 1, and no secret in the output. */
function assertOneLineFailure(r: Run, reason: RegExp, secrets: string[], what: string): void {
  assert.equal(r.code, 1, `${what} exits 1 (a failure, not a usage error)`);
  // Progress lines a restore logged before it failed (`level=INFO`) are not errors.
  const lines = r.stderr.trimEnd().split("\n").filter((l) => !/^time=\S+ level=INFO /.test(l));
  assert.equal(lines.length, 1, `${what}: one line on stderr, got:\n${r.stderr}`);
  assert.match(lines[0], /^litestream: /, `${what}: stderr`);
  assert.match(lines[0], reason, `${what}: stderr`);
  for (const s of secrets) {
    assert.ok(!r.stderr.includes(s) && !r.stdout.includes(s), `${what} shows a secret`);
  }
}

/** True if `text` shows the replica's location (`sftp://user@host/path`, a file path, …). */
function namesReplica(text: string, kind: string, place: Place): boolean {
  return text.includes(place.keys.path) && (kind === "file" || text.includes(`"${kind}://`));
}

const figures: string[] = [];

/** Records a measured figure, printed once every backend ran. */
function report(line: string): void {
  figures.push(line);
}

// ---------------------------------------------------------------------------------------
// Steps

interface Env {
  remote: Remote;
  dir: string;
  age?: AgeKeys;
}

/** In-process client for `path`, decrypting with `age` if set. */
function reader(remote: Remote, path: string, age?: AgeKeys): ReplicaClient {
  const client = remote.client(path);
  return age
    ? new AgeReplicaClient(client, { identities: [age.identity], recipients: [age.recipient] })
    : client;
}

/**
 * Restores `${dir}/app.db` of `config` with our CLI under exactly the README's flags into
 * `${dir}/ours.db`; checks integrity and that no secret was printed; returns the dump.
 */
async function ourRestore(
  remote: Remote,
  dir: string,
  config: string,
  place: Place,
  age?: AgeKeys,
): Promise<string> {
  const out = `${dir}/ours.db`;
  const flags = exactFlags(remote, dir, remote.hostPort);
  const args = ["restore", "-config", config, "-o", out, `${dir}/app.db`];
  const r = ok(await run(Deno.execPath(), oursArgs(flags, args), place.env), "our restore");
  for (const s of [...place.secrets ?? [], ...age ? [age.identity] : []]) {
    assert.ok(!r.stdout.includes(s) && !r.stderr.includes(s), "restore shows a secret");
  }
  assert.equal(await integrity(out), "ok");
  return await dump(out);
}

/**
 * Our replicate (exact flags) while a writer crosses checkpoints; an idle database costs
 * nothing; our restore (exact flags) and v0.3.13's equal the source.
 */
async function oursToBoth({ remote, dir, age }: Env): Promise<void> {
  const db = `${dir}/app.db`;
  const path = remote.newPath(dir);
  await using tap = remote.hostPort ? await startTap(remote.hostPort) : undefined;
  const place = remote.place(path, tap?.hostPort);
  const addr = `127.0.0.1:${closedPort()}`;
  const config = await writeConfig(`${dir}/litestream.yml`, db, place, {
    addr,
    age,
    db: age ? FAST_DB : IDLE_DB,
  });
  await using w = new Writer(db);
  await prepareWriter(w);
  await createLoadDb(w);
  const raw = remote.client(path);
  const flags = exactFlags(remote, dir, tap?.hostPort, { extraNet: [addr] });
  await using daemon = spawn(
    "ours",
    Deno.execPath(),
    oursArgs(flags, ["replicate", "-config", config]),
    place.env,
  );
  await waitForSegments(raw, daemon);
  await writeLoad(w, { txns: 30, pauseMs: 10 });
  const source = await dump(db);
  await waitForRestorable(reader(remote, path, age), source, dir);
  if (!age) {
    const idle = await idleCost(addr, tap);
    report(
      `${remote.kind}: ours idle ${IDLE_MS} ms: operations ${idle.shown}, ` +
        `${idle.chunks} chunks / ${idle.bytes} bytes sent`,
    );
    assert.equal(idle.operations, 0, `operations while idle; log:\n${daemon.log}`);
    // SSH keeps the connection alive with a probe every 15 s (not a request); HTTP sends nothing.
    assert.ok(idle.chunks <= (remote.kind === "sftp" ? 1 : 0), JSON.stringify(idle));
  }
  const log = await daemon.stopCleanly("SIGTERM");
  assert.doesNotMatch(log, /level=(ERROR|WARN)/, log);
  const secrets = [...place.secrets ?? [], ...age ? [age.identity] : []];
  for (const s of secrets) assert.ok(!log.includes(s), "the log shows a secret");
  const indexes = await walIndexes(raw);
  assert.ok(indexes.size >= 2, `crossed checkpoints: WAL indexes ${[...indexes]}`);

  // Restores go to the server itself (fake-gcs-server serves downloads only under its own
  // host name, which the tap does not rewrite).
  const direct = remote.place(path);
  const rconfig = await writeConfig(`${dir}/restore.yml`, db, direct, { age });
  assert.equal(await ourRestore(remote, dir, rconfig, direct, age), source);
  const theirs = `${dir}/oracle.db`;
  ok(
    await run(await litestreamBin(), ["restore", "-config", rconfig, "-o", theirs, db], direct.env),
    "v0.3.13 restore",
  );
  assert.equal(await integrity(theirs), "ok");
  assert.equal(await dump(theirs), source);
}

/** v0.3.13 replicates (its idle cost measured like ours); our restore equals the source. */
async function oracleToOurs({ remote, dir, age }: Env): Promise<void> {
  const db = `${dir}/app.db`;
  const path = remote.newPath(dir);
  await using tap = remote.hostPort ? await startTap(remote.hostPort) : undefined;
  const place = remote.place(path, tap?.hostPort);
  const addr = `127.0.0.1:${closedPort()}`;
  const config = await writeConfig(`${dir}/litestream.yml`, db, place, {
    addr,
    age,
    db: age ? ORACLE_AGE_DB : IDLE_DB,
  });
  await using w = new Writer(db);
  await prepareWriter(w);
  await createLoadDb(w);
  const raw = remote.client(path);
  await using daemon = spawn(
    "v0.3.13",
    await litestreamBin(),
    ["replicate", "-config", config],
    place.env,
  );
  await waitForSegments(raw, daemon);
  await writeLoad(w, { txns: 20, pauseMs: 10 });
  const source = await dump(db);
  await waitForRestorable(reader(remote, path, age), source, dir);
  if (!age) {
    const idle = await idleCost(addr, tap);
    report(
      `${remote.kind}: v0.3.13 idle ${IDLE_MS} ms: operations ${idle.shown}, ` +
        `${idle.chunks} chunks / ${idle.bytes} bytes sent`,
    );
  }
  await daemon.settled();
  const log = await daemon.stopOracle("SIGTERM");

  // Restores go to the server itself (fake-gcs-server serves downloads only under its own
  // host name, which the tap does not rewrite).
  const direct = remote.place(path);
  const rconfig = await writeConfig(`${dir}/restore.yml`, db, direct, { age });
  try {
    assert.equal(await ourRestore(remote, dir, rconfig, direct, age), source);
  } catch (err) {
    const listing: string[] = [];
    for (const gen of await raw.generations()) {
      for await (const s of raw.snapshots(gen)) listing.push(`snapshot ${JSON.stringify(s)}`);
      for await (const s of raw.walSegments(gen)) listing.push(`wal ${JSON.stringify(s)}`);
    }
    (err as Error).message += `\n--- replica ---\n${
      listing.join("\n")
    }\n--- v0.3.13 log ---\n${log}`;
    throw err;
  }
}

/** Names in `dir` that a restore to `out` could have left. */
async function leftovers(out: string): Promise<string[]> {
  const dir = out.slice(0, out.lastIndexOf("/"));
  const name = basename(out);
  return (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name)
    .filter((n) => n.startsWith(name));
}

/**
 * Each misconfiguration: `restore` exits non-zero with one line naming the replica and writes
 * nothing; `replicate` keeps running, logs one error line naming the replica however often
 * it retries, and its final sync fails with one line on stderr.
 */
async function failures({ remote, dir }: Env): Promise<void> {
  const cases = await remote.failures(dir);
  await Promise.all(cases.map(async (c, i) => {
    const db = `${dir}/app-${i}.db`; // one database per replicator
    await createDb(db);
    const config = await writeConfig(`${dir}/fail-${i}.yml`, db, c.place, {
      db: FAST_DB,
    });
    const out = `${dir}/restored-${i}.db`;
    const r = await ours(["restore", "-config", config, "-o", out, db], c.place.env);
    assertOneLineFailure(r, c.restore, c.secrets, `restore (${c.name})`);
    assert.ok(
      namesReplica(r.stderr, remote.kind, c.place),
      `restore (${c.name}) names the replica`,
    );
    assert.deepEqual(await leftovers(out), [], `restore (${c.name}) wrote nothing`);

    const addr = `127.0.0.1:${closedPort()}`;
    const rconfig = await writeConfig(`${dir}/fail-${i}-r.yml`, db, c.place, {
      addr,
      db: FAST_DB,
    });
    await using daemon = spawn(
      "ours",
      Deno.execPath(),
      [
        "run",
        "--allow-read",
        "--allow-write",
        "--allow-env",
        "--allow-net",
        `${REPO}/main.ts`,
        "replicate",
        "-config",
        rconfig,
      ],
      c.place.env,
    );
    // Two failed syncs (the retry comes after a 1 s backoff): still one error line.
    await waitFor(
      async () => {
        if (!daemon.running) throw new Error(`replicate exited:\n${daemon.log}`);
        try {
          return metricSum(await scrape(addr), "litestream_replica_sync_error_count") >= 2;
        } catch {
          return false; // metrics server not up yet
        }
      },
      30_000,
      `two failed syncs (${c.name})`,
    );
    const stopped = await daemon.stop("SIGTERM");
    const errors = stopped.log.split("\n").filter((l) => /level=ERROR/.test(l));
    assert.equal(errors.length, 1, `replicate (${c.name}): one error line:\n${stopped.log}`);
    assert.match(errors[0], /msg="replica sync failed"/);
    assert.match(errors[0], new RegExp(`replica=${remote.kind}\\b`));
    assert.match(errors[0].replaceAll('\\"', '"'), c.replicate ?? c.restore);
    assert.ok(namesReplica(errors[0].replaceAll('\\"', '"'), remote.kind, c.place), errors[0]);
    for (const s of c.secrets) {
      assert.ok(!stopped.log.includes(s), `replicate (${c.name}) shows a secret`);
    }
    // The final sync on SIGTERM fails too: exit 1 with one line.
    assert.equal(stopped.code, 1, `replicate (${c.name}) exit code:\n${stopped.log}`);
    const stderr = stopped.log.split("\n").filter((l) => l.startsWith("litestream: "));
    assert.equal(stderr.length, 1, `replicate (${c.name}) one line on stderr:\n${stopped.log}`);
  }));
}

/**
 * Without any one of the flags of the backend's README row, `restore` fails with one line
 * naming the replica and the missing permission.
 */
async function missingPermission({ remote, dir }: Env): Promise<void> {
  const db = `${dir}/app.db`;
  const place = remote.place(remote.newPath(dir));
  const config = await writeConfig(`${dir}/litestream.yml`, db, place);
  const all = remote.permissions(remote.hostPort);
  const drops = (["read", "env", "net"] as const).filter((p) => all[p].length > 0);
  await Promise.all(drops.map(async (drop) => {
    const flags = exactFlags(remote, dir, remote.hostPort, { drop });
    const out = `${dir}/restored-${drop}.db`;
    const r = await run(
      Deno.execPath(),
      oursArgs(flags, ["restore", "-config", config, "-o", out, db]),
      place.env,
    );
    assertOneLineFailure(
      r,
      new RegExp(`Requires ${drop} access to "`),
      [],
      `restore without ${drop}`,
    );
    assert.ok(namesReplica(r.stderr, remote.kind, place), r.stderr);
    assert.deepEqual(await leftovers(out), []);
  }));
}

// ---------------------------------------------------------------------------------------
// Tests

const noticed = new Set<string>();

/** Locally a missing server skips its tests with a notice; under CI=true they fail instead. */
function skipUnavailable(name: string, unavailable: string | undefined): boolean {
  if (unavailable === undefined || isCi()) return false;
  if (!noticed.has(unavailable)) {
    noticed.add(unavailable);
    // deno-lint-ignore no-console
    console.warn(`backends_e2e_test: skipping ${name}: ${unavailable}`);
  }
  return true;
}

type Step = [string, (env: Env) => Promise<void>];

const STEPS: Step[] = [
  [
    "our replicate and restore under the README's exact flags, a writer crossing checkpoints; v0.3.13 restores the same; idle costs no request",
    oursToBoth,
  ],
  ["v0.3.13 replicates; our restore equals the source", oracleToOurs],
  [
    "refused credentials, a missing bucket/container/directory, an unreachable server: one line naming the replica, nothing written, one error line while retrying",
    failures,
  ],
  [
    "without any one of the README's flags for the backend: one line naming the replica",
    missingPermission,
  ],
];

const BACKENDS: [string, () => Promise<Remote>, () => Promise<string | undefined>][] = [
  ["sftp", sftpRemote, sftpServerUnavailable],
  ["gcs", gcsRemote, gcsServerUnavailable],
  ["abs", absRemote, azuriteUnavailable],
];

for (const [kind, start, unavailable] of BACKENDS) {
  Deno.test({
    name:
      `end to end over ${kind} through the CLI: ours and v0.3.13 both ways, failures, idle cost`,
    ignore: skipUnavailable(kind, await unavailable()),
    async fn(t) {
      await using remote = await start();
      for (const [name, step] of STEPS) {
        await t.step(name, async () => {
          await using dir = await tempDir();
          await step({ remote, dir: dir.path });
        });
      }
    },
  });
}

Deno.test({
  name:
    "age encryption through the CLI, on a file replica and an sftp one: ours and v0.3.13 both ways",
  ignore: skipUnavailable("sftp", await sftpServerUnavailable()),
  async fn(t) {
    const age = await generateAgeKey();
    await using sftp = await sftpRemote();
    for (const remote of [fileRemote(), sftp]) {
      for (const [name, step] of STEPS.slice(0, 2)) {
        await t.step(`${remote.kind}+age: ${name}`, async () => {
          await using dir = await tempDir();
          await step({ remote, dir: dir.path, age });
        });
      }
    }
    await t.step("a wrong identity: restore fails with one line and writes nothing", async () => {
      await using dir = await tempDir();
      const remote = fileRemote();
      const path = remote.newPath(dir.path);
      const db = `${dir.path}/app.db`;
      await createDb(db);
      const place = remote.place(path);
      const config = await writeConfig(`${dir.path}/ok.yml`, db, place, { age });
      const wrong = { ...(await generateAgeKey()), recipient: age.recipient };
      const bad = await writeConfig(`${dir.path}/bad.yml`, db, place, { age: wrong });
      await using daemon = Daemon.ours(["replicate", "-config", config]);
      await waitForSegments(remote.client(path), daemon);
      await daemon.stopCleanly("SIGTERM");
      const out = `${dir.path}/restored.db`;
      const r = await ours(["restore", "-config", bad, "-o", out, db]);
      assertOneLineFailure(
        r,
        /identit/i,
        [wrong.identity, age.identity],
        "restore (wrong identity)",
      );
      assert.ok(namesReplica(r.stderr, "file", place), r.stderr);
      assert.deepEqual(await leftovers(out), []);
    });
  },
});

Deno.test("idle cost figures", () => {
  // deno-lint-ignore no-console
  if (figures.length > 0) console.log(figures.join("\n"));
});
