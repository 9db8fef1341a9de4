/**
 * Storage faults under a file replica, on real mounts: the replica's directory turns
 * read-only and then writable again; the disk holding the replica, or the one holding the
 * shadow WAL (`meta-path`), fills up and then frees space. Each case runs our daemon
 * (`main.ts replicate`) while a `sqlite3` process keeps committing. None of its commits may
 * fail, the fault shows as one clear error in the log (not one per commit), replication
 * resumes once the disk is usable again, and a final restore equals the source.
 *
 * The disks are small tmpfs mounts (`mount -t tmpfs -o size=…`), made read-only with
 * `mount -o remount,ro`: we run as root, which ignores file modes, so `chmod` cannot make a
 * directory read-only here. Where mounting is not allowed the tests are skipped with the
 * reason (under CI=true they fail instead).
 *
 * @module
 */
import assert from "node:assert/strict";
import { dump, integrity, tempDir, waitFor, Writer } from "./_helpers.ts";
import {
  createLoadDb,
  Daemon,
  prepareWriter,
  replicaFiles,
  rowCount,
  waitForReplica,
  withLogs,
  writeConfig,
  writeLoad,
} from "./_daemon.ts";
import { closedPort, isCi } from "./_s3_servers.ts";
import { FileReplicaClient } from "../src/clients/file.ts";
import { restore } from "../src/restore.ts";

const dec = new TextDecoder();

/** Runs `mount` or `umount` with `args`; returns its stderr, or `undefined` on success. */
async function mountCmd(program: "mount" | "umount", args: string[]): Promise<string | undefined> {
  try {
    const o = await new Deno.Command(program, { args, stdout: "null", stderr: "piped" }).output();
    return o.success ? undefined : dec.decode(o.stderr).trim() || `${program} exited ${o.code}`;
  } catch (err) {
    return `${program}: ${(err as Error).message}`;
  }
}

/** A tmpfs of `size` bytes mounted on a new directory; unmounted on dispose. */
class Tmpfs implements AsyncDisposable {
  readonly path: string;
  #ballast = 0;

  private constructor(path: string) {
    this.path = path;
  }

  static async mount(path: string, size: number): Promise<Tmpfs> {
    await Deno.mkdir(path, { recursive: true });
    const err = await mountCmd("mount", ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", path]);
    if (err) throw new Error(`Cannot mount a tmpfs on "${path}": ${err}`);
    return new Tmpfs(path);
  }

  /**
   * Remounts read-only or writable. The kernel refuses `ro` (busy) while a file on it is
   * open for writing, as during one of the replicator's writes: try again until it is not.
   */
  async remount(mode: "ro" | "rw"): Promise<void> {
    let err: string | undefined;
    await waitFor(
      async () =>
        (err = await mountCmd("mount", ["-o", `remount,${mode}`, this.path])) === undefined,
      10_000,
      `remount ${mode} of ${this.path} (${err})`,
    );
  }

  /** Fills the disk: writes a ballast file until the file system has no space left. */
  async fill(): Promise<void> {
    const path = `${this.path}/ballast-${this.#ballast++}`;
    using f = await Deno.open(path, { write: true, create: true });
    for (const chunk of [new Uint8Array(1 << 20), new Uint8Array(4096)]) {
      for (;;) {
        try {
          await f.write(chunk);
        } catch {
          break; // ENOSPC: try smaller writes, then stop
        }
      }
    }
  }

  /** Deletes the ballast: space returns. */
  async free(): Promise<void> {
    for (let i = 0; i < this.#ballast; i++) await Deno.remove(`${this.path}/ballast-${i}`);
    this.#ballast = 0;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    // Lazy: a process still holding a file there must not keep the test from cleaning up.
    await mountCmd("umount", ["-l", this.path]);
  }
}

/** Why tmpfs mounts cannot be used here, or `undefined` if they can. */
async function mountUnavailable(): Promise<string | undefined> {
  const dir = await Deno.makeTempDir({ prefix: "litestream-mount-probe-" });
  try {
    const err = await mountCmd("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", dir]);
    if (err) return `cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): ${err}`;
    await mountCmd("umount", [dir]);
    return undefined;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

const unavailable = await mountUnavailable();
if (unavailable !== undefined && !isCi()) {
  // deno-lint-ignore no-console
  console.warn(`file_faults_test: skipping: ${unavailable}`);
}
const ignore = unavailable !== undefined && !isCi();

/** Log lines at level ERROR in `log` from character `from` on. */
function errorLines(log: string, from = 0): string[] {
  return log.slice(from).split("\n").filter((l) => /level=ERROR/.test(l));
}

/** The value of a Prometheus metric in `text` (the first series). */
function metric(text: string, name: string): number {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, "m").exec(text);
  if (!m) throw new Error(`No metric ${name} in:\n${text}`);
  return Number(m[1]);
}

/** Restores the replica at `root` into a new file of `dir` and returns its dump. */
async function restoredDump(root: string, dir: string): Promise<string> {
  const out = `${dir}/restored-${crypto.randomUUID().slice(0, 8)}.db`;
  try {
    await restore(new FileReplicaClient(root), { outputPath: out });
    assert.equal(await integrity(out), "ok");
    return await dump(out);
  } finally {
    for (const p of [out, `${out}-wal`, `${out}-shm`]) await Deno.remove(p).catch(() => {});
  }
}

/** Waits until a restore of the replica at `root` equals the database `db`; returns the ms. */
async function timeToCatchUp(root: string, db: string, dir: string): Promise<number> {
  const t0 = performance.now();
  const source = await dump(db);
  await waitFor(
    async () => {
      try {
        return await restoredDump(root, dir) === source;
      } catch {
        return false; // caught between two writes of the replicator; look again
      }
    },
    20_000,
    `the replica at ${root} to catch up`,
  );
  return Math.round(performance.now() - t0);
}

/** How one fault is caused and undone, and what its error says. */
interface Fault {
  /** Where the tmpfs goes: the replica directory or the meta directory (shadow WAL). */
  disk: "replica" | "meta";
  apply(fs: Tmpfs): Promise<void>;
  undo(fs: Tmpfs): Promise<void>;
  /** The error line the fault must cause. */
  error: RegExp;
}

const FAULTS: Record<string, Fault> = {
  "the replica directory becomes read-only, then writable again": {
    disk: "replica",
    apply: (fs) => fs.remount("ro"),
    undo: (fs) => fs.remount("rw"),
    error: /replica sync failed.*Read-only file system/,
  },
  "the disk holding the replica fills up, then space returns": {
    disk: "replica",
    apply: (fs) => fs.fill(),
    undo: (fs) => fs.free(),
    error: /replica sync failed.*No space left on device/,
  },
  "the disk holding the shadow WAL fills up, then space returns": {
    disk: "meta",
    apply: (fs) => fs.fill(),
    undo: (fs) => fs.free(),
    error: /msg="sync failed".*shadow WAL.*No space left on device/,
  },
};

for (const [name, fault] of Object.entries(FAULTS)) {
  Deno.test({
    name: `file replica: ${name}: one error line, no commit fails, replication resumes`,
    ignore,
    async fn() {
      await using dir = await tempDir();
      const db = `${dir.path}/app.db`;
      const replica = `${dir.path}/replica`;
      const meta = `${dir.path}/meta`;
      await using fs = await Tmpfs.mount(fault.disk === "replica" ? replica : meta, 16 << 20);
      await using w = new Writer(db);
      await prepareWriter(w);
      await createLoadDb(w);
      const addr = `127.0.0.1:${closedPort()}`;
      const config = await writeConfig(`${dir.path}/litestream.yml`, db, replica, {
        db: { "meta-path": meta, "monitor-interval": "100ms", "min-checkpoint-page-count": 50 },
      });
      await Deno.writeTextFile(config, `addr: "${addr}"\n${await Deno.readTextFile(config)}`);
      /** Failed syncs so far, of the database (shadow WAL) and of the replica. */
      const failedSyncs = async () => {
        const text = await (await fetch(`http://${addr}/metrics`)).text();
        return metric(text, "litestream_sync_error_count") +
          metric(text, "litestream_replica_sync_error_count");
      };
      await using daemon = Daemon.ours(["replicate", "-config", config]);
      await withLogs([daemon], async () => {
        await waitForReplica(replica, 1, 15_000, daemon);
        await writeLoad(w, { txns: 10, tag: "before" });
        await timeToCatchUp(replica, db, dir.path);

        // The fault: the application keeps committing until the replicator tried three
        // times (retrying after 1 s, then 2 s).
        const from = daemon.log.length;
        const rowsBefore = await rowCount(w);
        const failedBefore = await failedSyncs();
        await fault.apply(fs);
        const t0 = performance.now();
        let txns = 0;
        await waitFor(
          async () => {
            await writeLoad(w, { txns: 5, tag: `during-${txns}` });
            txns += 5;
            return txns >= 50 && await failedSyncs() - failedBefore >= 3;
          },
          20_000,
          "three failed syncs",
        );
        const faultMs = Math.round(performance.now() - t0);
        const failures = await failedSyncs() - failedBefore;
        const errors = errorLines(daemon.log, from);
        // Every commit landed: each batch of 5 inserts 25 rows and deletes 2.
        assert.equal(await rowCount(w), rowsBefore + (txns / 5) * 23);
        assert.equal(await integrity(db), "ok");

        await fault.undo(fs);
        const catchUpMs = await timeToCatchUp(replica, db, dir.path);
        // deno-lint-ignore no-console
        console.log(
          `  ${name}: ${txns} commits in ${faultMs} ms of fault, ${failures} failed syncs, ` +
            `${errors.length} error line(s), caught up ${catchUpMs} ms after it ended\n` +
            `    ${errors[0]}`,
        );
        assert.match(errors[0] ?? "no error line", fault.error);
        assert.equal(errors.length, 1, `one error line, got:\n${errors.join("\n")}`);
        const resumed = fault.disk === "replica"
          ? /msg="replica sync resumed"/
          : /msg="sync resumed"/;
        await waitFor(() => resumed.test(daemon.log.slice(from)), 10_000, "the resumed line");

        await daemon.stopCleanly("SIGTERM");
        assert.equal(await restoredDump(replica, dir.path), await dump(db));
        const leftovers = (await replicaFiles(replica)).filter((f) => f.path.endsWith(".tmp"));
        assert.deepEqual(leftovers, [], "failed writes left no temporary file");
      });
    },
  });
}
