/**
 * The configuration file: read it, expand `$ENV` references, parse the YAML, validate every
 * key and resolve paths. The only importer of `npm:yaml`.
 *
 * Keys, defaults and environment expansion follow Litestream v0.3.13, with one deliberate
 * difference: v0.3.13 silently ignores keys it does not know, while we reject them (and
 * other mistakes v0.3.13 only notices at run time, or never) with a {@linkcode ConfigError}
 * whose one-line message names the file, the line and the key.
 *
 * @example
 * ```ts
 * import { configPathFromEnv, loadConfig } from "./config.ts";
 *
 * const { path } = configPathFromEnv();
 * const config = await loadConfig(path);
 * for (const db of config.dbs) console.log(db.path, db.replicas.map((r) => r.type));
 * ```
 *
 * @module
 */

import {
  type Document,
  isAlias,
  isMap,
  isScalar,
  isSeq,
  type Node,
  parseDocument,
  type Scalar,
  type YAMLMap,
} from "yaml";
import { ConfigError } from "./errors.ts";
import { backendTypes, checkReplicaUrl, expandPath, redactUrl, URL_REGEXP } from "./replica_url.ts";

export { replicaConfigFromUrl, type ReplicaUrlOptions } from "./replica_url.ts";
import {
  allBackendKeys,
  backendOf,
  type BackendSettings,
  backendsWithKey,
} from "./backends/mod.ts";

/** Where the config file is read from when neither `-config` nor `LITESTREAM_CONFIG` is set. */
export const DEFAULT_CONFIG_PATH = "/etc/litestream.yml";

/** The `logging` section. */
export interface LoggingConfig {
  /** Lowest level written; `warning` in the file is read as `warn`. @default {"info"} */
  level: "debug" | "info" | "warn" | "error";
  /** Output format. @default {"text"} */
  type: "text" | "json";
  /** Log to stderr instead of stdout. @default {false} */
  stderr: boolean;
}

/**
 * One entry of a database's `replicas` list, validated. Durations are milliseconds. Keys not
 * set in the file are `undefined`, so the consumer applies its own defaults.
 */
export interface ReplicaConfig {
  /** Backend kind (see `src/backends/mod.ts`): the URL scheme if `url` is set, else the `type` key, else `"file"`. */
  type: string;
  /** Name unique within the database. Unset means the type is the name. */
  name?: string;
  /** Replica URL as written (after `$ENV` expansion). Remote backends parse it themselves. */
  url?: string;
  /**
   * File replicas: the absolute directory (from `path` or the `file://` URL, `~` expanded,
   * relative paths resolved against the working directory). Others: the path as written.
   */
  path?: string;
  /** How long snapshots and WAL are kept; `0` disables retention. v0.3.13 default: 24h. */
  retentionMs?: number;
  /** How often retention is enforced; always `> 0`. v0.3.13 default: 1h. */
  retentionCheckIntervalMs?: number;
  /** How often WAL is shipped; always `> 0`. v0.3.13 default: 1s. */
  syncIntervalMs?: number;
  /** How often a snapshot is written; `0` disables. v0.3.13 default: 0. */
  snapshotIntervalMs?: number;
  /** How often the replica is restored and compared; `0` disables. v0.3.13 default: 0. */
  validationIntervalMs?: number;
  /**
   * The backend's own keys that were set, by config key (`bucket`, `key-path`, …); keys a
   * top-level key of the same name supplies (`access-key-id`) included. Secrets are never logged.
   */
  settings: BackendSettings;
  /** age encryption of every object (v0.3.13's `age` key). Identities are secret. */
  age?: { identities: string[]; recipients: string[] };
}

/**
 * One entry of the `dbs` list, validated. Durations are milliseconds. Keys not set in the
 * file are `undefined`, so the consumer applies its own defaults.
 */
export interface DbConfig {
  /** Absolute path of the database file. */
  path: string;
  /** Absolute meta directory. v0.3.13 default: `<dir>/.<file>-litestream`. */
  metaPath?: string;
  /** How often the WAL is checked; `0` disables the monitor loop. v0.3.13 default: 1s. */
  monitorIntervalMs?: number;
  /** Time-based PASSIVE checkpoints; `0` disables. v0.3.13 default: 1m. */
  checkpointIntervalMs?: number;
  /** WAL pages before a PASSIVE checkpoint; always `> 0`. v0.3.13 default: 1000. */
  minCheckpointPageCount?: number;
  /** WAL pages before a RESTART checkpoint; `0` disables. v0.3.13 default: 10000. */
  maxCheckpointPageCount?: number;
  /** SQLite busy timeout (not a v0.3.13 key, which hard-codes 1s). */
  busyTimeoutMs?: number;
  /** Replicas in file order. */
  replicas: ReplicaConfig[];
}

/** A validated configuration file. */
export interface Config {
  /** Absolute path of the file this came from. */
  path?: string;
  /** Databases in file order; paths are unique. */
  dbs: DbConfig[];
  /** Metrics listen address, `HOST:PORT` (host may be empty). Unset: no metrics server. */
  addr?: string;
  /** Command line run as a child process by `replicate`. */
  exec?: string;
  /** The `logging` section with defaults applied. */
  logging: LoggingConfig;
}

/** Options of {@linkcode parseConfig}. */
export interface ParseConfigOptions {
  /** Path of the file the text came from: named in errors and returned as `Config.path`. */
  path: string;
  /** Replace `$VAR` and `${VAR}` before parsing, like v0.3.13. @default {true} */
  expandEnv?: boolean;
  /** Looks up variables for expansion. @default {Deno.env.get, unreadable names unset} */
  env?: (name: string) => string | undefined;
  /** Directory relative paths are resolved against. @default {Deno.cwd()} */
  cwd?: string;
  /** Directory `~` stands for. @default {$HOME, read only when a path starts with `~`} */
  home?: string;
}

/** Options of {@linkcode loadConfig}. */
export interface LoadConfigOptions {
  /** Replace `$VAR` and `${VAR}` before parsing, like v0.3.13. @default {true} */
  expandEnv?: boolean;
}

const TOP_KEYS = ["dbs", "addr", "exec", "access-key-id", "secret-access-key", "logging"];
const LOGGING_KEYS = ["level", "type", "stderr"];
const DB_KEYS = [
  "path",
  "meta-path",
  "monitor-interval",
  "checkpoint-interval",
  "min-checkpoint-page-count",
  "max-checkpoint-page-count",
  "busy-timeout",
  "replicas",
];
/** Keys every replica accepts; each backend adds its own (src/backends/). */
const COMMON_REPLICA_KEYS = [
  "type",
  "name",
  "url",
  "path",
  "retention",
  "retention-check-interval",
  "sync-interval",
  "snapshot-interval",
  "validation-interval",
  "age",
];
const BACKEND_KEYS = allBackendKeys();
const REPLICA_KEYS = [...COMMON_REPLICA_KEYS, ...BACKEND_KEYS.keys()];
const AGE_KEYS = ["identities", "recipients"];
/** Top-level keys a replica's backend key of the same name falls back to. */
type GlobalKeys = Record<string, string | undefined>;
/** Keys whose values must never appear in a message. */
const SECRET_KEYS = new Set([
  "identities",
  ...[...BACKEND_KEYS].filter(([, k]) => k.secret).map(([key]) => key),
]);
/** Keys Litestream 0.5 added; named in the message so the mix-up is obvious. */
const V05_KEYS = new Set([
  "snapshot",
  "levels",
  "validation",
  "l0-retention",
  "l0-retention-check-interval",
  "verify-compaction",
  "heartbeat-url",
  "heartbeat-interval",
  "mcp-addr",
  "socket",
  "shutdown-sync-timeout",
  "shutdown-sync-interval",
  "replica",
  "dir",
  "pattern",
  "recursive",
  "watch",
]);

const AGE_RECIPIENT_REGEXP = /^age1[02-9ac-hj-np-z]{58}$/;
const AGE_IDENTITY_REGEXP = /^AGE-SECRET-KEY-1[02-9AC-HJ-NP-Z]{58}$/;
const INTEGER_SOURCE_REGEXP = /^[-+]?(0x[0-9a-fA-F_]+|0b[01_]+|[0-9_]+)$/;
const ADDR_REGEXP = /^(.*):([0-9]{1,5})$/;
const DURATION_UNITS: Record<string, number> = {
  ns: 1,
  us: 1e3,
  "µs": 1e3, // U+00B5 micro sign
  "μs": 1e3, // U+03BC Greek mu
  ms: 1e6,
  s: 1e9,
  m: 60e9,
  h: 3600e9,
};
/** Go's time.Duration is an int64 of nanoseconds. */
const MAX_DURATION_NS = 2 ** 63;

/**
 * Parses a duration the way Go's `time.ParseDuration` does (`"1s"`, `"500ms"`, `"1h30m"`,
 * `"1.5h"`, `"-2m"`, `"0"`), or takes a number as nanoseconds, which is what v0.3.13 does
 * with a bare integer in YAML.
 *
 * A string of digits without a unit is rejected, as in Go: in YAML only an unquoted integer
 * means nanoseconds.
 *
 * @returns The duration in milliseconds, possibly fractional (`"1us"` is `0.001`).
 * @throws {RangeError} If `s` is not a valid duration, e.g. `"1d"`, `""` or `"10"`.
 */
export function parseDuration(s: string | number): number {
  const result = durationNs(s);
  if (typeof result === "string") throw new RangeError(`Cannot parse duration "${s}": ${result}`);
  return result / 1e6;
}

/** Returns nanoseconds, or why `s` is not a duration. */
function durationNs(s: string | number): number | string {
  if (typeof s === "number") {
    if (!Number.isSafeInteger(s)) return "a number of nanoseconds must be an integer";
    return s;
  }
  let rest = s;
  let sign = 1;
  if (rest.startsWith("-") || rest.startsWith("+")) {
    if (rest[0] === "-") sign = -1;
    rest = rest.slice(1);
  }
  if (rest === "0") return 0;
  if (rest === "") return "empty duration";
  let total = 0;
  while (rest !== "") {
    const m = /^([0-9]*)(\.[0-9]*)?/.exec(rest)!;
    const [number, whole, fraction = ""] = m;
    if (whole === "" && fraction.length <= 1) return "expected a number";
    rest = rest.slice(number.length);
    const unit = /^[^0-9.]*/.exec(rest)![0];
    if (unit === "") return `missing unit (use ns, us, ms, s, m or h)`;
    const scale = DURATION_UNITS[unit];
    if (scale === undefined) return `unknown unit "${unit}" (use ns, us, ms, s, m or h)`;
    rest = rest.slice(unit.length);
    total += Number(`${whole || "0"}${fraction === "." ? "" : fraction}`) * scale;
    if (total >= MAX_DURATION_NS) return "out of range";
  }
  const ns = Math.round(total);
  return sign < 0 && ns !== 0 ? -ns : ns;
}

/**
 * Replaces `$VAR` and `${VAR}` in `text` exactly like Go's `os.ExpandEnv`, which v0.3.13
 * runs over the whole config file: unset variables become `""`, `$` followed by no name is
 * kept, `${}` is dropped, and there is no escape.
 */
export function expandEnv(text: string, env: (name: string) => string | undefined): string {
  return expandEnvMapped(text, env).text;
}

/** A piece of expanded text and where it starts in the original. */
interface Segment {
  expanded: number;
  original: number;
  literal: boolean;
}

/** Expands like {@linkcode expandEnv} and maps offsets in the result back to the input. */
function expandEnvMapped(
  text: string,
  env: (name: string) => string | undefined,
): { text: string; toOriginal: (offset: number) => number } {
  const parts: string[] = [];
  const segments: Segment[] = [];
  let length = 0;
  let i = 0; // start of pending literal text
  const push = (s: string, original: number, literal: boolean) => {
    segments.push({ expanded: length, original, literal });
    parts.push(s);
    length += s.length;
  };
  for (let j = 0; j < text.length; j++) {
    if (text[j] !== "$" || j + 1 >= text.length) continue;
    push(text.slice(i, j), i, true);
    const [name, width] = shellName(text.slice(j + 1));
    if (name === "" && width > 0) {
      // Invalid syntax such as "${}": Go drops it.
    } else if (name === "") {
      push("$", j, true); // "$" not followed by a name stays.
    } else {
      push(env(name) ?? "", j, false);
    }
    j += width;
    i = j + 1;
  }
  push(text.slice(i), i, true);
  const toOriginal = (offset: number): number => {
    let lo = 0;
    let hi = segments.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (segments[mid].expanded <= offset) lo = mid;
      else hi = mid - 1;
    }
    const seg = segments[lo];
    return seg.literal ? seg.original + (offset - seg.expanded) : seg.original;
  };
  return { text: parts.join(""), toOriginal };
}

/** Go's `getShellName`: the variable name after a `$`, and how many characters it spans. */
function shellName(s: string): [string, number] {
  const special = (c: string | undefined) => c !== undefined && "*#$@!?-0123456789".includes(c);
  if (s[0] === "{") {
    if (s.length > 2 && special(s[1]) && s[2] === "}") return [s[1], 3];
    const end = s.indexOf("}", 1);
    if (end === 1) return ["", 2]; // "${}"
    if (end < 0) return ["", 1]; // "${" without "}"
    return [s.slice(1, end), end + 1];
  }
  if (special(s[0])) return [s[0], 1];
  const m = /^[A-Za-z0-9_]*/.exec(s)![0];
  return [m, m.length];
}

/**
 * Chooses the config file: the `-config` flag if given, else `$LITESTREAM_CONFIG` if set
 * and non-empty, else {@linkcode DEFAULT_CONFIG_PATH}. The variable is read only if the
 * process may read it (`--allow-env` or `--allow-env=LITESTREAM_CONFIG`); without that
 * permission it counts as unset, so a run with a config path needs no env permission and
 * never prompts for one.
 *
 * @param explicit The `-config` flag's value, if any.
 * @returns The path (with `~` expanded and made absolute), and whether the user chose it
 *   (flag or variable), so a caller can treat a missing default file differently.
 * @throws {ConfigError} If the path starts with `~` and there is no home directory.
 */
export function configPathFromEnv(explicit?: string): { path: string; explicit: boolean } {
  const chosen = explicit || grantedEnv("LITESTREAM_CONFIG");
  if (!chosen) return { path: DEFAULT_CONFIG_PATH, explicit: false };
  try {
    return { path: expandPath(chosen, Deno.cwd()), explicit: true };
  } catch (err) {
    throw new ConfigError(`cannot use config file "${chosen}"`, { cause: err });
  }
}

/**
 * Reads and parses the config file at `path` (`~` expanded, relative to the working
 * directory), expanding `$ENV` references from the process environment.
 *
 * @throws {ConfigError} If the file is missing or unreadable (naming the file), or invalid
 *   (naming the file, line and key).
 */
export async function loadConfig(path: string, options: LoadConfigOptions = {}): Promise<Config> {
  const cwd = Deno.cwd();
  let file: string;
  try {
    file = expandPath(path, cwd);
  } catch (err) {
    throw new ConfigError(`cannot use config file "${path}"`, { cause: err });
  }
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new ConfigError(`config file "${file}" not found`, { cause: err });
    }
    throw new ConfigError(`cannot read config file "${file}"`, { cause: err });
  }
  try {
    return parseConfig(text, { path: file, expandEnv: options.expandEnv, cwd });
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    // Not the file's fault (the YAML parser reads two variables, which may be refused).
    throw new ConfigError(`cannot parse config file "${file}"`, { cause: err });
  }
}

/**
 * Parses and validates the text of a config file.
 *
 * Environment references are expanded over the whole text first (unless
 * `expandEnv: false`), then the YAML is parsed with YAML 1.1 rules like v0.3.13's
 * `yaml.v2` (so `yes`/`no` are booleans), then every key is checked. Global
 * `access-key-id`/`secret-access-key` are copied into s3 replicas that do not set their own.
 *
 * @throws {ConfigError} On the first problem, with one line naming `options.path`, the line
 *   and the key. Secret values are never included.
 */
export function parseConfig(text: string, options: ParseConfigOptions): Config {
  const env = options.env ?? defaultEnv;
  const expanded = options.expandEnv === false
    ? { text, toOriginal: (offset: number) => offset }
    : expandEnvMapped(text, env);
  const parser = new ConfigParser(options.path, text, expanded.toOriginal, {
    cwd: options.cwd ?? Deno.cwd(),
    home: options.home,
  });
  return parser.parse(expanded.text);
}

/** "a", "a and b", "a, b and c". */
function listed(items: string[]): string {
  return items.length < 2 ? items.join("") : `${items.slice(0, -1).join(", ")} and ${items.at(-1)}`;
}

/**
 * The variable's value if this process may read it, else `undefined`: asks nothing (a run
 * without the permission is not interrupted by a prompt) and throws nothing.
 */
function grantedEnv(name: string): string | undefined {
  if (Deno.permissions.querySync({ name: "env", variable: name }).state !== "granted") {
    return undefined;
  }
  return Deno.env.get(name);
}

/** `Deno.env.get`, except names the OS cannot hold (like `a=b` from `${a=b}`) are unset. */
function defaultEnv(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch (err) {
    if (err instanceof Deno.errors.NotCapable) throw err;
    return undefined;
  }
}

/** A key of a mapping with its nodes (merge keys already applied). */
interface Entry {
  key: string;
  keyNode: Node;
  value: Node | null;
}

/** Walks the YAML document, validating as it goes. One instance per parse. */
class ConfigParser {
  readonly #file: string;
  readonly #lineStarts: number[];
  readonly #toOriginal: (offset: number) => number;
  readonly #cwd: string;
  readonly #home: string | undefined;
  #doc!: Document.Parsed;

  constructor(
    file: string,
    originalText: string,
    toOriginal: (offset: number) => number,
    options: { cwd: string; home: string | undefined },
  ) {
    this.#file = file;
    this.#toOriginal = toOriginal;
    this.#cwd = options.cwd;
    this.#home = options.home;
    // Line numbers refer to the file as written, even if a variable held newlines.
    this.#lineStarts = [0];
    for (let i = 0; i < originalText.length; i++) {
      if (originalText[i] === "\n") this.#lineStarts.push(i + 1);
    }
  }

  parse(text: string): Config {
    this.#doc = parseDocument(text, { version: "1.1", prettyErrors: false });
    const problem = this.#doc.errors[0] ?? this.#doc.warnings[0];
    if (problem) {
      const message = problem.message.split("\n")[0].replace(/ at line \d+, column \d+:?$/, "");
      throw this.#error(problem.pos[0], `invalid YAML: ${lowerFirst(message)}`);
    }
    const root = this.#doc.contents;
    const config: Config = { path: this.#file, dbs: [], logging: defaultLogging() };
    if (root === null || isScalar(root) && root.value === null) return config;
    const top = this.#entries(root, "the top level", TOP_KEYS);

    const globalKeys: GlobalKeys = {};
    let dbsEntry: Entry | undefined;
    for (const entry of top) {
      switch (entry.key) {
        case "addr":
          setIfDefined(config, "addr", this.#addr(entry));
          break;
        case "exec":
          setIfDefined(config, "exec", this.#string(entry, entry.key) || undefined);
          break;
        case "access-key-id":
          globalKeys["access-key-id"] = this.#string(entry, entry.key) || undefined;
          break;
        case "secret-access-key":
          globalKeys["secret-access-key"] = this.#string(entry, entry.key) || undefined;
          break;
        case "logging":
          config.logging = this.#logging(entry);
          break;
        case "dbs":
          dbsEntry = entry;
          break;
      }
    }
    if (dbsEntry) config.dbs = this.#dbs(dbsEntry, globalKeys);
    return config;
  }

  #logging(entry: Entry): LoggingConfig {
    const logging = defaultLogging();
    if (this.#isNull(entry.value)) return logging;
    for (const e of this.#entries(entry.value!, "logging", LOGGING_KEYS, "logging")) {
      const key = `logging.${e.key}`;
      if (e.key === "stderr") {
        logging.stderr = this.#bool(e, key) ?? false;
      } else if (e.key === "level") {
        const level = (this.#string(e, key) ?? "").toLowerCase();
        if (level === "warning" || level === "warn") logging.level = "warn";
        else if (level === "debug" || level === "info" || level === "error") logging.level = level;
        else if (level !== "") {
          this.#fail(e.value, `${key} must be debug, info, warn or error, got "${level}"`);
        }
      } else {
        const type = this.#string(e, key) ?? "";
        if (type === "text" || type === "json") logging.type = type;
        else if (type !== "") this.#fail(e.value, `${key} must be text or json, got "${type}"`);
      }
    }
    return logging;
  }

  #dbs(entry: Entry, globalKeys: GlobalKeys): DbConfig[] {
    const dbs: DbConfig[] = [];
    const seen = new Map<string, string>();
    for (const [i, node] of this.#items(entry, "dbs")) {
      const where = `dbs[${i}]`;
      const { db, pathNode } = this.#db(node, where, globalKeys);
      const other = seen.get(db.path);
      if (other !== undefined) {
        this.#fail(pathNode, `${where}.path "${db.path}" is already used by ${other}`);
      }
      seen.set(db.path, where);
      dbs.push(db);
    }
    return dbs;
  }

  #db(
    node: Node,
    where: string,
    globalKeys: GlobalKeys,
  ): { db: DbConfig; pathNode: Node } {
    const entries = this.#entries(node, where, DB_KEYS, "db");
    const db: DbConfig = { path: "", replicas: [] };
    let pathNode: Node | undefined;
    let replicasEntry: Entry | undefined;
    for (const e of entries) {
      const key = `${where}.${e.key}`;
      switch (e.key) {
        case "path": {
          const path = this.#string(e, key);
          if (path) {
            db.path = this.#resolvePath(path, e.value, key);
            pathNode = e.value!;
          }
          break;
        }
        case "meta-path": {
          const path = this.#string(e, key);
          if (path) db.metaPath = this.#resolvePath(path, e.value, key);
          break;
        }
        case "monitor-interval":
          setIfDefined(db, "monitorIntervalMs", this.#duration(e, key, "non-negative"));
          break;
        case "checkpoint-interval":
          setIfDefined(db, "checkpointIntervalMs", this.#duration(e, key, "non-negative"));
          break;
        case "busy-timeout":
          setIfDefined(db, "busyTimeoutMs", this.#duration(e, key, "non-negative"));
          break;
        case "min-checkpoint-page-count":
          setIfDefined(db, "minCheckpointPageCount", this.#integer(e, key, 1));
          break;
        case "max-checkpoint-page-count":
          setIfDefined(db, "maxCheckpointPageCount", this.#integer(e, key, 0));
          break;
        case "replicas":
          replicasEntry = e;
          break;
      }
    }
    if (pathNode === undefined) this.#fail(node, `${where} has no path`);
    if (replicasEntry) {
      const names = new Map<string, string>();
      for (const [i, replicaNode] of this.#items(replicasEntry, `${where}.replicas`)) {
        const rwhere = `${where}.replicas[${i}]`;
        const { replica, nameNode } = this.#replica(replicaNode, rwhere, globalKeys);
        const name = replica.name ?? replica.type;
        const other = names.get(name);
        if (other !== undefined) {
          this.#fail(
            nameNode ?? replicaNode,
            `${rwhere} has the same name "${name}" as ${other} (give each replica a distinct name)`,
          );
        }
        names.set(name, rwhere);
        db.replicas.push(replica);
      }
    }
    return { db, pathNode };
  }

  #replica(
    node: Node,
    where: string,
    globalKeys: GlobalKeys,
  ): { replica: ReplicaConfig; nameNode?: Node } {
    // Keys are checked once the type is known: a key of another type is better explained
    // by the type.
    const entries = this.#uncheckedEntries(node, where);
    const get = (key: string) => entries.find((e) => e.key === key);
    const text = (key: string) => {
      const e = get(key);
      return e ? this.#string(e, `${where}.${key}`) || undefined : undefined;
    };

    // The type comes first: every other check depends on it. The URL scheme wins.
    const url = text("url");
    const typeKey = text("type");
    let fromUrl: ReplicaConfig | undefined;
    if (url !== undefined) {
      const checked = checkReplicaUrl(url);
      if (typeof checked === "string") this.#fail(get("url")!.value, `${where}.url: ${checked}`);
      fromUrl = checked;
    }
    const type = fromUrl?.type ?? typeKey ?? "file";
    const backend = backendOf(type);
    if (!backend) {
      this.#fail(
        get("type")!.value,
        `${where}.type "${type}" is unknown (supported: ${backendTypes()})`,
      );
    }
    this.#checkKeys(entries, where, REPLICA_KEYS, "replica");
    for (const e of entries) {
      if (!BACKEND_KEYS.has(e.key) || Object.hasOwn(backend.keys, e.key)) continue;
      const owners = backendsWithKey(e.key).map((b) => b.type);
      this.#fail(
        e.keyNode,
        `${where}.${e.key} applies only to ${listed(owners)} replicas (set type: ${
          owners[0]
        } or use an ${owners[0]}:// url)`,
      );
    }

    const replica: ReplicaConfig = { type, settings: {} };
    const path = text("path");
    if (path !== undefined) {
      const pathNode = get("path")!.value;
      if (URL_REGEXP.test(path)) {
        this.#fail(pathNode, `${where}.path "${redactUrl(path)}" is a URL (use the url key)`);
      }
      if (url !== undefined) this.#fail(pathNode, `${where} cannot set both url and path`);
    }
    if (url !== undefined) replica.url = url;
    if (fromUrl?.path !== undefined) replica.path = fromUrl.path;
    else if (path !== undefined) {
      replica.path = backend.localPath
        ? this.#resolvePath(path, get("path")!.value, `${where}.path`)
        : path;
    }
    for (const [key, spec] of Object.entries(backend.keys)) {
      const e = get(key);
      const value = e
        ? (spec.kind === "bool" ? this.#bool(e, `${where}.${key}`) : text(key))
        : spec.global
        ? globalKeys[key]
        : undefined;
      if (value !== undefined) replica.settings[key] = value;
    }
    const problem = backend.check({ url, path: replica.path, settings: replica.settings });
    if (problem) {
      const at = problem.key ? get(problem.key)?.value ?? node : node;
      this.#fail(at, `${where} ${problem.message}`);
    }
    const ageEntry = get("age");
    if (ageEntry) setIfDefined(replica, "age", this.#age(ageEntry, `${where}.age`));

    const name = text("name");
    setIfDefined(replica, "name", name);
    type DurationField =
      | "retentionMs"
      | "retentionCheckIntervalMs"
      | "syncIntervalMs"
      | "snapshotIntervalMs"
      | "validationIntervalMs";
    const durations: [string, DurationField, "positive" | "non-negative"][] = [
      ["retention", "retentionMs", "non-negative"],
      ["retention-check-interval", "retentionCheckIntervalMs", "positive"],
      ["sync-interval", "syncIntervalMs", "positive"],
      ["snapshot-interval", "snapshotIntervalMs", "non-negative"],
      ["validation-interval", "validationIntervalMs", "non-negative"],
    ];
    for (const [key, field, sign] of durations) {
      const e = get(key);
      const ms = e ? this.#duration(e, `${where}.${key}`, sign) : undefined;
      if (ms !== undefined) replica[field] = ms;
    }
    return { replica, nameNode: name !== undefined ? get("name")!.value ?? undefined : undefined };
  }

  /**
   * The `age` key: `identities` (secret keys, or identity files' text) to decrypt with and
   * `recipients` (public keys) to encrypt to, as v0.3.13 reads it. Each key is checked for
   * its form here, so that a typo is named with its line (never with its value).
   */
  #age(entry: Entry, where: string): ReplicaConfig["age"] {
    if (this.#isNull(entry.value)) return undefined;
    const age = { identities: [] as string[], recipients: [] as string[] };
    for (const e of this.#entries(entry.value!, where, AGE_KEYS)) {
      const list = e.key === "identities" ? age.identities : age.recipients;
      for (const [i, item] of this.#items(e, `${where}.${e.key}`)) {
        const key = `${where}.${e.key}[${i}]`;
        const value = this.#string({ key: e.key, keyNode: e.keyNode, value: item }, key)?.trim();
        if (!value) this.#fail(item, `${key} is empty`);
        const ok = e.key === "recipients"
          ? AGE_RECIPIENT_REGEXP.test(value)
          : value.split("\n").some((l) => AGE_IDENTITY_REGEXP.test(l.trim()));
        if (!ok) {
          this.#fail(
            item,
            e.key === "recipients"
              ? `${key} is not an age X25519 recipient ("age1…"): ${JSON.stringify(value)}`
              : `${key} is not an age X25519 identity ("AGE-SECRET-KEY-1…")`,
          );
        }
        list.push(value);
      }
    }
    if (age.identities.length === 0 && age.recipients.length === 0) {
      this.#fail(
        entry.value,
        `${where} needs identities (to restore) and recipients (to replicate)`,
      );
    }
    return age;
  }

  /**
   * The keys of a mapping with `<<` merges applied, after rejecting keys not in `allowed`.
   */
  #entries(node: Node, where: string, allowed: string[], level?: string): Entry[] {
    const entries = this.#uncheckedEntries(node, where);
    this.#checkKeys(entries, where, allowed, level);
    return entries;
  }

  #uncheckedEntries(node: Node, where: string): Entry[] {
    const map = this.#resolve(node);
    if (!isMap(map)) this.#fail(node, `${where} must be a mapping of keys to values`);
    return this.#mapEntries(map, where);
  }

  #checkKeys(entries: Entry[], where: string, allowed: string[], level?: string): void {
    for (const e of entries) {
      if (!allowed.includes(e.key)) {
        this.#fail(e.keyNode, unknownKeyMessage(e.key, where, allowed, level));
      }
    }
  }

  #mapEntries(map: YAMLMap, where: string, depth = 0): Entry[] {
    const explicit: Entry[] = [];
    const merged: Entry[] = [];
    for (const pair of map.items) {
      const keyNode = pair.key as Node | null;
      const value = (pair.value ?? null) as Node | null;
      if (isScalar(keyNode) && typeof keyNode.value === "symbol" && keyNode.source === "<<") {
        // A YAML 1.1 merge key, which yaml.v2 supports too: `<<: *defaults`.
        const target = this.#resolve(value);
        const sources = isSeq(target)
          ? target.items.map((n) => this.#resolve(n as Node))
          : [target];
        for (const source of sources) {
          if (!isMap(source) || depth > 16) {
            this.#fail(value ?? keyNode, `a merge key (<<) in ${where} must refer to a mapping`);
          }
          merged.push(...this.#mapEntries(source, where, depth + 1));
        }
        continue;
      }
      if (!isScalar(keyNode)) this.#fail(keyNode ?? map, `keys in ${where} must be plain names`);
      // yaml.v2 reads `1:` or `yes:` as the key named by the text; so do we.
      const key = typeof keyNode.value === "string"
        ? keyNode.value
        : String(keyNode.source ?? keyNode.value);
      explicit.push({ key, keyNode, value });
    }
    const keys = new Set(explicit.map((e) => e.key));
    const result = [...explicit];
    for (const e of merged) {
      if (!keys.has(e.key)) {
        keys.add(e.key);
        result.push(e);
      }
    }
    return result;
  }

  /** The items of a list value, with their index. `null` is an empty list. */
  #items(entry: Entry, key: string): [number, Node][] {
    if (this.#isNull(entry.value)) return [];
    const seq = this.#resolve(entry.value);
    if (!isSeq(seq)) {
      this.#fail(entry.value, `${key} must be a list (each item starting with "- ")`);
    }
    return seq.items.map((item, i) => {
      const n = item as Node | null;
      if (n === null || this.#isNull(n)) this.#fail(n ?? seq, `${key}[${i}] is empty`);
      return [i, n];
    });
  }

  /** A string value. `null` is unset. Other scalars are taken as written, like yaml.v2. */
  #string(entry: Entry, key: string): string | undefined {
    const node = this.#resolve(entry.value);
    if (node === null || this.#isNull(node)) return undefined;
    if (isScalar(node)) {
      if (typeof node.value === "string") return node.value;
      if (node.source !== undefined) return node.source;
    }
    this.#fail(entry.value, `${key} must be a string, not a ${describeNode(node)}`);
  }

  #bool(entry: Entry, key: string): boolean | undefined {
    const node = this.#resolve(entry.value);
    if (node === null || this.#isNull(node)) return undefined;
    if (isScalar(node) && typeof node.value === "boolean") return node.value;
    this.#fail(entry.value, `${key} must be true or false, got ${this.#shown(node, key)}`);
  }

  #integer(entry: Entry, key: string, min: number): number | undefined {
    const node = this.#resolve(entry.value);
    if (node === null || this.#isNull(node)) return undefined;
    if (!isScalar(node) || !isIntegerScalar(node)) {
      this.#fail(entry.value, `${key} must be a whole number, got ${this.#shown(node, key)}`);
    }
    const n = node.value as number;
    if (n < min) {
      const bound = min === 1 ? "greater than 0" : `at least ${min}`;
      this.#fail(entry.value, `${key} must be ${bound}, got ${node.source}`);
    }
    return n;
  }

  #duration(entry: Entry, key: string, sign: "positive" | "non-negative"): number | undefined {
    const node = this.#resolve(entry.value);
    if (node === null || this.#isNull(node)) return undefined;
    const shown = this.#shown(node, key);
    let result: number | string;
    if (isScalar(node) && typeof node.value === "string") result = durationNs(node.value);
    else if (isScalar(node) && isIntegerScalar(node)) result = durationNs(node.value as number);
    else {
      this.#fail(entry.value, `${key} must be a duration such as "1s" or "500ms", got ${shown}`);
    }
    if (typeof result === "string") {
      this.#fail(entry.value, `${key} ${shown} is not a duration: ${result}`);
    }
    if (result < 0 || sign === "positive" && result === 0) {
      const bound = sign === "positive" ? "greater than 0" : "0 or more";
      this.#fail(entry.value, `${key} must be ${bound}, got ${shown}`);
    }
    return result / 1e6;
  }

  #addr(entry: Entry): string | undefined {
    const addr = this.#string(entry, "addr");
    if (!addr) return undefined;
    const m = ADDR_REGEXP.exec(addr);
    if (!m || Number(m[2]) > 65535) {
      this.#fail(entry.value, `addr must be HOST:PORT such as ":9090", got "${addr}"`);
    }
    return addr;
  }

  #resolvePath(path: string, node: Node | null, key: string): string {
    try {
      return expandPath(path, this.#cwd, this.#home);
    } catch (err) {
      this.#fail(node, `${key}: ${lowerFirst((err as Error).message)}`);
    }
  }

  /** Follows an alias to its target. */
  #resolve(node: Node | null): Node | null {
    if (!isAlias(node)) return node;
    const target = node.resolve(this.#doc) as Node | undefined;
    if (target === undefined) this.#fail(node, `alias *${node.source} refers to no anchor`);
    return target;
  }

  #isNull(node: Node | null): boolean {
    return node === null || isScalar(node) && node.value === null;
  }

  /** How a value is quoted in a message: never the value of a secret key. */
  #shown(node: Node, key: string): string {
    if (SECRET_KEYS.has(key.slice(key.lastIndexOf(".") + 1))) return "a hidden value";
    if (!isScalar(node)) return `a ${describeNode(node)}`;
    const text = String(typeof node.value === "string" ? node.value : node.source ?? node.value);
    const short = text.length > 60 ? `${text.slice(0, 57)}...` : text;
    return JSON.stringify(short);
  }

  #fail(node: Node | YAMLMap | null | undefined, message: string): never {
    const range = (node as { range?: [number, number, number] } | null)?.range;
    throw this.#error(range?.[0], message);
  }

  #error(offset: number | undefined, message: string): ConfigError {
    if (offset === undefined) return new ConfigError(`config "${this.#file}": ${message}`);
    const original = this.#toOriginal(offset);
    let lo = 0;
    let hi = this.#lineStarts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.#lineStarts[mid] <= original) lo = mid;
      else hi = mid - 1;
    }
    return new ConfigError(`config "${this.#file}" line ${lo + 1}: ${message}`);
  }
}

/** Sets `target[key]` only if `value` is defined, so unset keys stay absent. */
function setIfDefined<T extends object, K extends keyof T>(
  target: T,
  key: K,
  value: T[K] | undefined,
): void {
  if (value !== undefined) target[key] = value;
}

function defaultLogging(): LoggingConfig {
  return { level: "info", type: "text", stderr: false };
}

function isIntegerScalar(node: Scalar): boolean {
  return typeof node.value === "number" && Number.isSafeInteger(node.value) &&
    INTEGER_SOURCE_REGEXP.test(node.source ?? "");
}

function describeNode(node: Node): string {
  if (isMap(node)) return "mapping";
  if (isSeq(node)) return "list";
  return "value";
}

function lowerFirst(s: string): string {
  return s.length > 1 && /^[A-Z][a-z]/.test(s) ? s[0].toLowerCase() + s.slice(1) : s;
}

/** The message for a key that is not allowed, with the best hint we can give. */
function unknownKeyMessage(key: string, where: string, allowed: string[], level?: string): string {
  const base = `unknown key "${key}" ${level === undefined ? "at" : "in"} ${where}`;
  const suggestion = closest(key, allowed);
  if (suggestion !== undefined) return `${base} (did you mean "${suggestion}"?)`;
  if (V05_KEYS.has(key)) return `${base} (a Litestream 0.5 setting; this version follows v0.3.13)`;
  const home = level !== "db" && DB_KEYS.includes(key)
    ? "under dbs[]"
    : level !== "replica" && REPLICA_KEYS.includes(key)
    ? "under dbs[].replicas[]"
    : level !== undefined && TOP_KEYS.includes(key)
    ? "at the top level"
    : undefined;
  return home ? `${base} (it belongs ${home})` : base;
}

/** The allowed key closest to `key`, if it is close enough to be a likely typo. */
function closest(key: string, allowed: string[]): string | undefined {
  const normalized = key.replace(/([a-z])([A-Z])/g, "$1-$2").replaceAll("_", "-").toLowerCase();
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of allowed) {
    const d = normalized === candidate ? 0 : editDistance(normalized, candidate);
    if (d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  const limit = Math.min(2, Math.floor(key.length / 3));
  return bestDistance <= limit ? best : undefined;
}

/** Levenshtein distance. */
function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length];
}
