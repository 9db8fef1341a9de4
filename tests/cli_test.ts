/**
 * The command line as users run it: `main.ts` in a subprocess with exactly the permissions
 * of the deno.json tasks, in a temporary directory, against real databases written by the
 * `sqlite3` CLI. Every failure must exit with the documented code, print ONE line on stderr
 * naming the problem, and write nothing at all.
 *
 * @module
 */
import assert from "node:assert/strict";
import denoJson from "../deno.json" with { type: "json" };
import { createDb, dump, integrity, REPO, sqliteAsync, tempDir, Writer } from "./_helpers.ts";
import { createLoadDb, parseTable, prepareWriter, runOracle, writeLoad } from "./_daemon.ts";

const MAIN = `${REPO}/main.ts`;
const dec = new TextDecoder();

/** The `--allow-*` flags of a deno.json task. */
function taskPermissions(task: string): string[] {
  const line = (denoJson.tasks as Record<string, string>)[task];
  assert.ok(line, `deno.json has no task "${task}"`);
  const flags = line.split(/\s+/).filter((word) => word.startsWith("--allow-"));
  assert.ok(flags.length > 0, `task "${task}" grants no permission`);
  return flags;
}

/** `deno task replicate` and `deno task restore` grant less than `deno task litestream`. */
const PERMISSIONS: Record<string, string[]> = {
  replicate: taskPermissions("replicate"),
  /** `-exec` alone needs run access (see README "Permissions"). */
  exec: [...taskPermissions("replicate"), "--allow-run"],
  restore: taskPermissions("restore"),
  other: taskPermissions("litestream"),
};

/** Our environment without anything that would change what the CLI reads. */
function baseEnv(): Record<string, string> {
  const env = Deno.env.toObject();
  for (const key of Object.keys(env)) {
    if (/^(LITESTREAM_|AWS_)/.test(key)) delete env[key];
  }
  env.NO_COLOR = "1";
  return env;
}

interface RunOptions {
  /** Working directory of the process. */
  cwd: string;
  /** Variables added to {@linkcode baseEnv}. */
  env?: Record<string, string>;
  /** Deno permission flags instead of those of the task `args[0]` belongs to. */
  permissions?: string[];
}

/** What a finished CLI process left behind. */
interface Result {
  code: number;
  stdout: string;
  stderr: string;
  /** True if it had to be killed because it was still running after the deadline. */
  timedOut: boolean;
}

/** Spawns `main.ts <args>` with the permissions of the task `args[0]` belongs to. */
function spawn(args: string[], options: RunOptions): Deno.ChildProcess {
  const task = args[0] === "replicate" && args.includes("-exec") ? "exec" : args[0];
  const perms = options.permissions ?? PERMISSIONS[task] ?? PERMISSIONS.other;
  return new Deno.Command(Deno.execPath(), {
    args: ["run", ...perms, MAIN, ...args],
    cwd: options.cwd,
    env: { ...baseEnv(), ...options.env },
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

/** Runs the CLI to completion, killing it after `timeoutMs` (a hang is a failure, not a wait). */
async function run(
  args: string[],
  options: RunOptions & { timeoutMs?: number },
): Promise<Result> {
  const child = spawn(args, options);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill("SIGKILL");
  }, options.timeoutMs ?? 15_000);
  try {
    const out = await child.output();
    return {
      code: out.code,
      stdout: dec.decode(out.stdout),
      stderr: dec.decode(out.stderr),
      timedOut,
    };
  } finally {
    clearTimeout(timer);
  }
}

/** A long-running CLI process (`replicate`) whose output is collected while it runs. */
class Background implements AsyncDisposable {
  readonly child: Deno.ChildProcess;
  stdout = "";
  stderr = "";
  #exited?: Deno.CommandStatus;
  readonly #drained: Promise<unknown>;

  constructor(args: string[], options: RunOptions) {
    this.child = spawn(args, options);
    this.#drained = Promise.all([
      this.#drain(this.child.stdout, (s) => this.stdout += s),
      this.#drain(this.child.stderr, (s) => this.stderr += s),
    ]);
    this.child.status.then((s) => this.#exited = s);
  }

  async #drain(stream: ReadableStream<Uint8Array>, add: (s: string) => void): Promise<void> {
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) add(chunk);
  }

  /** Waits until the output matches `re`; fails if the process exits or `timeoutMs` passes. */
  async waitFor(re: RegExp, timeoutMs = 15_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (!re.test(this.stdout + this.stderr)) {
      if (this.#exited) {
        assert.fail(
          `exited (${this.#exited.code}) before printing ${re}:\n${this.stdout}${this.stderr}`,
        );
      }
      if (Date.now() > end) {
        assert.fail(`no ${re} within ${timeoutMs} ms:\n${this.stdout}${this.stderr}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Sends `signal` (unless it exited already) and waits for the exit; SIGKILL after 20 s. */
  async stop(signal: Deno.Signal = "SIGTERM"): Promise<Result> {
    if (!this.#exited) {
      try {
        this.child.kill(signal);
      } catch { /* exited meanwhile */ }
    }
    return await this.finish();
  }

  /** Waits for the process to exit on its own; SIGKILL after `timeoutMs`. */
  async finish(timeoutMs = 20_000): Promise<Result> {
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      this.child.kill("SIGKILL");
    }, timeoutMs);
    const status = await this.child.status;
    clearTimeout(timer);
    await this.#drained;
    return { code: status.code, stdout: this.stdout, stderr: this.stderr, timedOut };
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (!this.#exited) await this.stop("SIGKILL");
  }
}

/**
 * Asserts the process ended by itself with `code` and exactly one line on stderr,
 * `litestream: ...`, that contains every one of `names`. Returns that line.
 */
function assertOneLineError(r: Result, code: number, ...names: string[]): string {
  assert.ok(!r.timedOut, `still running at the deadline (killed); output:\n${r.stdout}${r.stderr}`);
  assert.equal(r.code, code, `exit code; stderr:\n${r.stderr}`);
  assert.match(r.stderr, /^litestream: [^\n]+\n$/, "stderr must be exactly one line");
  const line = r.stderr.trimEnd();
  for (const name of names) assert.ok(line.includes(name), `"${line}" does not name ${name}`);
  return line;
}

/** Every file and directory under `root` with a digest of its bytes. */
async function tree(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (rel: string) => {
    for await (const e of Deno.readDir(`${root}/${rel}`)) {
      const path = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory) {
        out[`${path}/`] = "dir";
        await walk(path);
      } else {
        const bytes = await Deno.readFile(`${root}/${path}`);
        const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
        out[path] = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
      }
    }
  };
  await walk("");
  return out;
}

/** Restores `url` with our CLI into `out` and returns its dump (Litestream's tables left out). */
async function restoredDump(url: string, out: string, cwd: string, ...flags: string[]) {
  const r = await run(["restore", ...flags, "-o", out, url], { cwd });
  assert.equal(r.code, 0, `restore failed:\n${r.stderr}`);
  assert.equal(await integrity(out), "ok");
  return await dump(out);
}

/** The generation directories of a file replica. */
async function generationsOf(replica: string): Promise<string[]> {
  return (await Array.fromAsync(Deno.readDir(`${replica}/generations`))).map((e) => e.name).sort();
}

const RFC3339_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/;
const GO_DURATION = /^-?(\d+h)?(\d+m)?(\d+(\.\d+)?(s|ms))$|^0s$/;

// ---------------------------------------------------------------------------------------
// Failures of `replicate`: the code, one line naming the problem, and nothing written.

interface FailureCase {
  name: string;
  /** Prepares `dir` (which holds a WAL-mode database `app.db`) and returns the arguments. */
  args: (dir: string) => string[] | Promise<string[]>;
  code: number;
  /** What the line must name; `DIR` is replaced by the test directory. */
  names: string[];
  env?: Record<string, string>;
}

const REPLICATE_FAILURES: FailureCase[] = [
  {
    name: "replicate exits 1 and names the file when it is not a SQLite database",
    args: async (dir) => {
      await Deno.writeTextFile(`${dir}/notes.txt`, "these are notes, not a database\n".repeat(10));
      return ["replicate", "notes.txt", `file://${dir}/replica`];
    },
    code: 1,
    names: ["DIR/notes.txt", "not a SQLite database"],
  },
  {
    name: "replicate exits 1 and names the missing directory of the database",
    args: (dir) => ["replicate", `${dir}/missing/app.db`, `file://${dir}/replica`],
    code: 1,
    names: ["DIR/missing", "does not exist"],
  },
  {
    name: "replicate exits 2 and names the scheme of an unknown replica URL",
    args: () => ["replicate", "app.db", "ftp://x"],
    code: 2,
    names: ["ftp"],
  },
  {
    name: "replicate exits 2 and names an unknown replica URL scheme",
    args: () => ["replicate", "app.db", "ftp://bucket/backups"],
    code: 2,
    names: ["ftp", "unknown replica URL scheme"],
  },
  {
    name: "replicate exits 2 when a database path has no replica URL",
    args: () => ["replicate", "app.db"],
    code: 2,
    names: ["app.db", "replica URL"],
  },
  {
    name: "replicate exits 2 and names an unknown flag",
    args: (dir) => ["replicate", "-foo", "app.db", `file://${dir}/replica`],
    code: 2,
    names: ["-foo"],
  },
  {
    name: "replicate exits 2 and names a flag that is missing its value",
    args: (dir) => ["replicate", "app.db", `file://${dir}/replica`, "-exec"],
    code: 2,
    names: ["-exec", "value"],
  },
  {
    name: "replicate exits 2 and names the line of malformed YAML in the config",
    args: async (dir) => {
      await Deno.writeTextFile(
        `${dir}/litestream.yml`,
        `dbs:\n  - path: ${dir}/app.db\n   replicas: [\n`,
      );
      return ["replicate", "-config", "litestream.yml"];
    },
    code: 2,
    names: ["DIR/litestream.yml", "line 3"],
  },
  {
    name: "replicate exits 2 and names the line of an unknown config key",
    args: async (dir) => {
      await Deno.writeTextFile(
        `${dir}/litestream.yml`,
        `dbs:\n  - path: ${dir}/app.db\n    replicas:\n      - url: file://${dir}/replica\n        colour: blue\n`,
      );
      return ["replicate", "-config", "litestream.yml"];
    },
    code: 2,
    names: ["DIR/litestream.yml", "line 5", '"colour"'],
  },
  {
    name: "replicate exits 2 and names a missing config file",
    args: () => ["replicate", "-config", "nowhere.yml"],
    code: 2,
    names: ["DIR/nowhere.yml", "not found"],
  },
  {
    name: "replicate exits 2 and names a missing $LITESTREAM_CONFIG file",
    args: () => ["replicate"],
    env: { LITESTREAM_CONFIG: "from-env.yml" },
    code: 2,
    names: ["DIR/from-env.yml", "not found"],
  },
];

for (const c of REPLICATE_FAILURES) {
  Deno.test(c.name, async () => {
    await using tmp = await tempDir();
    const dir = tmp.path;
    await createDb(`${dir}/app.db`);
    const args = await c.args(dir);
    const before = await tree(dir);
    const r = await run(args, { cwd: dir, env: c.env });
    assertOneLineError(r, c.code, ...c.names.map((n) => n.replace("DIR", dir)));
    assert.deepEqual(await tree(dir), before, "replicate wrote or changed files");
  });
}

Deno.test("replicate exits 1 and says why when the database cannot be put in WAL mode", async () => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  // A write version above 2 in the header (byte 18) makes SQLite open the file read-only,
  // whoever runs it (root included, which chmod cannot stop), so the journal mode can't change.
  const db = `${dir}/app.db`;
  await sqliteAsync(
    db,
    "CREATE TABLE t (id INTEGER PRIMARY KEY, v); INSERT INTO t (v) VALUES (1);",
  );
  const bytes = await Deno.readFile(db);
  bytes[18] = 3;
  await Deno.writeFile(db, bytes);
  // The premise, checked with the sqlite3 CLI on a copy: it cannot switch to WAL either.
  await using other = await tempDir();
  await Deno.copyFile(db, `${other.path}/copy.db`);
  await assert.rejects(
    sqliteAsync(`${other.path}/copy.db`, "PRAGMA journal_mode = wal;"),
    /readonly/,
  );
  const before = await tree(dir);
  const r = await run(["replicate", "app.db", `file://${dir}/replica`], {
    cwd: dir,
    timeoutMs: 6_000,
  });
  assertOneLineError(r, 1, db, "WAL");
  assert.deepEqual(await tree(dir), before, "replicate wrote or changed files");
});

Deno.test("replicate exits 1 with one line when it may not write the database, instead of retrying", async () => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  await sqliteAsync(`${dir}/app.db`, "CREATE TABLE t (v); INSERT INTO t VALUES (1);");
  const before = await tree(dir);
  // Write access to the replica only: Deno refuses the database and its shadow WAL.
  const r = await run(["replicate", "app.db", `file://${dir}/replica`], {
    cwd: dir,
    timeoutMs: 10_000,
    permissions: ["--allow-read", `--allow-write=${dir}/replica`, "--allow-env"],
  });
  assertOneLineError(r, 1, `${dir}/app.db`, "--allow-write");
  assert.deepEqual(await tree(dir), before, "replicate wrote or changed files");
});

// ---------------------------------------------------------------------------------------
// Commands that print and exit.

Deno.test("litestream exits 2 and names an unknown command on one line", async () => {
  await using tmp = await tempDir();
  const r = await run(["frobnicate"], { cwd: tmp.path });
  assertOneLineError(r, 2, '"frobnicate"');
  assert.equal(r.stdout, "");
});

Deno.test("help, -h and replicate -h print usage and exit 0; version prints the version", async () => {
  await using tmp = await tempDir();
  const cwd = tmp.path;
  const [help, dashH, helpRestore, replicateH, version] = await Promise.all([
    run(["help"], { cwd }),
    run(["-h"], { cwd }),
    run(["help", "restore"], { cwd }),
    run(["replicate", "-h"], { cwd }),
    run(["version"], { cwd }),
  ]);
  for (const r of [help, dashH, helpRestore, replicateH, version]) {
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, "");
  }
  for (const cmd of ["databases", "generations", "replicate", "restore", "snapshots", "wal"]) {
    assert.match(help.stdout, new RegExp(`^\\s+${cmd}\\s`, "m"));
  }
  assert.equal(dashH.stdout, help.stdout);
  assert.match(helpRestore.stdout, /-if-db-not-exists/);
  assert.match(helpRestore.stdout, /-timestamp/);
  assert.match(replicateH.stdout, /-exec/);
  assert.match(replicateH.stdout, /-config/);
  assert.match(version.stdout, /^v\d+\.\d+\.\d+\S*\n$/);
  assert.equal(version.stdout.trim(), `v${denoJson.version}`);
});

// ---------------------------------------------------------------------------------------
// One replicate run, then the listings read what it wrote.

Deno.test("replicate DB file://DIR under a sqlite3 writer", async (t) => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  const db = `${dir}/app.db`;
  const replica = `${dir}/replica`;
  const url = `file://${replica}`;
  await using w = new Writer(db);
  await prepareWriter(w);
  await createLoadDb(w);

  await t.step("exits 0 on SIGTERM after a final sync: the restore equals the source", async () => {
    await using daemon = new Background(["replicate", "app.db", url], { cwd: dir });
    await daemon.waitFor(/replicating to/);
    await writeLoad(w, { txns: 30, rows: 3, blob: 3000, pauseMs: 5, tag: "a" });
    // The last commit right before the signal: only the final sync can ship it.
    await w.exec("INSERT INTO t (v) VALUES ('last before SIGTERM')");
    const r = await daemon.stop("SIGTERM");
    assert.ok(!r.timedOut, `did not exit after SIGTERM:\n${r.stdout}${r.stderr}`);
    assert.equal(r.code, 0, `exit code; output:\n${r.stdout}${r.stderr}`);
    assert.equal(r.stderr, "");
    assert.match(r.stdout, /signal received/);
    const restored = await restoredDump(url, `${dir}/restored.db`, dir);
    assert.match(restored, /last before SIGTERM/);
    assert.equal(restored, await dump(db));
  });

  const generations = await generationsOf(replica);
  assert.equal(generations.length, 1);
  const [gen] = generations;

  await t.step("generations prints name, generation, lag, start and end", async () => {
    const r = await run(["generations", url], { cwd: dir });
    assert.equal(r.code, 0, r.stderr);
    const { header, rows } = parseTable(r.stdout);
    assert.deepEqual(header, ["name", "generation", "lag", "start", "end"]);
    assert.equal(rows.length, 1);
    const [name, g, lag, start, end] = rows[0];
    assert.deepEqual([name, g], ["file", gen]);
    assert.match(lag, GO_DURATION);
    assert.match(start, RFC3339_UTC);
    assert.match(end, RFC3339_UTC);
    assert.ok(start <= end);
    // The same as v0.3.13 prints for the same replica, except the lag, which is time-dependent.
    const oracle = await runOracle(["generations", url]);
    assert.equal(oracle.code, 0, oracle.stderr);
    const noLag = (s: string) => parseTable(s).rows.map((row) => row.toSpliced(2, 1));
    assert.deepEqual(noLag(r.stdout), noLag(oracle.stdout));
  });

  await t.step(
    "snapshots prints replica, generation, index, size and created, as v0.3.13",
    async () => {
      const r = await run(["snapshots", url], { cwd: dir });
      assert.equal(r.code, 0, r.stderr);
      const { header, rows } = parseTable(r.stdout);
      assert.deepEqual(header, ["replica", "generation", "index", "size", "created"]);
      assert.ok(rows.length >= 1);
      for (const [name, g, index, size, created] of rows) {
        assert.deepEqual([name, g], ["file", gen]);
        const file = `${replica}/generations/${gen}/snapshots/${
          Number(index).toString(16).padStart(8, "0")
        }.snapshot.lz4`;
        assert.equal(Number(size), (await Deno.stat(file)).size);
        assert.match(created, RFC3339_UTC);
      }
      const oracle = await runOracle(["snapshots", url]);
      assert.equal(r.stdout, oracle.stdout);
    },
  );

  await t.step(
    "wal prints replica, generation, index, offset, size and created, as v0.3.13",
    async () => {
      const r = await run(["wal", url], { cwd: dir });
      assert.equal(r.code, 0, r.stderr);
      const { header, rows } = parseTable(r.stdout);
      assert.deepEqual(header, ["replica", "generation", "index", "offset", "size", "created"]);
      assert.ok(rows.length >= 1, r.stdout);
      for (const [name, g, index, offset, size, created] of rows) {
        assert.deepEqual([name, g], ["file", gen]);
        const hex = (n: string) => Number(n).toString(16).padStart(8, "0");
        const file = `${replica}/generations/${gen}/wal/${hex(index)}_${hex(offset)}.wal.lz4`;
        assert.equal(Number(size), (await Deno.stat(file)).size);
        assert.match(created, RFC3339_UTC);
      }
      const oracle = await runOracle(["wal", url]);
      assert.equal(r.stdout, oracle.stdout);
    },
  );
});

Deno.test("replicate -config expands $VAR, and databases/generations/restore read the same config", async (t) => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  const env = { CLI_TEST_DIR: dir };
  const db = `${dir}/app.db`;
  await createDb(db);
  await Deno.writeTextFile(
    `${dir}/litestream.yml`,
    "dbs:\n  - path: ${CLI_TEST_DIR}/app.db\n    replicas:\n" +
      "      - name: backup\n        url: file://$CLI_TEST_DIR/replica\n",
  );
  const config = ["-config", "litestream.yml"];

  await t.step(
    "replicate -config replicates to the expanded path and exits 0 on SIGINT",
    async () => {
      await using daemon = new Background(["replicate", ...config], { cwd: dir, env });
      await daemon.waitFor(/replicating to/);
      await sqliteAsync(db, "INSERT INTO t (v) VALUES ('through the config');");
      const r = await daemon.stop("SIGINT");
      assert.equal(r.code, 0, `output:\n${r.stdout}${r.stderr}`);
      assert.equal(r.stderr, "");
      assert.ok(r.stdout.includes(`location=${dir}/replica`), r.stdout);
      assert.equal((await generationsOf(`${dir}/replica`)).length, 1);
    },
  );

  await t.step("databases prints path and replicas", async () => {
    const r = await run(["databases", ...config], { cwd: dir, env });
    assert.equal(r.code, 0, r.stderr);
    const { header, rows } = parseTable(r.stdout);
    assert.deepEqual(header, ["path", "replicas"]);
    assert.deepEqual(rows, [[db, "backup"]]);
  });

  await t.step(
    "databases -no-expand-env reads $VAR literally and names where it fails",
    async () => {
      const r = await run(["databases", ...config, "-no-expand-env"], { cwd: dir, env });
      assertOneLineError(r, 2, "line 5", "$CLI_TEST_DIR");
    },
  );

  await t.step("generations DB_PATH lists the config's replica by its name", async () => {
    const r = await run(["generations", ...config, "app.db"], { cwd: dir, env });
    assert.equal(r.code, 0, r.stderr);
    const { header, rows } = parseTable(r.stdout);
    assert.deepEqual(header, ["name", "generation", "lag", "start", "end"]);
    assert.deepEqual(rows.map((row) => row[0]), ["backup"]);
    assert.match(rows[0][2], GO_DURATION);
  });

  await t.step("restore DB_PATH -o restores through the config", async () => {
    const out = `${dir}/restored.db`;
    const r = await run(["restore", ...config, "-o", out, "app.db"], { cwd: dir, env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await dump(out), await dump(db));
  });
});

// ---------------------------------------------------------------------------------------
// -exec

Deno.test("replicate -exec exits 1 after a final sync when the child exits 3", async () => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  const db = `${dir}/app.db`;
  await createDb(db);
  const url = `file://${dir}/replica`;
  const exec = `sh -c "sqlite3 ${db} \\"INSERT INTO t (v) VALUES ('before exit 3')\\"; exit 3"`;
  const r = await run(["replicate", "-exec", exec, "app.db", url], { cwd: dir });
  assertOneLineError(r, 1, "exited with code 3");
  assert.match(await restoredDump(url, `${dir}/restored.db`, dir), /before exit 3/);
});

Deno.test("replicate -exec exits 1 and names a program that does not exist", async () => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  await createDb(`${dir}/app.db`);
  const r = await run(
    ["replicate", "-exec", "no-such-program-here --flag", "app.db", `file://${dir}/replica`],
    { cwd: dir },
  );
  assertOneLineError(r, 1, "no-such-program-here");
});

// ---------------------------------------------------------------------------------------
// restore, against a replica written by `replicate -exec`.

Deno.test("restore from a replica written by replicate -exec", async (t) => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  const db = `${dir}/app.db`;
  const replica = `${dir}/replica`;
  const url = `file://${replica}`;
  await createDb(db);

  await t.step("replicate -exec exits 0 after its child exits 0, with a final sync", async () => {
    const exec = `sqlite3 ${db} "INSERT INTO t (v) VALUES ('written by the child')"`;
    const r = await run(["replicate", "-exec", exec, "app.db", url], { cwd: dir });
    assert.ok(!r.timedOut, "replicate kept running after its child exited");
    assert.equal(r.code, 0, `output:\n${r.stdout}${r.stderr}`);
    assert.equal(r.stderr, "");
    const restored = await restoredDump(url, `${dir}/first.db`, dir);
    assert.match(restored, /written by the child/);
    assert.equal(restored, await dump(db));
    await Deno.remove(`${dir}/first.db`);
  });

  const [gen] = await generationsOf(replica);
  const walIndexes = (await Array.fromAsync(Deno.readDir(`${replica}/generations/${gen}/wal`)))
    .map((e) => parseInt(e.name.slice(0, 8), 16));
  const lastIndex = Math.max(...walIndexes);
  const hex8 = (n: number) => n.toString(16).padStart(8, "0");

  /** Runs restore in `dir` and asserts it left every file as it was. */
  async function restoreChangingNothing(args: string[]): Promise<Result> {
    const before = await tree(dir);
    const r = await run(["restore", ...args], { cwd: dir });
    assert.deepEqual(await tree(dir), before, `restore ${args.join(" ")} wrote or changed files`);
    return r;
  }

  await t.step("restore refuses to overwrite an existing output file", async () => {
    await sqliteAsync(`${dir}/existing.db`, "CREATE TABLE mine (x); INSERT INTO mine VALUES (42);");
    const r = await restoreChangingNothing(["-o", "existing.db", url]);
    assert.notEqual(r.code, 0);
    assertOneLineError(r, r.code, `${dir}/existing.db`, "exists");
  });

  await t.step("restore -if-db-not-exists exits 0 and leaves the existing file", async () => {
    const r = await restoreChangingNothing(["-if-db-not-exists", "-o", "existing.db", url]);
    assert.equal(r.code, 0, r.stderr);
  });

  await t.step("restore -if-replica-exists exits 0 for an empty replica", async () => {
    await Deno.mkdir(`${dir}/empty`);
    const r = await restoreChangingNothing([
      "-if-replica-exists",
      "-o",
      "out.db",
      `file://${dir}/empty`,
    ]);
    assert.equal(r.code, 0, r.stderr);
  });

  await t.step(
    "restore exits 1 and names an empty replica without -if-replica-exists",
    async () => {
      const r = await restoreChangingNothing(["-o", "out.db", `file://${dir}/empty`]);
      assertOneLineError(r, 1, `${dir}/empty`);
    },
  );

  await t.step("restore of a URL without -o exits 2 and asks for -o", async () => {
    const r = await restoreChangingNothing([url]);
    assertOneLineError(r, 2, "-o");
  });

  await t.step("restore exits 2 and names a -timestamp that is not RFC 3339", async () => {
    const r = await restoreChangingNothing(["-timestamp", "yesterday", "-o", "out.db", url]);
    assertOneLineError(r, 2, "-timestamp", '"yesterday"');
  });

  await t.step("restore exits 2 and names an -index that is not hexadecimal", async () => {
    const r = await restoreChangingNothing(["-index", "xyz", "-o", "out.db", url]);
    assertOneLineError(r, 2, "-index", '"xyz"');
  });

  await t.step(
    "restore exits 1 for a -generation that does not exist instead of another one",
    async () => {
      const missing = gen === "0123456789abcdef" ? "fedcba9876543210" : "0123456789abcdef";
      const r = await restoreChangingNothing(["-generation", missing, "-o", "out.db", url]);
      assertOneLineError(r, 1, missing);
    },
  );

  await t.step("restore exits 1 for an -index past the end instead of the latest", async () => {
    const past = hex8(lastIndex + 1);
    for (const extra of [[], ["-generation", gen]]) {
      const r = await restoreChangingNothing([...extra, "-index", past, "-o", "out.db", url]);
      assertOneLineError(r, 1, past);
    }
  });

  await t.step(
    "restore -generation -index of the last index restores the latest state",
    async () => {
      const restored = await restoredDump(
        url,
        `${dir}/at-index.db`,
        dir,
        "-generation",
        gen,
        "-index",
        hex8(lastIndex),
      );
      assert.equal(restored, await dump(db));
    },
  );
});

// ---------------------------------------------------------------------------------------
// Credentials

Deno.test("replicate, generations and restore never print S3 credentials", async () => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  const configSecret = "cfgSECRETcfg0123456789abcdefghijklmnopq";
  const envSecret = "envSECRETenv0123456789abcdefghijklmnopq";
  const s3 = (db: string, keys: string) =>
    `dbs:\n  - path: ${dir}/${db}\n    replicas:\n      - url: s3://bucket/prefix\n` +
    `        endpoint: http://127.0.0.1:1\n        region: us-east-1\n${keys}`;
  await Deno.writeTextFile(
    `${dir}/config-keys.yml`,
    s3(
      "one.db",
      `        access-key-id: AKIACLITEST\n        secret-access-key: ${configSecret}\n`,
    ),
  );
  await Deno.writeTextFile(`${dir}/env-keys.yml`, s3("two.db", ""));
  const envKeys = {
    LITESTREAM_ACCESS_KEY_ID: "AKIACLITESTENV",
    LITESTREAM_SECRET_ACCESS_KEY: envSecret,
  };

  const variants = [
    { db: "one.db", config: "config-keys.yml", env: {}, secret: configSecret },
    { db: "two.db", config: "env-keys.yml", env: envKeys, secret: envSecret },
  ];
  // Both at once (separate databases), to keep the wall time of the connection retries down.
  await Promise.all(variants.map(async ({ db, config, env, secret }) => {
    await createDb(`${dir}/${db}`);
    const outputs: [string, Result][] = [];
    {
      await using daemon = new Background(["replicate", "-config", config], { cwd: dir, env });
      // Wait until the replica has really tried the endpoint (and failed), then stop.
      await daemon.waitFor(/127\.0\.0\.1:1\b|ECONNREFUSED/, 20_000).catch((err) => {
        assert.fail(
          `the S3 replica never reached its endpoint, so the S3 client may not load yet: ${err.message}`,
        );
      });
      outputs.push(["replicate", await daemon.stop("SIGTERM")]);
    }
    outputs.push([
      "generations",
      await run(["generations", "-config", config, db], { cwd: dir, env }),
    ]);
    outputs.push([
      "restore",
      await run(["restore", "-config", config, "-o", "out.db", db], { cwd: dir, env }),
    ]);
    for (const [cmd, r] of outputs) {
      assert.ok(!r.timedOut, `${cmd} did not exit`);
      const all = r.stdout + r.stderr;
      assert.ok(
        all.includes("127.0.0.1:1"),
        `${cmd} (${config}) did not name the endpoint:\n${all}`,
      );
      assert.ok(!all.includes(secret), `${cmd} (${config}) printed the secret key:\n${all}`);
      assert.ok(
        !all.includes(secret.slice(4, 20)),
        `${cmd} (${config}) printed part of the secret`,
      );
    }
    const [, generations] = outputs[1];
    assertOneLineError(generations, 1, "s3://bucket/prefix");
  }));
  await assert.rejects(Deno.stat(`${dir}/out.db`), Deno.errors.NotFound);
});

/**
 * Modules a Deno program loads before it runs (static imports, followed from `root`), from
 * `deno info --json`: dynamic imports and type-only imports are not followed.
 */
async function staticModules(root: string): Promise<Set<string>> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", root],
    cwd: REPO,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(out.success, dec.decode(out.stderr));
  const info = JSON.parse(dec.decode(out.stdout)) as {
    modules: {
      specifier: string;
      dependencies?: { code?: { specifier: string }; isDynamic?: boolean }[];
    }[];
    redirects: Record<string, string>;
  };
  const bySpecifier = new Map(info.modules.map((m) => [m.specifier, m]));
  const seen = new Set<string>();
  const visit = (spec: string) => {
    spec = info.redirects[spec] ?? spec;
    if (seen.has(spec)) return;
    seen.add(spec);
    for (const dep of bySpecifier.get(spec)?.dependencies ?? []) {
      if (dep.code && !dep.isDynamic) visit(dep.code.specifier);
    }
  };
  visit(new URL(root, `file://${REPO}/`).href);
  return seen;
}

Deno.test("commands given a replica URL load no YAML parser and no cloud SDK before they need one", async () => {
  // `restore URL`, `generations URL` and the rest start in ~10 ms of module loading; the YAML
  // parser alone took 30 ms, the AWS SDK 60–80 ms. Both load once a config or an s3 replica
  // is used.
  for (
    const root of [
      "src/cli/main.ts",
      "src/cli/restore.ts",
      "src/cli/listing.ts",
      "src/cli/replicate.ts",
    ]
  ) {
    const modules = [...await staticModules(root)];
    assert.ok(
      modules.some((m) => m.endsWith("/src/replica_url.ts") || root === "src/cli/main.ts"),
      root,
    );
    const heavy = modules.filter((m) =>
      /^npm:\/?(yaml|@aws-sdk\/|ssh2|age-encryption)/.test(m) || m.endsWith("/src/config.ts")
    );
    assert.deepEqual(heavy, [], `${root} loads ${heavy.join(", ")} at start`);
  }
});
