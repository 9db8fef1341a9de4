/**
 * Domain errors and the helpers that turn any error into one line.
 *
 * @module
 */

/** Bad command-line usage or configuration: the CLI exits 2 with the message. */
export class UsageError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "UsageError";
  }
}

/** A configuration file that cannot be used; the message names the file and line or key. */
export class ConfigError extends UsageError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ConfigError";
  }
}

/**
 * The replica is missing a piece or holds a corrupt one: restoring would give a wrong
 * database, so we refuse. The message names the object.
 */
export class ReplicaIntegrityError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ReplicaIntegrityError";
  }
}

/**
 * SQLite counts frames of the WAL as committed that fail their checksums, so the shadow WAL
 * cannot follow the WAL's current life to its end (SQLite 3.40 leaves such frames after a
 * ROLLBACK TO in a transaction that spilled into the WAL; its own recovery would drop them).
 */
export class WalChainError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "WalChainError";
  }
}

/** Thrown by restore when no generation matches the request. */
export class NoBackupError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "NoBackupError";
  }
}

/** Returns the first error in `err`'s cause chain that is an instance of `type`. */
export function findCause<T extends Error>(
  err: unknown,
  type: abstract new (...a: never[]) => T,
): T | undefined {
  for (let e = err; e instanceof Error; e = e.cause) if (e instanceof type) return e;
  return undefined;
}

/** Describes an error and its causes on one line: messages joined with ": ". */
export function describeError(err: unknown): string {
  const parts: string[] = [];
  for (let e: unknown = err; e !== undefined && e !== null; e = (e as Error).cause) {
    const msg = e instanceof Error ? e.message : String(e);
    const line = msg.split("\n")[0].trim();
    // A cause whose text its wrapper already ends with (SDK errors often repeat it) adds nothing.
    if (line && !parts.some((p) => p === line || p.endsWith(`: ${line}`))) parts.push(line);
    if (!(e instanceof Error) || parts.length > 8) break;
  }
  return parts.join(": ") || "unknown error";
}
