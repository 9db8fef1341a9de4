/**
 * The `replicate` config files of the benchmark: one database and one replica, the same file
 * for both tools.
 *
 * @module
 */

/** A YAML scalar: strings double-quoted (JSON is valid YAML), numbers and booleans as they are. */
type Scalar = string | number | boolean;

/** What one config holds. */
export interface ReplicateConfig {
  db: string;
  /** The replica's keys as in litestream.yml (`type`, `path`, `sync-interval`, …). */
  replica: Record<string, Scalar>;
  /** Keys of the database's entry (`max-checkpoint-page-count`, …). */
  dbSettings?: Record<string, Scalar>;
  /** `addr:`, where the metrics are served (e.g. `127.0.0.1:9090`). */
  addr?: string;
}

/** Writes `config` to `path` as litestream.yml. */
export async function writeReplicateConfig(path: string, config: ReplicateConfig): Promise<void> {
  const value = (v: Scalar) => typeof v === "string" ? JSON.stringify(v) : String(v);
  const keys = (indent: string, entries: Record<string, Scalar>) =>
    Object.entries(entries).map(([k, v]) => `${indent}${k}: ${value(v)}`);
  const [first, ...rest] = keys("", config.replica);
  const yaml = [
    ...(config.addr !== undefined ? [`addr: ${value(config.addr)}`] : []),
    "dbs:",
    `  - path: ${value(config.db)}`,
    ...keys("    ", config.dbSettings ?? {}),
    "    replicas:",
    `      - ${first}`,
    ...rest.map((line) => `        ${line}`),
    "",
  ].join("\n");
  await Deno.writeTextFile(path, yaml);
}

/** A file replica in `path`, with extra keys. */
export function fileReplica(path: string, keys: Record<string, Scalar> = {}) {
  return { type: "file", path, ...keys };
}

/** An S3 replica under `prefix` on a test server (moto), path-style. */
export function s3Replica(
  server: { bucket: string; endpoint: string; accessKeyId: string; secretAccessKey: string },
  prefix: string,
): Record<string, Scalar> {
  return {
    type: "s3",
    bucket: server.bucket,
    path: prefix,
    endpoint: server.endpoint,
    region: "us-east-1",
    "force-path-style": true,
    "access-key-id": server.accessKeyId,
    "secret-access-key": server.secretAccessKey,
  };
}
