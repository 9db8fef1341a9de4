/**
 * Pieces shared by the subcommands: config loading, replica selection, formatting.
 *
 * @module
 */
import type { Config, DbConfig, ReplicaConfig } from "../config.ts";
import { replicaConfigFromUrl, URL_REGEXP } from "../replica_url.ts";
import { newReplicaClient } from "../clients/mod.ts";
import type { ReplicaClient } from "../replica_client.ts";
import { UsageError } from "../errors.ts";
import { absPath } from "../internal/fs.ts";
import type { FlagSpec } from "./flags.ts";

/** Flags every config-reading command takes. */
export const CONFIG_FLAGS = {
  config: {
    type: "string",
    valueName: "PATH",
    description: "Path to the config file (default $LITESTREAM_CONFIG or /etc/litestream.yml)",
  },
  "no-expand-env": {
    type: "boolean",
    description: "Do not expand $VAR and ${VAR} in the config file",
  },
} as const satisfies FlagSpec;

/** A positional argument is a replica URL if it has a scheme, as in v0.3.13. */
export function isUrl(arg: string): boolean {
  return URL_REGEXP.test(arg);
}

/**
 * Loads the config named by `-config`, `$LITESTREAM_CONFIG` or the default path. The config
 * module (and its YAML parser) is loaded here, so commands given a URL never load it.
 */
export async function readConfig(
  values: { config?: string; "no-expand-env"?: boolean },
): Promise<Config> {
  const { configPathFromEnv, loadConfig } = await import("../config.ts");
  const { path } = configPathFromEnv(values.config);
  return await loadConfig(path, { expandEnv: !values["no-expand-env"] });
}

/** A replica to read from, with its name and client. */
export interface NamedClient {
  name: string;
  client: ReplicaClient;
  config: ReplicaConfig;
}

/**
 * Resolves `DB_PATH | REPLICA_URL` to the replicas to read: the URL's, or the config's
 * replicas of that database (filtered by `-replica`).
 */
export async function resolveTarget(
  arg: string,
  values: { config?: string; "no-expand-env"?: boolean; replica?: string },
): Promise<{ db?: DbConfig; replicas: NamedClient[] }> {
  if (isUrl(arg)) {
    if (values.config !== undefined) {
      throw new UsageError("Cannot specify a replica URL and the -config flag");
    }
    const rc = replicaConfigFromUrl(arg);
    const client = await newReplicaClient(rc);
    if (values.replica !== undefined && values.replica !== client.type) {
      throw new UsageError(
        `Replica "${values.replica}" not found: the URL's replica is "${client.type}"`,
      );
    }
    return { replicas: [{ name: client.type, client, config: rc }] };
  }
  const config = await readConfig(values);
  const path = absPath(arg);
  const db = config.dbs.find((d) => d.path === path);
  if (!db) {
    throw new UsageError(`Database "${path}" not found in config "${config.path}"`);
  }
  const replicas: NamedClient[] = [];
  for (const rc of db.replicas) {
    const client = await newReplicaClient(rc);
    replicas.push({ name: rc.name ?? client.type, client, config: rc });
  }
  if (values.replica !== undefined) {
    const r = replicas.filter((x) => x.name === values.replica);
    if (r.length === 0) {
      throw new UsageError(`Replica "${values.replica}" not found for database "${path}"`);
    }
    return { db, replicas: r };
  }
  return { db, replicas };
}

/** RFC 3339 in UTC to the second, as v0.3.13 prints times. */
export function formatTime(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** Formats milliseconds like Go's time.Duration.String() ("1h2m3s", "4ms", "-4ms"). */
export function formatGoDuration(ms: number): string {
  if (ms === 0) return "0s";
  const neg = ms < 0;
  let v = Math.abs(Math.trunc(ms));
  let out: string;
  if (v < 1000) out = `${v}ms`;
  else {
    const h = Math.floor(v / 3600_000);
    v -= h * 3600_000;
    const m = Math.floor(v / 60_000);
    v -= m * 60_000;
    const s = (v / 1000).toFixed(3).replace(/\.?0+$/, "");
    out = (h ? `${h}h` : "") + (h || m ? `${m}m` : "") + `${s}s`;
  }
  return neg ? `-${out}` : out;
}

/** Parses a `-index` value: hexadecimal, as in v0.3.13 (optionally 0x-prefixed). */
export function parseIndex(s: string): number {
  const m = /^(?:0x)?([0-9a-fA-F]{1,8})$/.exec(s.trim());
  const n = m ? parseInt(m[1], 16) : NaN;
  if (!m || n > 0x7fffffff) {
    throw new UsageError(`Invalid -index "${s}": must be a hexadecimal WAL index such as 0000000a`);
  }
  return n;
}

/** Parses a `-timestamp` value in RFC 3339. */
export function parseTimestamp(s: string): Date {
  const m = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/i.test(s);
  const d = new Date(s);
  if (!m || isNaN(d.getTime())) {
    throw new UsageError(
      `Invalid -timestamp "${s}": must be RFC 3339, e.g. 2000-01-01T00:00:00Z`,
    );
  }
  return d;
}
