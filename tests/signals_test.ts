/**
 * Our `replicate` stopped the ways terminals and task runners stop it: one Ctrl-C delivered
 * twice (by the terminal and again by `npx` or `deno task` forwarding it), SIGINT then
 * SIGTERM, Ctrl-C reaching the whole process group with an `-exec` child, and the README's
 * own `deno task replicate` command. Signals after the first must be absorbed: their default
 * action would kill the final sync. So every test commits a few megabytes right before the
 * signals and restores the replica afterwards: a killed final sync loses those commits.
 *
 * @module
 */
import assert from "node:assert/strict";
import { dump, REPO, tempDir, waitFor, Writer } from "./_helpers.ts";
import {
  createLoadDb,
  Daemon,
  killGroup,
  ok,
  prepareWriter,
  runOurs,
  settled,
  signalGroup,
  sleep,
  startInNewGroup,
  waitForReplica,
  withLogs,
  writeConfig,
  writeLoad,
} from "./_daemon.ts";

/** Time between two deliveries of one Ctrl-C, as a task runner forwarding it leaves. */
const SIGNAL_GAP_MS = 2;

/** A database with an open writer; `replica` is the directory of its file replica. */
interface Fixture {
  dir: string;
  db: string;
  replica: string;
  config: string;
  w: Writer;
}

/**
 * Creates the database and a config whose replica uploads once an hour: after the first
 * upload, only the final sync can ship what is committed.
 */
async function setup(dir: string): Promise<Fixture> {
  const db = `${dir}/app.db`, replica = `${dir}/replica`;
  const w = new Writer(db);
  await prepareWriter(w);
  await createLoadDb(w);
  const config = await writeConfig(`${dir}/litestream.yml`, db, replica, {
    replica: { "sync-interval": "1h" },
  });
  return { dir, db, replica, config, w };
}

/**
 * Commits about `mb` megabytes, the last row tagged `tag`: with the replica's hour-long sync
 * interval, the final sync has to compress and upload it all, which takes far longer than
 * {@linkcode SIGNAL_GAP_MS}. With `settle`, also waits until the database's own sync has
 * copied it into the shadow WAL, so the process is idle when the first signal arrives and the
 * next one cannot merge with it (the kernel and Deno deliver a pending signal once).
 */
async function commitBeforeStop(
  fx: Fixture,
  tag: string,
  options: { mb?: number; settle?: boolean } = {},
): Promise<void> {
  const { mb = 3, settle = true } = options;
  await writeLoad(fx.w, { txns: 7 * mb, rows: 50, blob: 3000, pauseMs: 0, tag });
  await fx.w.exec(`INSERT INTO t (v) VALUES ('last before ${tag}')`);
  if (settle) await settled(`${fx.dir}/.app.db-litestream`);
}

/** Restores the replica with our CLI and asserts it equals the source, last commit included. */
async function assertReplicaComplete(fx: Fixture, tag: string): Promise<void> {
  const out = `${fx.dir}/restored-${crypto.randomUUID()}.db`;
  ok(await runOurs(["restore", "-o", out, `file://${fx.replica}`]), "restore");
  const restored = await dump(out);
  assert.match(restored, new RegExp(`'last before ${tag}'`));
  assert.equal(restored, await dump(fx.db));
}

/** Sends `signals` to the daemon alone, {@linkcode SIGNAL_GAP_MS} apart; waits for its exit. */
async function sendSignals(daemon: Daemon, signals: Deno.Signal[]) {
  for (const signal of signals.slice(0, -1)) {
    daemon.child.kill(signal);
    await sleep(SIGNAL_GAP_MS);
  }
  return await daemon.stop(signals.at(-1));
}

/** Sends Ctrl-C to the daemon's process group `times` times, 2 ms apart; waits for the exit. */
async function pressCtrlC(daemon: Daemon, times: number) {
  for (let i = 0; i < times; i++) {
    if (i > 0) await sleep(SIGNAL_GAP_MS);
    signalGroup(daemon, "SIGINT");
  }
  await waitFor(() => !daemon.running, 20_000, `${daemon.name} to exit after Ctrl-C`);
  return await daemon.stop(); // sends nothing more: it exited
}

/**
 * Returns as soon as `daemon` logged a line matching `pattern` (or exited), polling every
 * millisecond: what the test does next must happen while the step it waits for still runs.
 */
async function promptlyAfter(daemon: Daemon, pattern: RegExp): Promise<void> {
  const end = Date.now() + 30_000;
  while (!pattern.test(daemon.log) && daemon.running) {
    if (Date.now() > end) throw new Error(`Timed out waiting for ${pattern} in the log`);
    await sleep(1);
  }
}

/** `deno run main.ts <args>` with every permission, for {@linkcode startInNewGroup}. */
function ourArgv(args: string[]): string[] {
  return [Deno.execPath(), "run", "-A", `${REPO}/main.ts`, ...args];
}

/** The log line saying `signal` arrived during the shutdown and was absorbed. */
function absorbed(signal: Deno.Signal): RegExp {
  return new RegExp(`msg="signal received again, still shutting down" signal=${signal}\\b`);
}

// ---------------------------------------------------------------------------------------
// Repeated signals to our process alone

for (
  const signals of [
    ["SIGINT", "SIGINT"],
    ["SIGTERM", "SIGINT"],
    ["SIGINT", "SIGTERM", "SIGINT"],
  ] as Deno.Signal[][]
) {
  const tag = signals.join("-");
  Deno.test(`${signals.join(" then ")} 2 ms apart: our replicate absorbs the later ones, syncs and exits 0`, async () => {
    await using dir = await tempDir();
    const fx = await setup(dir.path);
    await using _w = fx.w;
    await using daemon = Daemon.ours(["replicate", "-config", fx.config]);
    await withLogs([daemon], async () => {
      await waitForReplica(fx.replica, 1, 15_000, daemon);
      await commitBeforeStop(fx, tag);
      const r = await sendSignals(daemon, signals);
      assert.deepEqual([r.code, r.signal], [0, null], "exit status");
      assert.match(
        r.log,
        new RegExp(`signal received, litestream shutting down" signal=${signals[0]}\\b`),
      );
      for (const later of signals.slice(1)) assert.match(r.log, absorbed(later));
      assert.match(r.log, /litestream shut down/);
      await assertReplicaComplete(fx, tag);
    });
  });
}

Deno.test("SIGINT then SIGINT 2 ms apart during startup: our replicate syncs once opened, exits 0", async () => {
  await using dir = await tempDir();
  const fx = await setup(dir.path);
  await using _w = fx.w;
  // A large WAL makes the first sync (copying it into the shadow WAL) take a while.
  await fx.w.exec("PRAGMA wal_autocheckpoint = 0");
  await writeLoad(fx.w, { txns: 4, rows: 500, blob: 3000, pauseMs: 0, tag: "big" });
  await fx.w.exec("INSERT INTO t (v) VALUES ('last before startup')");
  // With -exec: a signal during startup means that no child is started at all; one after it
  // is forwarded to the child. Either way the exit is 0.
  const daemon = startInNewGroup(
    "ours",
    ourArgv(["replicate", "-config", fx.config, "-exec", "sleep 30"]),
  );
  try {
    await withLogs([daemon], async () => {
      await promptlyAfter(daemon, /initialized db/);
      const r = await sendSignals(daemon, ["SIGINT", "SIGINT"]);
      assert.deepEqual([r.code, r.signal], [0, null], "exit status");
      assert.match(r.log, /litestream shut down/);
      await assertReplicaComplete(fx, "startup");
    });
  } finally {
    await killGroup(daemon);
  }
});

// ---------------------------------------------------------------------------------------
// -exec: the child is stopped too, and its death by the signal is no failure

Deno.test("replicate -exec: two SIGINTs 2 ms apart stop the child, then a final sync, exit 0", async () => {
  await using dir = await tempDir();
  const fx = await setup(dir.path);
  await using _w = fx.w;
  const daemon = startInNewGroup(
    "ours",
    ourArgv(["replicate", "-config", fx.config, "-exec", "sleep 30"]),
  );
  try {
    await withLogs([daemon], async () => {
      await waitForReplica(fx.replica, 1, 15_000, daemon);
      await commitBeforeStop(fx, "exec");
      const r = await sendSignals(daemon, ["SIGINT", "SIGINT"]);
      assert.deepEqual([r.code, r.signal], [0, null], "exit status");
      assert.match(r.log, absorbed("SIGINT"));
      await assertReplicaComplete(fx, "exec");
    });
  } finally {
    await killGroup(daemon); // also the `sleep` if it survived
  }
});

Deno.test("replicate -exec: Ctrl-C to the process group (child and us) ends in a final sync, exit 0", async () => {
  await using dir = await tempDir();
  const fx = await setup(dir.path);
  await using _w = fx.w;
  const daemon = startInNewGroup(
    "ours",
    ourArgv(["replicate", "-config", fx.config, "-exec", "sleep 30"]),
  );
  try {
    await withLogs([daemon], async () => {
      await waitForReplica(fx.replica, 1, 15_000, daemon);
      await commitBeforeStop(fx, "group", { settle: false });
      // The child dies of the SIGINT, maybe before ours reaches our listener.
      const r = await pressCtrlC(daemon, 1);
      assert.deepEqual([r.code, r.signal], [0, null], "exit status");
      assert.match(r.log, /litestream shut down/);
      await assertReplicaComplete(fx, "group");
    });
  } finally {
    await killGroup(daemon);
  }
});

Deno.test("replicate -exec: the child dies of Ctrl-C first, ours comes during the final sync, exit 0", async () => {
  await using dir = await tempDir();
  const fx = await setup(dir.path);
  await using _w = fx.w;
  const pidFile = `${fx.dir}/child.pid`;
  const daemon = startInNewGroup(
    "ours",
    ourArgv([
      "replicate",
      "-config",
      fx.config,
      "-exec",
      `sh -c 'echo $$ > ${pidFile}; exec sleep 30'`,
    ]),
  );
  try {
    await withLogs([daemon], async () => {
      await waitForReplica(fx.replica, 1, 15_000, daemon);
      await waitFor(async () => /^\d+\n$/.test(await Deno.readTextFile(pidFile).catch(() => "")));
      await commitBeforeStop(fx, "child-first", { mb: 6 });
      // The order a Ctrl-C can take: we see the child's death first and start the shutdown as
      // after a failure of it; the terminal's SIGINT to us arrives during the final sync.
      Deno.kill(Number(await Deno.readTextFile(pidFile)), "SIGINT");
      await promptlyAfter(daemon, /subprocess exited/);
      const r = await daemon.stop("SIGINT");
      assert.match(r.log, /msg="signal received, already shutting down" signal=SIGINT/);
      assert.deepEqual([r.code, r.signal], [0, null], "exit status");
      await assertReplicaComplete(fx, "child-first");
    });
  } finally {
    await killGroup(daemon);
  }
});

// ---------------------------------------------------------------------------------------
// The README's command, stopped as a terminal stops it

/** `deno task replicate` exits with our status; `npx` (npm 10+) reports the Ctrl-C itself. */
const TASK_RUNNERS = [
  { name: "deno task", argv: [Deno.execPath(), "task"], exitsZero: true },
  { name: "npx -y deno@2.9.6 task", argv: ["npx", "-y", "deno@2.9.6", "task"], exitsZero: false },
];

for (const runner of TASK_RUNNERS) {
  for (const times of [1, 2]) {
    Deno.test(`${runner.name} replicate DB URL: ${times}x Ctrl-C ends in a complete final sync`, async () => {
      await using dir = await tempDir();
      const fx = await setup(dir.path);
      await using _w = fx.w;
      // The README's form: a database and a replica URL, default settings; run from the repo
      // root, where deno.json is, so every path is absolute.
      const daemon = startInNewGroup(
        runner.name,
        [...runner.argv, "replicate", fx.db, `file://${fx.replica}`],
        { cwd: REPO },
      );
      try {
        await withLogs([daemon], async () => {
          await waitForReplica(fx.replica, 1, 60_000, daemon);
          const tag = `task-${times}`;
          await commitBeforeStop(fx, tag, { settle: false });
          const r = await pressCtrlC(daemon, times);
          if (runner.exitsZero) {
            assert.deepEqual([r.code, r.signal], [0, null], "exit status");
          } else {
            // npm's `sh -c` (dash) defers the Ctrl-C it got and re-raises it after its child
            // exited, and npm then kills itself the same way: 130 whatever we return. Our own
            // clean exit shows in the log.
            assert.ok(r.code === 0 || r.signal === "SIGINT", `exit status ${r.code}/${r.signal}`);
          }
          assert.match(r.log, /signal received, litestream shutting down/);
          assert.match(r.log, /litestream shut down/);
          await assertReplicaComplete(fx, tag);
        });
      } finally {
        await killGroup(daemon);
      }
    });
  }
}
