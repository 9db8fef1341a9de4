/**
 * Structured logger: levels, child fields, text or JSON lines, secret redaction. The only
 * place besides `src/cli/` that touches the console.
 *
 * @module
 */

/** Log levels, lowest first. */
export type LogLevel = "debug" | "info" | "warn" | "error";
const LEVELS: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

/** A field value. */
export type LogValue = string | number | boolean | undefined | null;
/** Fields attached to a log line. */
export type LogFields = Record<string, LogValue>;

/** Where lines go and how they look. */
export interface LogSink {
  level: LogLevel;
  format: "text" | "json";
  write(line: string, level: LogLevel): void;
}

const SECRET_KEY_REGEXP = /secret|password|token|credential|access.?key/i;

/** Replaces all but the first 4 characters of a secret with `*`. */
export function redact(value: string | undefined): string {
  if (!value) return "";
  return value.length <= 4 ? "****" : `${value.slice(0, 4)}****`;
}

function quote(v: string): string {
  return /^[A-Za-z0-9_./:@+-]+$/.test(v) ? v : JSON.stringify(v);
}

/** Structured logger; create children with {@linkcode Logger.with}. */
export class Logger {
  readonly #sink: LogSink;
  readonly #fields: LogFields;

  constructor(sink: LogSink, fields: LogFields = {}) {
    this.#sink = sink;
    this.#fields = fields;
  }

  /** Returns a logger that adds `fields` to every line. */
  with(fields: LogFields): Logger {
    return new Logger(this.#sink, { ...this.#fields, ...fields });
  }

  enabled(level: LogLevel): boolean {
    return LEVELS[level] >= LEVELS[this.#sink.level];
  }

  debug(msg: string, fields?: LogFields): void {
    this.#log("debug", msg, fields);
  }
  info(msg: string, fields?: LogFields): void {
    this.#log("info", msg, fields);
  }
  warn(msg: string, fields?: LogFields): void {
    this.#log("warn", msg, fields);
  }
  error(msg: string, fields?: LogFields): void {
    this.#log("error", msg, fields);
  }

  #log(level: LogLevel, msg: string, fields?: LogFields): void {
    if (!this.enabled(level)) return;
    const all: LogFields = { ...this.#fields, ...fields };
    for (const k of Object.keys(all)) {
      if (all[k] === undefined) delete all[k];
      else if (SECRET_KEY_REGEXP.test(k) && typeof all[k] === "string") {
        all[k] = redact(all[k] as string);
      }
    }
    const time = new Date().toISOString();
    let line: string;
    if (this.#sink.format === "json") {
      line = JSON.stringify({ time, level: level.toUpperCase(), msg, ...all });
    } else {
      line = `time=${time} level=${level.toUpperCase()} msg=${quote(msg)}`;
      for (const [k, v] of Object.entries(all)) line += ` ${k}=${quote(String(v))}`;
    }
    this.#sink.write(line, level);
  }
}

/** A sink writing to stdout (or stderr) synchronously. */
export function consoleSink(
  options: { level?: LogLevel; format?: "text" | "json"; stderr?: boolean } = {},
): LogSink {
  const enc = new TextEncoder();
  const out = options.stderr ? Deno.stderr : Deno.stdout;
  return {
    level: options.level ?? "info",
    format: options.format ?? "text",
    write(line) {
      const b = enc.encode(line + "\n");
      let o = 0;
      while (o < b.length) o += out.writeSync(b.subarray(o));
    },
  };
}

/** A logger that drops everything (the library default). */
export const silentLogger: Logger = new Logger({
  level: "error",
  format: "text",
  write() {},
});

/** A sink that keeps lines in memory (tests). */
export function memorySink(level: LogLevel = "debug"): LogSink & { lines: string[] } {
  const lines: string[] = [];
  return { level, format: "text", lines, write: (l) => void lines.push(l) };
}
