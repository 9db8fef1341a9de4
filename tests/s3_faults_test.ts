/**
 * Faults in S3 storage: a fault proxy (tests/_s3_servers.ts) between our client and a real
 * moto server answers 5xx, resets connections (before and in the middle of an answer),
 * stalls longer than the client's timeout, or fails 20 % of requests at random. Replication
 * (our daemon, a `sqlite3` process committing throughout) must catch up once the faults stop
 * with nothing lost; a restore through the faults must give the right content or fail with
 * one line. Prints the figures: requests, faults injected, retries, time to catch up.
 *
 * Also checks that the moto used is the version scripts/setup_test_deps.sh pins, never a
 * `moto_server` found on PATH.
 *
 * @module
 */
import assert from "node:assert/strict";
import { cli, dump, integrity, tempDir, waitFor, Writer } from "./_helpers.ts";
import { createLoadDb, Daemon, prepareWriter, rowCount, withLogs, writeLoad } from "./_daemon.ts";
import {
  closedPort,
  type FaultMode,
  isCi,
  pinnedMotoVersion,
  type ProxyFault,
  type S3Proxy,
  s3ServerUnavailable,
  type S3TestServer,
  startS3Proxy,
  startS3Server,
} from "./_s3_servers.ts";
import { S3ReplicaClient } from "../src/clients/s3.ts";
import { Db } from "../src/db.ts";
import { Replica } from "../src/replica.ts";
import { restore } from "../src/restore.ts";
import { describeError } from "../src/errors.ts";
import { Logger, memorySink } from "../src/log.ts";

const dec = new TextDecoder();

const unavailable = await s3ServerUnavailable("moto");
if (unavailable !== undefined && !isCi()) {
  // deno-lint-ignore no-console
  console.warn(`s3_faults_test: skipping: ${unavailable}`);
}
const ignore = unavailable !== undefined && !isCi();

const E500: ProxyFault = { kind: "status", status: 500, code: "InternalError" };
const E503: ProxyFault = { kind: "status", status: 503, code: "SlowDown" };
const RESET: ProxyFault = { kind: "reset" };
const RESET_MID: ProxyFault = { kind: "reset", midResponse: true };

/** Fault modes, each applied to every request for one phase. */
const MODES: Record<string, FaultMode> = {
  "5xx (500 InternalError, 503 SlowDown)": { faults: [E500, E503] },
  "connection resets (before and in the middle of the answer)": { faults: [RESET, RESET_MID] },
  "20 % of requests fail at random": { faults: [E500, E503, RESET, RESET_MID], rate: 0.2 },
};

/** Writes a config with one database and one S3 replica reached through `endpoint`. */
async function writeS3Config(
  file: string,
  db: string,
  server: S3TestServer,
  prefix: string,
  endpoint: string,
  addr?: string,
): Promise<string> {
  const lines = [
    ...(addr ? [`addr: "${addr}"`] : []),
    "dbs:",
    `  - path: ${db}`,
    "    monitor-interval: 100ms",
    "    min-checkpoint-page-count: 200",
    "    replicas:",
    "      - type: s3",
    `        bucket: ${server.bucket}`,
    `        path: ${prefix}`,
    `        endpoint: ${endpoint}`,
    "        region: us-east-1",
    "        force-path-style: true",
    `        access-key-id: ${server.accessKeyId}`,
    `        secret-access-key: ${server.secretAccessKey}`,
    "        sync-interval: 100ms",
  ];
  await Deno.writeTextFile(file, lines.join("\n") + "\n");
  return file;
}

/** Restores straight from the server (never through the proxy) and returns the dump. */
async function directDump(server: S3TestServer, prefix: string, dir: string): Promise<string> {
  const out = `${dir}/direct-${crypto.randomUUID().slice(0, 8)}.db`;
  await using client = new S3ReplicaClient(server.clientOptions(prefix));
  try {
    await restore(client, { outputPath: out });
    assert.equal(await integrity(out), "ok");
    return await dump(out);
  } finally {
    for (const p of [out, `${out}-wal`, `${out}-shm`]) await Deno.remove(p).catch(() => {});
  }
}

/** Waits until the replica restores to the database's current content; returns the ms. */
async function timeToCatchUp(
  server: S3TestServer,
  prefix: string,
  db: string,
  dir: string,
): Promise<number> {
  const t0 = performance.now();
  const source = await dump(db);
  await waitFor(
    async () => {
      try {
        return await directDump(server, prefix, dir) === source;
      } catch {
        return false; // caught between a segment and the next; look again
      }
    },
    30_000,
    "the replica to catch up",
  );
  return Math.round(performance.now() - t0);
}

/** The value of a Prometheus metric in `text` (the first series). */
function metric(text: string, name: string): number {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, "m").exec(text);
  if (!m) throw new Error(`No metric ${name} in:\n${text}`);
  return Number(m[1]);
}

/** One row of the printed figures. */
function figures(name: string, proxy: S3Proxy, from: number, extra: string): string {
  const s = proxy.stats(from);
  return `  ${name}: ${s.requests} requests, ${s.faults} faults injected, ` +
    `${s.sdkRetries} SDK retries, ${s.repeats} repeated keys (at most ${s.maxPerKey} ` +
    `requests for one), ${extra}`;
}

function log(line: string): void {
  // deno-lint-ignore no-console
  console.log(line);
}

Deno.test({
  name: "S3 behind a fault proxy (moto): replication catches up, restores are right or one line",
  ignore,
  async fn(t) {
    // A moto_server on PATH that would fail every test if it were used.
    await using fake = await tempDir();
    await Deno.writeTextFile(`${fake.path}/moto_server`, "#!/bin/sh\necho fake >&2\nexit 3\n");
    await Deno.chmod(`${fake.path}/moto_server`, 0o755);
    const path = Deno.env.get("PATH") ?? "";
    Deno.env.set("PATH", `${fake.path}:${path}`);
    let server: S3TestServer;
    try {
      server = await startS3Server("moto");
    } finally {
      Deno.env.set("PATH", path);
    }
    await using _server = server;
    await using proxy = await startS3Proxy(server.endpoint);
    await using dir = await tempDir();
    const db = `${dir.path}/app.db`;
    const prefix = `faults-${crypto.randomUUID().slice(0, 8)}/db`;

    await t.step("the moto started is the pinned version, not a moto_server on PATH", async () => {
      assert.equal(server.version, await pinnedMotoVersion());
    });

    await t.step("replication through each fault mode catches up when it stops", async () => {
      await using w = new Writer(db);
      await prepareWriter(w);
      await createLoadDb(w);
      const addr = `127.0.0.1:${closedPort()}`;
      const config = await writeS3Config(
        `${dir.path}/litestream.yml`,
        db,
        server,
        prefix,
        proxy.endpoint,
        addr,
      );
      const failedSyncs = async () =>
        metric(
          await (await fetch(`http://${addr}/metrics`)).text(),
          "litestream_replica_sync_error_count",
        );
      await using daemon = Daemon.ours(["replicate", "-config", config]);
      await withLogs([daemon], async () => {
        await writeLoad(w, { txns: 5, tag: "before" });
        await timeToCatchUp(server, prefix, db, dir.path);

        for (const [name, mode] of Object.entries(MODES)) {
          // The fault lasts until the store saw 10 faults and the writer made 30 commits;
          // where every request fails, also until the replica gave up a sync (after the
          // SDK's 5 attempts).
          const from = proxy.requests.length;
          const failedBefore = await failedSyncs();
          const rowsBefore = await rowCount(w);
          proxy.setFaultMode(mode);
          let txns = 0;
          await waitFor(
            async () => {
              await writeLoad(w, { txns: 5, tag: `${txns}` });
              txns += 5;
              return txns >= 30 && proxy.stats(from).faults >= 10 &&
                ((mode.rate ?? 1) < 1 || await failedSyncs() > failedBefore);
            },
            30_000,
            `phase "${name}"`,
          );
          proxy.setFaultMode(undefined);
          const failed = await failedSyncs() - failedBefore;
          const catchUpMs = await timeToCatchUp(server, prefix, db, dir.path);
          log(figures(
            name,
            proxy,
            from,
            `${failed} failed syncs, ${txns} commits; caught up ${catchUpMs} ms after`,
          ));
          // None of the application's commits failed: 5 transactions add 23 rows.
          assert.equal(await rowCount(w), rowsBefore + (txns / 5) * 23);
        }
        const stopped = await daemon.stopCleanly("SIGTERM");
        assert.equal(await integrity(db), "ok");
        assert.equal(await directDump(server, prefix, dir.path), await dump(db));
        await using client = new S3ReplicaClient(server.clientOptions(prefix));
        assert.equal((await client.generations()).length, 1, "no new generation was needed");
        // Each distinct error is logged once, however often it recurred.
        const errors = stopped.split("\n").filter((l) => /level=ERROR/.test(l));
        assert.ok(errors.every((l) => /msg="replica sync failed"/.test(l)), errors.join("\n"));
        const distinct = new Set(errors.map((l) => /error="((?:[^"\\]|\\.)*)"/.exec(l)?.[1]));
        log(`  error lines: ${errors.length}, distinct errors: ${distinct.size}`);
        assert.equal(errors.length, distinct.size, errors.join("\n"));
      });
    });

    await t.step("restore through each fault mode: right content, or one line", async () => {
      const source = await dump(db);
      const config = await writeS3Config(
        `${dir.path}/restore.yml`,
        db,
        server,
        prefix,
        proxy.endpoint,
      );
      const objects = /\.lz4(\?|$)/; // snapshot and WAL segment downloads, not listings
      const cases: [string, FaultMode, "fails" | "either"][] = [
        ["500 on every request", { faults: [E500] }, "fails"],
        ["a reset before every answer", { faults: [RESET] }, "fails"],
        [
          "a reset in the middle of every download",
          { faults: [RESET_MID], method: "GET", url: objects },
          "fails",
        ],
        ...[1, 2].map((seed): [string, FaultMode, "either"] => [
          `20 % at random (seed ${seed})`,
          { ...MODES["20 % of requests fail at random"], seed },
          "either",
        ]),
      ];
      for (const [name, mode, expect] of cases) {
        const out = `${dir.path}/restored-${crypto.randomUUID().slice(0, 8)}.db`;
        const from = proxy.requests.length;
        proxy.setFaultMode(mode);
        const t0 = performance.now();
        const o = await cli(["restore", "-config", config, "-o", out, db]).output();
        const ms = Math.round(performance.now() - t0);
        proxy.setFaultMode(undefined);
        const stderr = dec.decode(o.stderr);
        log(figures(
          `restore, ${name}`,
          proxy,
          from,
          `exit ${o.code} in ${ms} ms${o.code ? `: ${stderr.trim()}` : ""}`,
        ));
        if (o.code === 0) {
          assert.equal(expect, "either", `restore with ${name} cannot succeed`);
          assert.equal(await integrity(out), "ok");
          assert.equal(await dump(out), source, `restore with ${name}: content`);
          continue;
        }
        // Progress log lines (as v0.3.13 prints them) may come first; the error is one line.
        const lines = stderr.trimEnd().split("\n").filter((l) => !/^time=\S+ level=/.test(l));
        assert.equal(lines.length, 1, `restore with ${name}: one line, got:\n${stderr}`);
        assert.match(lines[0], /^litestream: Cannot /);
        const base = out.slice(out.lastIndexOf("/") + 1);
        const left = (await Array.fromAsync(Deno.readDir(dir.path))).filter((e) =>
          e.name.includes(base)
        );
        assert.deepEqual(left, [], "no partial database or work file left");
      }
    });

    await t.step(
      "a stall longer than the client's timeout is retried; replication catches up",
      async () => {
        // Through the library: the client's idle timeout (120 s by default) is an option there.
        const stallPrefix = `stall-${crypto.randomUUID().slice(0, 8)}/db`;
        const stallDb = `${dir.path}/stall.db`;
        await using w = new Writer(stallDb);
        await prepareWriter(w);
        await createLoadDb(w);
        const sink = memorySink("info");
        const d = new Db(stallDb, { monitorIntervalMs: 100, logger: new Logger(sink) });
        await d.open();
        const client = new S3ReplicaClient({
          ...server.clientOptions(stallPrefix),
          endpoint: proxy.endpoint,
          idleTimeoutMs: 1000,
        });
        const replica = new Replica(d, client, { syncIntervalMs: 100, logger: new Logger(sink) });
        replica.open();
        try {
          await writeLoad(w, { txns: 5, tag: "before" });
          await timeToCatchUp(server, stallPrefix, stallDb, dir.path);

          const from = proxy.requests.length;
          proxy.setFaultMode({ faults: [{ kind: "stall" }] });
          let txns = 0;
          await waitFor(
            async () => {
              await writeLoad(w, { txns: 5, tag: `${txns}` });
              txns += 5;
              // The SDK gave up on a stalled attempt and sent the next one.
              return proxy.stats(from).sdkRetries >= 2;
            },
            20_000,
            "a stalled request to time out and be retried",
          );
          proxy.setFaultMode(undefined);
          const catchUpMs = await timeToCatchUp(server, stallPrefix, stallDb, dir.path);
          log(figures(
            "stall longer than the 1 s idle timeout",
            proxy,
            from,
            `${txns} commits; caught up ${catchUpMs} ms after`,
          ));

          // A restore whose downloads stall half-way fails after the timeout, with one line.
          const from2 = proxy.requests.length;
          proxy.setFaultMode({
            faults: [{ kind: "stall", midResponse: true }],
            method: "GET",
            url: /\.lz4(\?|$)/,
          });
          const t0 = performance.now();
          const err = await restore(client, { outputPath: `${dir.path}/stalled.db` }).then(
            () => undefined,
            (e) => e,
          );
          const ms = Math.round(performance.now() - t0);
          proxy.setFaultMode(undefined);
          log(figures("restore, downloads stall half-way", proxy, from2, `failed in ${ms} ms`));
          assert.ok(err instanceof Error, "the restore fails");
          const line = describeError(err);
          log(`    ${line}`);
          assert.match(line, /timed out/);
          assert.doesNotMatch(line, /\n/);
          await assert.rejects(Deno.stat(`${dir.path}/stalled.db`), Deno.errors.NotFound);
        } finally {
          await replica.close();
          await d.close();
          await client.close();
        }
        assert.equal(await directDump(server, stallPrefix, dir.path), await dump(stallDb));
      },
    );
  },
});
