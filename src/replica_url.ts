/**
 * Replica URLs and paths given on the command line or in a config's `url` key: which backend,
 * where, and whether the URL is usable. Apart from the config file's parser, so that a command
 * given a URL (`restore s3://…`) loads no YAML parser (30 ms of its start-up).
 *
 * @module
 */
import type { ReplicaConfig } from "./config.ts";
import { UsageError } from "./errors.ts";
import { backendOf, BACKENDS } from "./backends/mod.ts";
import { absPath } from "./internal/fs.ts";

/** A string with a scheme (`s3://`, `file://`): a URL rather than a path. */
export const URL_REGEXP = /^\w+:\/\//;
const URL_SCHEME_REGEXP = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//;

/** Options of {@linkcode replicaConfigFromUrl}. */
export interface ReplicaUrlOptions {
  /** Directory relative paths are resolved against. @default {Deno.cwd()} */
  cwd?: string;
  /** Directory `~` stands for. @default {$HOME, read only when a path starts with `~`} */
  home?: string;
}

/**
 * Builds a replica from a URL or path given on the command line, as `replicate DB URL` and
 * `restore URL` do. `file:///abs/dir`, or a bare absolute or relative path, is a file
 * replica with an absolute `path`; `s3://bucket/prefix` is an s3 replica whose client parses
 * the URL. Nothing else is set (so the sync interval is left to the caller).
 *
 * @throws {UsageError} For an unknown or unsupported scheme, or a malformed URL.
 */
export function replicaConfigFromUrl(url: string, options: ReplicaUrlOptions = {}): ReplicaConfig {
  const cwd = options.cwd ?? Deno.cwd();
  if (!URL_REGEXP.test(url)) {
    if (url === "") throw new UsageError("replica URL is empty");
    try {
      return { type: "file", path: expandPath(url, cwd, options.home), settings: {} };
    } catch (err) {
      throw new UsageError(`cannot use replica path "${url}"`, { cause: err });
    }
  }
  const result = checkReplicaUrl(url);
  if (typeof result === "string") throw new UsageError(result);
  return result;
}

/** Validates a replica URL; returns the replica or why the URL is unusable. */
export function checkReplicaUrl(url: string): ReplicaConfig | string {
  const shown = redactUrl(url);
  const scheme = URL_SCHEME_REGEXP.exec(url)?.[1].toLowerCase();
  if (scheme === undefined) {
    return `replica URL "${shown}" needs a scheme such as "s3://" or "file://"`;
  }
  const backend = backendOf(scheme);
  if (!backend) {
    return `unknown replica URL scheme "${scheme}" in "${shown}" (supported: ${backendTypes()})`;
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return `replica URL "${shown}" is malformed`;
  }
  try {
    decodeURIComponent(parsed.pathname); // every backend decodes the path
  } catch {
    return `replica URL "${shown}" has a malformed %-escape in its path`;
  }
  const checked = backend.checkUrl(parsed, shown);
  if (typeof checked === "string") return checked;
  const replica: ReplicaConfig = { type: backend.type, url, settings: {} };
  if (checked.path !== undefined) replica.path = absPath(checked.path);
  return replica;
}

/** The replica types there are, for messages. */
export function backendTypes(): string {
  return BACKENDS.map((b) => b.type).join(", ");
}

/** Replaces the password part of a URL so it can be shown. */
export function redactUrl(url: string): string {
  return url.replace(/^(\w+:\/\/[^/@]*?):[^/@]*@/, "$1:***@");
}

/**
 * `~` or `~/…` becomes the home directory; the result is absolute against `cwd`. `$HOME` is
 * read only here, for a path that starts with `~`, so other paths need no env permission.
 */
export function expandPath(path: string, cwd: string, home?: string): string {
  if (path === "~" || path.startsWith("~/")) {
    home ??= homeDir();
    if (!home) throw new Error(`Cannot expand "${path}": no home directory ($HOME is not set)`);
    return absPath(path.slice(2), home);
  }
  return absPath(path, cwd);
}

/**
 * `$HOME` (`%USERPROFILE%` on Windows), if set.
 *
 * @throws {Deno.errors.NotCapable} Without permission to read the variable.
 */
function homeDir(): string | undefined {
  return Deno.env.get("HOME") ||
    (Deno.build.os === "windows" ? Deno.env.get("USERPROFILE") : undefined) || undefined;
}
