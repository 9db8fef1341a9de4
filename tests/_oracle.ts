/**
 * Test fixture: the real Litestream v0.3.13 binary, the oracle our behaviour is checked
 * against. It comes from the npm package `@flydotio/litestream-linux-x64@1.0.1` (file
 * `package/litestream`) and is installed on first use into `$LITESTREAM_ORACLE_DIR`, or
 * `<repo>/.bench/oracle/` (ignored by git). `scripts/install_oracle.sh` does the same for CI.
 *
 * @module
 */
import { fileURLToPath } from "node:url";

/** The version the oracle binary must report. */
export const ORACLE_VERSION = "v0.3.13";
/** npm package (with exact version) that ships the oracle binary. */
export const ORACLE_PACKAGE = "@flydotio/litestream-linux-x64@1.0.1";

let installed: Promise<string> | undefined;

/**
 * Returns the path of the real Litestream v0.3.13 binary, installing it on first use.
 *
 * Safe to call concurrently, from one process or several: each installer works in its
 * own temporary directory and moves the checked binary into place with one rename.
 *
 * @throws {Error} If `npm pack` or `tar` fails, or the binary does not report v0.3.13.
 */
export function litestreamBin(): Promise<string> {
  installed ??= install().catch((err) => {
    installed = undefined; // let a later call retry
    throw err;
  });
  return installed;
}

/** Directory the oracle is installed into. */
export function oracleDir(): string {
  return Deno.env.get("LITESTREAM_ORACLE_DIR") ??
    fileURLToPath(new URL("../.bench/oracle", import.meta.url));
}

/** A small replica written by the real v0.3.13, the source of names, positions and frames. */
export interface OracleSample {
  /** Directory holding `db`, its meta dir `.db-litestream/`, `replica/` and `replicate.log`. */
  dir: string;
  /** The replicated database (WAL mode; table `t`). */
  dbPath: string;
  /** Root of the file replica: `generations/<gen>/{snapshots,wal}/…`. */
  replicaPath: string;
  /** What `litestream replicate` logged while writing the sample. */
  log: string;
}

/** Bump when the recipe in {@linkcode buildSample} changes. */
const SAMPLE_NAME = "sample-v1";
let sampled: Promise<OracleSample> | undefined;

/**
 * Returns a replica that the real v0.3.13 wrote for a small database: one snapshot and three
 * WAL segments (offsets 0 and two later ones) in one generation, plus its log.
 *
 * Built on first use (about a second) and kept in the oracle directory, so later runs reuse
 * it. Treat it as read-only: copy it before changing anything. Safe to call concurrently.
 */
export function oracleSample(): Promise<OracleSample> {
  sampled ??= loadSample().catch((err) => {
    sampled = undefined;
    throw err;
  });
  return sampled;
}

async function loadSample(): Promise<OracleSample> {
  const dir = `${oracleDir()}/${SAMPLE_NAME}`;
  if (!await exists(dir)) {
    const bin = await litestreamBin();
    const tmp = await Deno.makeTempDir({ dir: oracleDir(), prefix: ".sample-" });
    try {
      await buildSample(bin, tmp);
      await Deno.rename(tmp, dir);
    } catch (err) {
      // A concurrent builder may have won the rename; its sample is as good as ours.
      if (!await exists(dir)) throw err;
    } finally {
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
    }
  }
  return {
    dir,
    dbPath: `${dir}/db`,
    replicaPath: `${dir}/replica`,
    log: await Deno.readTextFile(`${dir}/replicate.log`),
  };
}

async function buildSample(bin: string, dir: string): Promise<void> {
  const db = `${dir}/db`;
  const replica = `${dir}/replica`;
  const sql = (stmt: string) => run("sqlite3", [db, stmt], dir);
  await sql(
    "PRAGMA journal_mode=wal; CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);" +
      " INSERT INTO t (v) VALUES (randomblob(5000));",
  );
  await Deno.writeTextFile(
    `${dir}/litestream.yml`,
    `dbs:\n  - path: ${db}\n    monitor-interval: 100ms\n    replicas:\n` +
      `      - url: file://${replica}\n        sync-interval: 100ms\n`,
  );
  const child = new Deno.Command(bin, {
    args: ["replicate", "-config", `${dir}/litestream.yml`],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const output = child.output(); // drains the pipes while it runs
  let log = "";
  try {
    const deadline = Date.now() + 20_000;
    for (let want = 1; want <= 3; want++) {
      while (await countWalSegments(replica) < want) {
        if (Date.now() > deadline) {
          throw new Error(`Cannot build oracle sample: WAL segment ${want} never appeared`);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
      if (want < 3) await sql(`INSERT INTO t (v) VALUES (randomblob(${want * 300}))`);
    }
  } finally {
    child.kill("SIGTERM");
    const out = await output;
    const text = new TextDecoder();
    log = text.decode(out.stdout) + text.decode(out.stderr);
    await Deno.writeTextFile(`${dir}/replicate.log`, log);
  }
}

async function countWalSegments(replica: string): Promise<number> {
  let n = 0;
  try {
    for await (const gen of Deno.readDir(`${replica}/generations`)) {
      for await (const e of Deno.readDir(`${replica}/generations/${gen.name}/wal`)) {
        if (e.name.endsWith(".wal.lz4")) n++;
      }
    }
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  return n;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

async function install(): Promise<string> {
  const dir = oracleDir();
  const bin = `${dir}/litestream`;
  if (await versionOf(bin) === ORACLE_VERSION) return bin;

  await Deno.mkdir(dir, { recursive: true });
  // A private work directory, so concurrent installers never see each other's files.
  const tmp = await Deno.makeTempDir({ dir, prefix: ".install-" });
  try {
    await run("npm", ["pack", "--silent", "--pack-destination", tmp, ORACLE_PACKAGE], tmp);
    const tarballs: string[] = [];
    for await (const e of Deno.readDir(tmp)) if (e.name.endsWith(".tgz")) tarballs.push(e.name);
    if (tarballs.length !== 1) {
      throw new Error(
        `Cannot install "${ORACLE_PACKAGE}": npm pack left ${tarballs.length} tarballs`,
      );
    }
    await run("tar", ["-xzf", tarballs[0], "package/litestream"], tmp);
    const fresh = `${tmp}/package/litestream`;
    await Deno.chmod(fresh, 0o755);
    const version = await versionOf(fresh);
    if (version !== ORACLE_VERSION) {
      throw new Error(
        `Cannot install "${ORACLE_PACKAGE}": binary reports "${version}", want "${ORACLE_VERSION}"`,
      );
    }
    // rename(2) is atomic: a concurrent caller sees the old binary or the new one, never half.
    await Deno.rename(fresh, bin);
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
  return bin;
}

/** Returns what `<bin> version` prints, or `undefined` if it cannot be run. */
async function versionOf(bin: string): Promise<string | undefined> {
  try {
    const out = await new Deno.Command(bin, { args: ["version"], stdout: "piped", stderr: "null" })
      .output();
    return out.success ? new TextDecoder().decode(out.stdout).trim() : undefined;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.PermissionDenied) {
      return undefined;
    }
    throw err;
  }
}

async function run(cmd: string, args: string[], cwd: string): Promise<void> {
  const out = await new Deno.Command(cmd, { args, cwd, stdout: "null", stderr: "piped" }).output();
  if (!out.success) {
    const stderr = new TextDecoder().decode(out.stderr).trim();
    throw new Error(`Cannot run "${cmd} ${args.join(" ")}": exit ${out.code}: ${stderr}`);
  }
}
