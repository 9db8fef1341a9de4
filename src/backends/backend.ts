/**
 * The shape of a replica backend: everything the config parser, the URL parser and the
 * client factory need to know about one kind of replica, declared in one place
 * (`src/backends/<type>.ts`) and listed once in the table of `src/backends/mod.ts`.
 *
 * A descriptor is light: it never imports its client module, whose SDK is loaded only when
 * a replica of that type is used (`create`), so that a file-replica user never downloads it.
 *
 * @module
 */
import type { ReplicaClient } from "../replica_client.ts";

/** How a backend key's value is read from the config file. */
export type BackendKeyKind = "string" | "bool";

/** One config key a backend accepts on a replica, besides the common ones. */
export interface BackendKey {
  kind: BackendKeyKind;
  /** Never shown in a message or a log (passwords, secret keys). */
  secret?: boolean;
  /** A top-level key of the same name supplies the value when the replica sets none. */
  global?: boolean;
}

/** A replica's backend settings, by config key (`bucket`, `key-path`, …). */
export type BackendSettings = Record<string, string | boolean>;

/** What a backend is given to build its client. */
export interface BackendReplica {
  /** The replica URL as written (after `$ENV` expansion), if the config used one. */
  url?: string;
  /** The `path` key: for file replicas an absolute directory, else as written. */
  path?: string;
  /** Backend keys that were set. */
  settings: BackendSettings;
}

/** One kind of replica: its scheme, config keys, validation and client factory. */
export interface Backend {
  /** The `type` value and URL scheme, e.g. `"s3"`. */
  readonly type: string;
  /** What a replica of this kind is, in messages ("an s3 replica"). */
  readonly title: string;
  /** Backend keys a replica of this type accepts, besides the common ones. */
  readonly keys: Readonly<Record<string, BackendKey>>;
  /** The `path` key (and a URL's path) is a local directory, resolved against the config's directory. */
  readonly localPath?: boolean;
  /**
   * Checks a URL of this scheme (already parsed by `new URL`; `shown` has no password):
   * returns why it cannot be used, or the `path` it names when that is a local directory.
   */
  checkUrl(url: URL, shown: string): string | { path?: string };
  /**
   * What a replica of this type still lacks, or conflicts in its keys: the message follows
   * the replica's place in the config ("dbs[0].replicas[1] cannot set both url and bucket")
   * and `key` names the key whose line to show; undefined when the replica is complete.
   */
  check(replica: BackendReplica): { message: string; key?: string } | undefined;
  /**
   * Builds the client, loading the backend's module (and its SDK) on first use.
   *
   * @throws {UsageError} If the settings cannot describe a working replica.
   */
  create(replica: BackendReplica): Promise<ReplicaClient>;
}

/** A string setting, if set. */
export function str(v: string | boolean | undefined): string | undefined {
  return typeof v === "string" ? v : undefined;
}

/** A boolean setting, if set. */
export function bool(v: string | boolean | undefined): boolean | undefined {
  return typeof v === "boolean" ? v : undefined;
}
