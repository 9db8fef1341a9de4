/**
 * Command-line flags the way Go's `flag` package reads them, which is what Litestream's
 * users type: `-config x`, `--config x`, `-config=x`, `-if-db-not-exists`,
 * `-if-db-not-exists=false`. Unlike Go, flags may also follow positional arguments
 * (`restore URL -o out.db`), which v0.3.13 rejects with "too many arguments".
 *
 * `node:util`'s `parseArgs` cannot be used: it reads `-config` as `-c -o -n -f -i -g`.
 *
 * @module
 */

import { UsageError } from "../errors.ts";

/** How one flag is declared. */
export interface FlagDef {
  /** `"string"` flags take a value; `"boolean"` flags are set by their presence. */
  type: "string" | "boolean";
  /** Value when the flag is not given. Strings: `undefined`; booleans: `false`. */
  default?: string | boolean;
  /** One line for the help text. */
  description?: string;
  /** Placeholder for the value in the help text, e.g. `"PATH"`. @default {"VALUE"} */
  valueName?: string;
}

/** The flags a command accepts, by name without dashes (`"config"`, `"o"`). */
export interface FlagSpec {
  /** The declaration of the flag `-name`. */
  [name: string]: FlagDef;
}

/**
 * Parsed values typed from the spec: booleans are `boolean`, strings with a string default
 * are `string`, other strings are `string | undefined` (not given).
 */
export type FlagValues<S extends FlagSpec> = {
  -readonly [K in keyof S]: S[K]["type"] extends "boolean" ? boolean
    : S[K] extends { default: string } ? string
    : string | undefined;
};

/** The result of {@linkcode parseFlags}. */
export interface ParsedFlags<S extends FlagSpec> {
  /** One entry per flag in the spec; the last occurrence wins, as in Go. */
  values: FlagValues<S>;
  /** Non-flag arguments in order, including everything after `--`. */
  positionals: string[];
}

/**
 * Thrown by {@linkcode parseFlags} for `-h`, `-help` or `--help`: the caller prints the
 * command's usage and exits 0.
 */
export class HelpRequested extends Error {
  /** The command whose help was asked for. */
  readonly command: string;

  /** Creates the error for `command`, the subcommand whose help was asked for. */
  constructor(command: string) {
    super(`Help requested for "${command}"`);
    this.name = "HelpRequested";
    this.command = command;
  }
}

const HELP_NAMES = ["h", "help"];
const BOOLEAN_VALUES: Record<string, boolean> = {
  "1": true,
  t: true,
  T: true,
  true: true,
  TRUE: true,
  True: true,
  "0": false,
  f: false,
  F: false,
  false: false,
  FALSE: false,
  False: false,
};

/**
 * Parses `args` against `spec`.
 *
 * Accepts `-name value`, `--name value`, `-name=value` and `--name=value`; boolean flags
 * take no separate value but accept `-name=true|false` (Go's `strconv.ParseBool` spellings).
 * A string flag takes the next argument even if it starts with `-`, as in Go. A lone `-` is
 * a positional argument, and `--` ends the flags.
 *
 * @param command The subcommand name, used in error messages.
 * @throws {HelpRequested} For `-h`, `-help` or `--help` (unless the spec defines them).
 * @throws {UsageError} For an unknown flag, a missing value or a bad boolean value.
 */
export function parseFlags<const S extends FlagSpec>(
  args: string[],
  spec: S,
  command: string,
): ParsedFlags<S> {
  const values: Record<string, string | boolean | undefined> = {};
  for (const [name, def] of Object.entries(spec)) {
    values[name] = def.default ?? (def.type === "boolean" ? false : undefined);
  }
  const positionals: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--") {
      positionals.push(...args.slice(i + 1));
      break;
    }
    if (arg.length < 2 || arg[0] !== "-") {
      positionals.push(arg);
      continue;
    }
    const dashes = arg.startsWith("--") ? "--" : "-";
    const body = arg.slice(dashes.length);
    const eq = body.indexOf("=");
    const name = eq < 0 ? body : body.slice(0, eq);
    const shown = dashes + name;
    if (name === "" || name.startsWith("-")) throw new UsageError(`bad flag syntax "${arg}"`);
    const def = Object.hasOwn(spec, name) ? spec[name] : undefined;
    if (def === undefined) {
      if (HELP_NAMES.includes(name)) throw new HelpRequested(command);
      throw new UsageError(`unknown flag "${shown}" for "${command}"`);
    }
    if (def.type === "boolean") {
      if (eq < 0) {
        values[name] = true;
        continue;
      }
      const text = body.slice(eq + 1);
      const value = BOOLEAN_VALUES[text];
      if (value === undefined) {
        throw new UsageError(`flag "${shown}" takes true or false, got "${text}"`);
      }
      values[name] = value;
      continue;
    }
    if (eq >= 0) {
      values[name] = body.slice(eq + 1);
    } else if (i + 1 < args.length) {
      values[name] = args[++i];
    } else {
      throw new UsageError(`flag "${shown}" needs a value`);
    }
  }
  return { values: values as FlagValues<S>, positionals };
}

/**
 * Formats a command's help text: a usage line, an optional description, then one line per
 * flag with its description and non-empty default, and the help flag. Ends with a newline.
 *
 * @param command The subcommand name, e.g. `"restore"`.
 * @param synopsis What follows `litestream <command>` on the usage line, e.g.
 *   `"[flags] DB_PATH | REPLICA_URL"`, or the whole line if it starts with `litestream `.
 *   Further lines, if any, are printed below it as a description.
 *
 * @example
 * ```ts
 * formatUsage("databases", "[flags]\nLists the databases in the config file.", {
 *   config: { type: "string", valueName: "PATH", description: "Config file" },
 * });
 * // Usage: litestream databases [flags]
 * //
 * // Lists the databases in the config file.
 * //
 * // Flags:
 * //   -config PATH  Config file
 * //   -h, -help     Show this help
 * ```
 */
export function formatUsage(command: string, synopsis: string, spec: FlagSpec): string {
  const [first, ...rest] = synopsis.split("\n");
  const usage = first.startsWith("litestream ")
    ? first
    : `litestream ${command}${first ? ` ${first}` : ""}`;
  const lines = [`Usage: ${usage}`];
  const description = rest.join("\n").trim();
  if (description) lines.push("", description);

  const rows: [string, string][] = Object.entries(spec).map(([name, def]) => {
    const left = def.type === "string" ? `-${name} ${def.valueName ?? "VALUE"}` : `-${name}`;
    let right = def.description ?? "";
    if (typeof def.default === "string" && def.default !== "") {
      right += `${right ? " " : ""}(default ${JSON.stringify(def.default)})`;
    } else if (def.default === true) {
      right += `${right ? " " : ""}(default true)`;
    }
    return [left, right];
  });
  if (!HELP_NAMES.some((name) => Object.hasOwn(spec, name))) {
    rows.push(["-h, -help", "Show this help"]);
  }
  const width = Math.min(Math.max(...rows.map(([left]) => left.length)), 28);
  lines.push("", "Flags:");
  const indent = " ".repeat(width + 4);
  for (const [left, right] of rows) {
    const [head, ...more] = right.split("\n");
    if (!head) lines.push(`  ${left}`);
    else if (left.length > width) lines.push(`  ${left}`, `${indent}${head}`);
    else lines.push(`  ${left.padEnd(width)}  ${head}`);
    for (const line of more) lines.push(line ? `${indent}${line}` : "");
  }
  return lines.join("\n") + "\n";
}
