/**
 * The CLI's only access to standard output and error (besides the logger).
 *
 * @module
 */
// deno-lint-ignore-file no-console

/** Prints `text` (with a trailing newline unless it has one) to stdout. */
export function print(text: string): void {
  console.log(text.endsWith("\n") ? text.slice(0, -1) : text);
}

/** Prints one line to stderr. */
export function printError(text: string): void {
  console.error(text);
}
