/**
 * Small helpers of the benchmark: output without `console`, statistics, `/proc` readings.
 *
 * @module
 */

const enc = new TextEncoder();

/** A row of a workload's table for the report: ours and v0.3.13, shown with `digits` decimals. */
export interface TableRow {
  metric: string;
  ours: number;
  theirs: number;
  digits: number;
}

/** Writes one line to stdout. */
export function print(line = ""): void {
  writeAllSync(Deno.stdout, enc.encode(line + "\n"));
}

/** Writes one progress line to stderr. */
export function progress(line: string): void {
  writeAllSync(Deno.stderr, enc.encode(`bench: ${line}\n`));
}

function writeAllSync(w: { writeSync(p: Uint8Array): number }, data: Uint8Array): void {
  let o = 0;
  while (o < data.length) o += w.writeSync(data.subarray(o));
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, Math.max(0, ms)));
}

/** Nearest-rank percentile (`p` in 0..100) of `values`; NaN when empty. */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[Math.min(rank, sorted.length) - 1];
}

/** Median of `values`; NaN when empty. */
export function median(values: number[]): number {
  return percentile(values, 50);
}

/** Formats a number with `digits` decimals, or "n/a" when it is not finite. */
export function fmt(n: number | undefined, digits = 2): string {
  return n === undefined || !Number.isFinite(n) ? "n/a" : n.toFixed(digits);
}

/** Polls `fn` every `everyMs` until it returns true; throws after `timeoutMs`. */
export async function waitUntil(
  fn: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 60_000,
  everyMs = 10,
): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!(await fn())) {
    if (performance.now() > end) {
      throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`);
    }
    await sleep(everyMs);
  }
}

export { exists } from "../../src/internal/fs.ts";

let clockTicks: number | undefined;

/** `sysconf(_SC_CLK_TCK)`: the unit of utime/stime in `/proc/<pid>/stat`. */
export async function clkTck(): Promise<number> {
  if (clockTicks === undefined) {
    clockTicks = 100;
    try {
      const out = await new Deno.Command("getconf", { args: ["CLK_TCK"], stderr: "null" })
        .output();
      const n = Number(new TextDecoder().decode(out.stdout).trim());
      if (out.success && n > 0) clockTicks = n;
    } catch {
      // keep Linux's usual 100
    }
  }
  return clockTicks;
}

/** CPU time and memory of a running process, from `/proc`. */
export interface ProcStats {
  /** utime + stime, in seconds. */
  cpuSeconds: number;
  /** VmHWM: peak resident set size so far, in MiB. */
  peakRssMb: number;
  /** VmRSS: current resident set size, in MiB. */
  rssMb: number;
}

/**
 * Reads files under `/proc` through `cat`: Deno asks for `--allow-all` to read `/proc`
 * directly, and the bench task runs with the narrower flags of deno.json.
 */
export async function readProcFiles(paths: string[]): Promise<string[] | undefined> {
  const sep = "\n@@bench-proc-separator@@\n";
  try {
    const out = await new Deno.Command("sh", {
      args: [
        "-c",
        `for f in "$@"; do cat "$f" || exit 1; printf '${sep.replaceAll("\n", "\\n")}'; done`,
        "sh",
        ...paths,
      ],
      stdout: "piped",
      stderr: "null",
    }).output();
    if (!out.success) return undefined;
    return new TextDecoder().decode(out.stdout).split(sep).slice(0, paths.length);
  } catch {
    return undefined;
  }
}

/**
 * Reads `/proc/<pid>/stat` and `/proc/<pid>/status`; `undefined` if the process is gone.
 * Call {@linkcode clkTck} once before.
 */
export async function procStats(pid: number): Promise<ProcStats | undefined> {
  const files = await readProcFiles([`/proc/${pid}/stat`, `/proc/${pid}/status`]);
  if (!files) return undefined;
  const [stat, status] = files;
  // The command name (field 2) may hold spaces and parentheses: split after the last ")".
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
  const ticks = Number(fields[11]) + Number(fields[12]);
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(status)?.[1]);
  return {
    cpuSeconds: ticks / (clockTicks ?? 100),
    peakRssMb: kb("VmHWM") / 1024,
    rssMb: kb("VmRSS") / 1024,
  };
}

/** Machine description printed with the results. */
export async function machineInfo(): Promise<Record<string, string>> {
  const [cpuinfo, meminfo] = await readProcFiles(["/proc/cpuinfo", "/proc/meminfo"]) ?? ["", ""];
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1].trim() ?? "unknown";
  const kb = Number(/^MemTotal:\s+(\d+) kB/m.exec(meminfo)?.[1]);
  const mem = kb > 0 ? `${(kb / 1024 / 1024).toFixed(1)} GiB` : "unknown";
  const nproc = await commandOutput("nproc", []);
  const sqliteVersion = await commandOutput("sqlite3", ["--version"]);
  return {
    date: new Date().toISOString(),
    nproc: nproc || String(navigator.hardwareConcurrency),
    cpu: model,
    memory: mem,
    kernel: Deno.osRelease(),
    deno: Deno.version.deno,
    sqlite3: sqliteVersion.split(" ")[0] || "unknown",
  };
}

/** The 1-, 5- and 15-minute load averages, e.g. "0.52 0.40 0.31" (other work on the machine). */
export async function loadAverage(): Promise<string> {
  const [text] = await readProcFiles(["/proc/loadavg"]) ?? ["unknown"];
  return text.split(" ").slice(0, 3).join(" ");
}

/** Runs a command and returns its trimmed stdout ("" on failure). */
export async function commandOutput(cmd: string, args: string[]): Promise<string> {
  try {
    const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "null" }).output();
    return out.success ? new TextDecoder().decode(out.stdout).trim() : "";
  } catch {
    return "";
  }
}
