/**
 * Running the command outside a clone, under exact permissions: the JSR entry point
 * (`mod.ts`), the `deno task` commands from another directory, `deno task install`,
 * `deno task bundle`, the systemd unit of `deploy/`, the published package, and the README's
 * minimal permission flags. Every command here runs as a real process from a temporary
 * directory with no `deno.json`, under the flags the README gives (with `--no-prompt`), never
 * `-A`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { dirname } from "node:path";
import { createDb, dump, REPO, sqliteAsync, tempDir, waitFor } from "./_helpers.ts";
import { waitForReplica } from "./_daemon.ts";
import { startS3Server } from "./_s3_servers.ts";
import { COMMAND_PERMISSIONS, CONFIG_ENV, S3_ENV } from "../scripts/permissions.ts";
import { TARGETS } from "../scripts/compile.ts";

const dec = new TextDecoder();
const DENO = Deno.execPath();

/**
 * Our environment plus `extra`, without `INIT_CWD`: under `deno task test` we inherit the
 * repository as `INIT_CWD`, and a `deno task` started from here would keep it (Deno sets it
 * only if unset) and `cd` there instead of into the directory it was started in.
 */
function childEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env = { ...Deno.env.toObject(), ...extra };
  delete env.INIT_CWD;
  return env;
}

/**
 * A process in its own process group (through `setsid`, so that the Deno process a
 * `deno task` starts ends with it), its output (stdout and stderr) collected as it runs.
 */
class Proc implements AsyncDisposable {
  readonly child: Deno.ChildProcess;
  #log = "";
  #drained: Promise<unknown>;
  #status?: Deno.CommandStatus;

  constructor(
    cmd: string,
    args: string[],
    options: { cwd?: string; env?: Record<string, string> } = {},
  ) {
    this.child = new Deno.Command("setsid", {
      args: [cmd, ...args],
      cwd: options.cwd,
      env: childEnv(options.env),
      clearEnv: true,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#drained = Promise.all([this.#drain(this.child.stdout), this.#drain(this.child.stderr)]);
    this.child.status.then((s) => this.#status = s);
  }

  async #drain(stream: ReadableStream<Uint8Array>): Promise<void> {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) this.#log += text;
  }

  get log(): string {
    return this.#log;
  }

  /** Waits until the output matches `re`; throws with the output if the process exits first. */
  async waitForLog(re: RegExp, timeoutMs = 20_000): Promise<void> {
    await waitFor(() => re.test(this.#log) || this.#status !== undefined, timeoutMs, `${re}`)
      .catch((err) => {
        throw new Error(`${err.message}; output:\n${this.#log}`);
      });
    if (!re.test(this.#log)) {
      throw new Error(`Exited with ${this.#status?.code} before printing ${re}:\n${this.#log}`);
    }
  }

  /** Sends `signal`, waits for the exit and returns its code and the whole output. */
  async stop(signal: Deno.Signal = "SIGTERM"): Promise<{ code: number; log: string }> {
    if (this.#status === undefined) this.child.kill(signal);
    return await this.done();
  }

  /** Waits for the exit; returns its code and the whole output. */
  async done(): Promise<{ code: number; log: string }> {
    const { code } = await this.child.status;
    await this.#drained;
    return { code, log: this.#log };
  }

  async [Symbol.asyncDispose](): Promise<void> {
    try {
      Deno.kill(-this.child.pid, "SIGKILL"); // the whole group: nothing keeps the pipes open
    } catch { /* the group is gone */ }
    await this.done();
  }
}

/** Runs a command to completion; returns its exit code and output (stdout + stderr). */
async function run(
  cmd: string,
  args: string[],
  options: { cwd?: string; env?: Record<string, string> } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const o = await new Deno.Command(cmd, {
    args,
    cwd: options.cwd,
    env: childEnv(options.env),
    clearEnv: true,
    stdin: "null",
  }).output();
  return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr) };
}

/** Like {@linkcode run}, but throws with the output unless the exit code is 0. */
async function ok(
  cmd: string,
  args: string[],
  options: { cwd?: string; env?: Record<string, string> } = {},
): Promise<string> {
  const r = await run(cmd, args, options);
  if (r.code !== 0) {
    throw new Error(`${cmd} ${args.join(" ")} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
  }
  return r.stdout;
}

/** Scoped permission flags, as the README's table writes them. */
function flags(p: {
  read?: string[];
  write?: string[];
  env?: readonly string[];
  net?: string[];
  sys?: string[];
  run?: string[];
}): string[] {
  const out = ["--no-prompt"];
  for (const [name, list] of Object.entries(p)) {
    if (list && list.length > 0) out.push(`--allow-${name}=${list.join(",")}`);
  }
  return out;
}

/** Builds the bundle with `deno task bundle --output` into `dir`; returns its path. */
async function buildBundle(dir: string): Promise<string> {
  const path = `${dir}/litestream.js`;
  await ok(DENO, ["task", "-q", "--config", `${REPO}/deno.json`, "bundle", "--output", path]);
  return path;
}

/** The `deno run` flags of a `deno.json` task or a shim's command line. */
function permissionFlags(commandLine: string): string[] {
  return commandLine.split(/\s+/).filter((w) => /^(-A|--allow-|--deny-)/.test(w)).sort();
}

Deno.test("mod.ts runs the CLI when it is the main module and only exports when imported", async () => {
  await using dir = await tempDir();
  assert.equal(await ok(DENO, ["run", `${REPO}/mod.ts`, "version"], { cwd: dir.path }), "v0.1.0\n");
  // Imported (through the repository's import map), nothing runs and nothing is asked for.
  const script = `${dir.path}/import.ts`;
  await Deno.writeTextFile(
    script,
    `import * as ls from "${REPO}/mod.ts";\n` +
      "Deno.stdout.writeSync(new TextEncoder().encode(typeof ls.Db));\n",
  );
  const r = await run(DENO, [
    "run",
    "--no-prompt",
    "--config",
    `${REPO}/deno.json`,
    script,
    "version",
  ]);
  assert.deepEqual(r, { code: 0, stdout: "function", stderr: "" });
});

Deno.test("deno task replicate and restore resolve relative paths against the caller's directory", async () => {
  await using dir = await tempDir();
  await createDb(`${dir.path}/app.db`);
  const task = ["task", "-q", "--config", `${REPO}/deno.json`];
  await using daemon = new Proc(DENO, [...task, "replicate", "./app.db", "./backup"], {
    cwd: dir.path,
  });
  await waitForReplica(`${dir.path}/backup`);
  await sqliteAsync(`${dir.path}/app.db`, "INSERT INTO t (v) VALUES ('second');");
  const stopped = await daemon.stop("SIGTERM"); // forwarded by deno task; ends in a final sync
  assert.equal(stopped.code, 0, stopped.log);
  await ok(DENO, [...task, "restore", "-o", "./restored.db", `file://${dir.path}/backup`], {
    cwd: dir.path,
  });
  assert.equal(await dump(`${dir.path}/restored.db`), await dump(`${dir.path}/app.db`));
});

Deno.test("deno task install puts a litestream command with the README's permissions on the PATH", async () => {
  await using dir = await tempDir();
  const root = `${dir.path}/root`;
  const env = { DENO_INSTALL_ROOT: root };
  await ok(DENO, ["task", "-q", "--config", `${REPO}/deno.json`, "install"], { env });
  const shim = await Deno.readTextFile(`${root}/bin/litestream`);
  assert.deepEqual(permissionFlags(shim), [...COMMAND_PERMISSIONS].sort());

  // A round trip through the installed command, from a directory outside the clone.
  const work = `${dir.path}/work`;
  await Deno.mkdir(work);
  await createDb(`${work}/app.db`);
  const path = `${root}/bin:${dirname(DENO)}:${Deno.env.get("PATH") ?? ""}`;
  const opts = { cwd: work, env: { PATH: path } };
  await using daemon = new Proc("litestream", ["replicate", "app.db", `file://${work}/bk`], opts);
  await waitForReplica(`${work}/bk`);
  await sqliteAsync(`${work}/app.db`, "INSERT INTO t (v) VALUES ('second');");
  const stopped = await daemon.stop("SIGTERM");
  assert.equal(stopped.code, 0, stopped.log);
  await ok("litestream", ["restore", "-o", "restored.db", `file://${work}/bk`], opts);
  assert.equal(await dump(`${work}/restored.db`), await dump(`${work}/app.db`));
});

Deno.test("deno task bundle writes one file that replicates and restores from any directory under the minimal file flags", async () => {
  await using dir = await tempDir();
  const bundle = await buildBundle(`${dir.path}/dist`);
  const data = `${dir.path}/data`;
  const bk = `${dir.path}/bk`;
  const out = `${dir.path}/out`;
  await Deno.mkdir(data);
  await Deno.mkdir(out);
  // Over 4 MiB of random pages: the snapshot is restored through the LZ4 Worker pool.
  await sqliteAsync(
    `${data}/app.db`,
    "PRAGMA journal_mode=wal; CREATE TABLE t (id INTEGER PRIMARY KEY, v);" +
      "INSERT INTO t (v) SELECT randomblob(1500) FROM (WITH RECURSIVE c(x) AS " +
      "(SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<4000) SELECT x FROM c);",
  );
  const replicate = flags({ read: [data, bk], write: [data, bk] });
  await using daemon = new Proc(DENO, [
    "run",
    ...replicate,
    bundle,
    "replicate",
    "app.db",
    `file://${bk}`,
  ], { cwd: data });
  await waitForReplica(bk);
  await sqliteAsync(`${data}/app.db`, "INSERT INTO t (v) VALUES ('second');");
  const stopped = await daemon.stop("SIGTERM");
  assert.equal(stopped.code, 0, stopped.log);

  const snapshots = [];
  for await (const gen of Deno.readDir(`${bk}/generations`)) {
    for await (const s of Deno.readDir(`${bk}/generations/${gen.name}/snapshots`)) {
      snapshots.push((await Deno.stat(`${bk}/generations/${gen.name}/snapshots/${s.name}`)).size);
    }
  }
  assert.ok(snapshots.some((size) => size >= 4 << 20), `snapshot sizes ${snapshots}`);

  const restore = flags({ read: [bk, out], write: [out] });
  await ok(DENO, ["run", ...restore, bundle, "restore", "-o", "r.db", `file://${bk}`], {
    cwd: out,
  });
  assert.equal(await dump(`${out}/r.db`), await dump(`${data}/app.db`));
  const listing = await ok(DENO, [
    "run",
    ...flags({ read: [bk] }),
    bundle,
    "generations",
    `file://${bk}`,
  ], {
    cwd: out,
  });
  assert.match(listing, /^name\s+generation/);
  // The config module (and its YAML parser) is imported only when a config is read: the
  // bundle must hold it all the same.
  await Deno.writeTextFile(
    `${out}/litestream.yml`,
    `dbs:\n  - path: ${data}/app.db\n    replicas:\n      - url: file://${bk}\n`,
  );
  const dbs = await ok(DENO, [
    "run",
    ...flags({ read: [out], env: CONFIG_ENV }),
    bundle,
    "databases",
    "-config",
    `${out}/litestream.yml`,
  ], { cwd: out });
  assert.match(dbs, new RegExp(`${data}/app\\.db\\s+file`));
});

Deno.test("replicate with a config file, $VAR expansion, addr and -exec runs under the README's minimal flags", async () => {
  await using dir = await tempDir();
  const data = `${dir.path}/data`;
  const bk = `${dir.path}/bk`;
  await Deno.mkdir(data);
  await createDb(`${data}/app.db`);
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const config = `${dir.path}/litestream.yml`;
  await Deno.writeTextFile(
    config,
    `addr: 127.0.0.1:${port}\ndbs:\n  - path: \${APP_DB}\n    replicas:\n      - url: file://${bk}\n`,
  );
  const args = [
    "run",
    ...flags({
      read: [config, data, bk],
      write: [data, bk],
      env: [...CONFIG_ENV, "APP_DB"],
      net: [`127.0.0.1:${port}`],
      run: ["sleep"],
    }),
    `${REPO}/main.ts`,
    "replicate",
    "-config",
    config,
    "-exec",
    "sleep 60",
  ];
  await using daemon = new Proc(DENO, args, { cwd: dir.path, env: { APP_DB: `${data}/app.db` } });
  await daemon.waitForLog(/msg="snapshot written"/);
  const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  assert.match(metrics, /^litestream_db_size\{/m);
  await sqliteAsync(`${data}/app.db`, "INSERT INTO t (v) VALUES ('second');");
  const stopped = await daemon.stop("SIGTERM");
  assert.equal(stopped.code, 0, stopped.log);

  await ok(DENO, [
    "run",
    ...flags({ read: [config, dir.path], write: [dir.path], env: [...CONFIG_ENV, "APP_DB"] }),
    `${REPO}/main.ts`,
    "restore",
    "-config",
    config,
    "-o",
    `${dir.path}/restored.db`,
    `${data}/app.db`,
  ], { env: { APP_DB: `${data}/app.db` } });
  assert.equal(await dump(`${dir.path}/restored.db`), await dump(`${data}/app.db`));
});

/** The ExecStartPre= and ExecStart= command lines of a unit file, split into words. */
function unitCommands(unit: string): { pre: string[]; start: string[] } {
  const lines = unit.replace(/\\\n/g, " ").split("\n");
  const get = (key: string) => {
    const line = lines.find((l) => l.startsWith(`${key}=`));
    assert.ok(line, `no ${key}= in the unit`);
    return line.slice(key.length + 1).trim().split(/\s+/);
  };
  return { pre: get("ExecStartPre"), start: get("ExecStart") };
}

Deno.test("deploy/litestream.service restores on boot and replicates to S3 under exactly its own flags", async () => {
  await using dir = await tempDir();
  await using s3 = await startS3Server("fauxqs");
  const bundle = await buildBundle(`${dir.path}/dist`);
  const app = `${dir.path}/app`;
  await Deno.mkdir(app);
  const config = `${dir.path}/litestream.yml`;
  const host = new URL(s3.endpoint).host;
  // deploy/ as shipped, with its paths, bucket and host pointed at this test's.
  const here = (s: string) =>
    s.replaceAll("/etc/litestream.yml", config)
      .replaceAll("/var/lib/app", app)
      .replaceAll("/usr/local/lib/litestream/litestream.js", bundle)
      .replaceAll("mybkt.s3.us-east-1.amazonaws.com", host);
  const yml = await Deno.readTextFile(`${REPO}/deploy/litestream.yml`);
  await Deno.writeTextFile(
    config,
    here(yml).replace("bucket: mybkt", `bucket: ${s3.bucket}`)
      .replace(/^(\s+)region: .*$/m, `$&\n$1endpoint: ${s3.endpoint}`),
  );
  const unit = unitCommands(await Deno.readTextFile(`${REPO}/deploy/litestream.service`));
  const [pre, start] = [unit.pre, unit.start].map((words) => words.map(here));
  assert.equal(pre[0], "deno");
  assert.equal(start[0], "deno");
  assert.ok(!start.some((w) => w.startsWith("--allow-run") || w === "-A"), start.join(" "));
  // The README's rows for a config file and an S3 replica, no more.
  for (const words of [pre, start]) {
    assert.ok(
      words.includes(`--allow-env=${[...CONFIG_ENV, ...S3_ENV].join(",")}`),
      words.join(" "),
    );
    assert.ok(words.includes("--allow-sys=osRelease"), words.join(" "));
  }
  const env = {
    AWS_ACCESS_KEY_ID: s3.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.secretAccessKey,
  };
  const opts = { cwd: "/", env };

  // First boot: no database, no replica yet: the restore step does nothing and succeeds.
  await ok(DENO, pre.slice(1), opts);
  await assert.rejects(Deno.stat(`${app}/app.db`), Deno.errors.NotFound);

  await createDb(`${app}/app.db`);
  await using daemon = new Proc(DENO, start.slice(1), opts);
  await daemon.waitForLog(/msg="snapshot written"/);
  await sqliteAsync(`${app}/app.db`, "INSERT INTO t (v) VALUES ('second');");
  const stopped = await daemon.stop("SIGTERM"); // systemctl stop
  assert.equal(stopped.code, 0, stopped.log);
  const expected = await dump(`${app}/app.db`);

  // A new machine: the database is gone, the restore step brings it back from S3.
  await Deno.remove(app, { recursive: true });
  await Deno.mkdir(app);
  await ok(DENO, pre.slice(1), opts);
  assert.equal(await dump(`${app}/app.db`), expected);
  // Next boot: the database exists, the restore step leaves it alone.
  await ok(DENO, pre.slice(1), opts);
  assert.equal(await dump(`${app}/app.db`), expected);

  if (await hasCommand("systemd-analyze")) {
    const path = `${dirname(DENO)}:${Deno.env.get("PATH") ?? ""}`;
    const r = await run("systemd-analyze", ["verify", `${REPO}/deploy/litestream.service`], {
      env: { PATH: path },
    });
    assert.equal(r.code, 0, r.stderr);
  }
});

/** True if `name` runs (found on the PATH). */
async function hasCommand(name: string): Promise<boolean> {
  try {
    await new Deno.Command(name, { args: ["--version"], stdout: "null", stderr: "null" }).output();
    return true;
  } catch {
    return false;
  }
}

Deno.test("deno.json tasks, deno task compile and the README grant the command's permissions and never --allow-run", async () => {
  const denoJson = JSON.parse(await Deno.readTextFile(`${REPO}/deno.json`));
  const expected = [...COMMAND_PERMISSIONS].sort();
  for (const name of ["replicate", "restore", "litestream", "install"]) {
    assert.deepEqual(permissionFlags(denoJson.tasks[name]), expected, `task ${name}`);
  }
  const dry = await ok(DENO, [
    "task",
    "-q",
    "--config",
    `${REPO}/deno.json`,
    "compile",
    "--dry-run",
  ]);
  const lines = dry.trim().split("\n");
  assert.equal(lines.length, TARGETS.length);
  for (const line of lines) {
    assert.deepEqual(permissionFlags(line), expected, line);
    assert.match(line, /--include src\/internal\/lz4_worker\.ts main\.ts$/);
  }
  const readme = await Deno.readTextFile(`${REPO}/README.md`);
  assert.ok(readme.includes(COMMAND_PERMISSIONS.join(" ")), "README names the command's flags");
  assert.ok(readme.includes(`--allow-env=${S3_ENV.join(",")}`), "README names the S3 variables");
  assert.ok(readme.includes(`--allow-env=${CONFIG_ENV.join(",")}`), "README names the config ones");
});

Deno.test("deno publish --dry-run passes and the package holds no tests, benches or scripts", async () => {
  const r = await run(DENO, ["publish", "--dry-run", "--allow-dirty"], { cwd: REPO });
  const output = r.stdout + r.stderr;
  assert.equal(r.code, 0, output);
  const files = [...output.matchAll(/file:\/\/\S+/g)].map((m) =>
    m[0].slice(`file://${REPO}`.length)
  );
  assert.ok(files.includes("/mod.ts") && files.includes("/main.ts"), files.join(" "));
  assert.ok(files.includes("/src/internal/lz4_worker.ts"), files.join(" "));
  const unwanted = files.filter((f) => /^\/(tests|scripts|deploy|\.bench|\.ci|tmp|dist)\//.test(f));
  assert.deepEqual(unwanted, []);
});

Deno.test("the main job's first run downloads no test-only package", async () => {
  // What the installed command and the service run: `deno run` of the entry point. (`deno
  // task` itself first caches every package of deno.lock, tests' included: see the README.)
  await using denoDir = await tempDir();
  await using dir = await tempDir();
  const out = await ok(DENO, ["run", ...COMMAND_PERMISSIONS, `${REPO}/main.ts`, "version"], {
    cwd: dir.path,
    env: { DENO_DIR: denoDir.path },
  });
  assert.equal(out, "v0.1.0\n");
  const npm = `${denoDir.path}/npm/registry.npmjs.org`;
  await Deno.stat(`${npm}/yaml`); // it did download into this DENO_DIR
  await assert.rejects(Deno.stat(`${npm}/fauxqs`), Deno.errors.NotFound);

  // `deno task` installs all of deno.lock first: the main job's lock holds no test package.
  const lock = await Deno.readTextFile(`${REPO}/deno.lock`);
  assert.ok(!lock.includes("fauxqs"), "deno.lock names fauxqs: run tests with `deno task test`");
  await using taskDir = await tempDir();
  const viaTask = await ok(
    DENO,
    ["task", "--config", `${REPO}/deno.json`, "litestream", "version"],
    {
      cwd: dir.path,
      env: { DENO_DIR: taskDir.path, INIT_CWD: dir.path },
    },
  );
  assert.equal(viaTask.trim().split("\n").at(-1), "v0.1.0");
  await Deno.stat(`${taskDir.path}/npm/registry.npmjs.org/yaml`);
  await assert.rejects(
    Deno.stat(`${taskDir.path}/npm/registry.npmjs.org/fauxqs`),
    Deno.errors.NotFound,
  );
});
