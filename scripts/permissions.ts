/**
 * The Deno permissions of the `litestream` command, in one place for the build scripts and
 * the tests that check `deno.json`, `deploy/` and the README against them. The README's
 * "Permissions" section explains each flag and lists the narrower ones each use needs.
 *
 * @module
 */

/**
 * Flags of the general-purpose command (`deno task install`, `deno task compile`, the
 * bundle's `#!` line and the `replicate`/`restore`/`litestream` tasks): every command with
 * file and S3 replicas, config files and metrics. Not `--allow-run`: only `-exec` needs it,
 * and Deno counts it as almost `--allow-all`.
 */
export const COMMAND_PERMISSIONS: readonly string[] = [
  "--allow-read",
  "--allow-write",
  "--allow-env",
  "--allow-net",
  "--allow-sys=osRelease",
];

/**
 * Variables an S3 replica reads: credentials and settings (`AWS_*`, `LITESTREAM_*`), the
 * home directory the AWS SDK looks for `~/.aws` in (it reads all four names), and the
 * tracing header variable it checks on every request.
 */
export const S3_ENV: readonly string[] = [
  "AWS_*",
  "LITESTREAM_*",
  "HOME",
  "USERPROFILE",
  "HOMEPATH",
  "HOMEDRIVE",
  "_X_AMZN_TRACE_ID",
];

/** Variables the YAML parser checks whenever a config file is read (its debug switches). */
export const CONFIG_ENV: readonly string[] = ["LOG_TOKENS", "LOG_STREAM"];
