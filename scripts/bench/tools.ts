/**
 * The two tools under test, run the same way a user runs them: our CLI as `deno run` with
 * exactly the flags of the deno.json tasks, and the real Litestream v0.3.13 binary.
 *
 * @module
 */
import { litestreamBin } from "../../tests/_oracle.ts";
import { listReplica, newestSegmentsHold } from "./replica_watch.ts";
import { type ProcStats, procStats, sleep, waitUntil } from "./util.ts";

/** Which implementation a run uses. */
export type Tool = "ours" | "v0.3.13";

/** Both tools, ours first (the table's column order). */
export const TOOLS: readonly Tool[] = ["ours", "v0.3.13"];

/** Absolute path of the repository root. */
export const REPO = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");

/** How to start each tool. */
export interface ToolSet {
  /** Path of the Litestream v0.3.13 binary. */
  oracleBin: string;
  /** `deno run` flags of the `replicate` task. */
  replicateFlags: string[];
  /** `deno run` flags of the `restore` task. */
  restoreFlags: string[];
}

/** Reads the task flags from deno.json and locates (or installs) Litestream v0.3.13. */
export async function loadTools(): Promise<ToolSet> {
  const denoJson = JSON.parse(await Deno.readTextFile(`${REPO}/deno.json`));
  return {
    oracleBin: await litestreamBin(),
    replicateFlags: taskFlags(denoJson.tasks?.replicate, "replicate"),
    restoreFlags: taskFlags(denoJson.tasks?.restore, "restore"),
  };
}

/**
 * The words between `deno run` and `main.ts` of a task, e.g. `["--allow-read", …]`. The
 * tasks first `cd "$INIT_CWD"` and name `main.ts` by its absolute path (`"$R/main.ts"`).
 */
function taskFlags(task: unknown, name: string): string[] {
  const words = typeof task === "string" ? task.trim().split(/\s+/) : [];
  const run = words.findIndex((w, i) => w === "run" && words[i - 1] === "deno");
  const main = words.findIndex((w) => /main\.ts"?$/.test(w));
  if (run < 0 || main < run) {
    throw new Error(`Cannot read the flags of task "${name}" from deno.json: "${String(task)}"`);
  }
  return words.slice(run + 1, main);
}

/** Program, arguments and working directory that run `litestream <sub> <args…>`. */
export function toolArgv(
  tools: ToolSet,
  tool: Tool,
  sub: "replicate" | "restore" | "version",
  args: string[],
): { cmd: string; args: string[]; cwd: string } {
  if (tool === "v0.3.13") return { cmd: tools.oracleBin, args: [sub, ...args], cwd: REPO };
  const flags = sub === "replicate" ? tools.replicateFlags : tools.restoreFlags;
  // cwd is the repository so that deno.json (the import map) is found, as `deno task` does.
  return {
    cmd: Deno.execPath(),
    args: ["run", ...flags, `${REPO}/main.ts`, sub, ...args],
    cwd: REPO,
  };
}

const live = new Set<Deno.ChildProcess>();

/** Registers a child so {@linkcode killAll} ends it; it is forgotten once it exits. */
export function track(child: Deno.ChildProcess): void {
  live.add(child);
  child.status.then(() => live.delete(child), () => live.delete(child));
}

/** Kills (SIGKILL) every child process this module started that is still running. */
export function killAll(): void {
  for (const child of live) {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
  live.clear();
}

/** Pipes a child's output into `file`, chunk by chunk. */
async function drain(stream: ReadableStream<Uint8Array>, file: Deno.FsFile): Promise<void> {
  for await (const chunk of stream) {
    let o = 0;
    while (o < chunk.length) o += file.writeSync(chunk.subarray(o));
  }
}

/** A running `replicate` process of one tool, its output going to a log file. */
export class Replicator {
  readonly tool: Tool;
  readonly pid: number;
  /** `performance.now()` just before the process was spawned. */
  readonly startedAt: number;
  readonly logPath: string;
  readonly #child: Deno.ChildProcess;
  readonly #drained: Promise<unknown>;
  readonly #log: Deno.FsFile;
  #exit?: Deno.CommandStatus;

  constructor(tools: ToolSet, tool: Tool, args: string[], logPath: string) {
    this.tool = tool;
    this.logPath = logPath;
    const argv = toolArgv(tools, tool, "replicate", args);
    this.#log = Deno.openSync(logPath, { write: true, create: true, append: true });
    this.startedAt = performance.now();
    this.#child = new Deno.Command(argv.cmd, {
      args: argv.args,
      cwd: argv.cwd,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    live.add(this.#child);
    this.pid = this.#child.pid;
    this.#drained = Promise.all([
      drain(this.#child.stdout, this.#log),
      drain(this.#child.stderr, this.#log),
    ]);
    this.#child.status.then((s) => {
      this.#exit = s;
      live.delete(this.#child);
    });
  }

  /** True while the process runs. */
  get running(): boolean {
    return this.#exit === undefined;
  }

  /** CPU and memory so far; throws if the process already exited (it never should). */
  async stats(): Promise<ProcStats> {
    const s = this.running ? await procStats(this.pid) : undefined;
    if (!s) throw new Error(`${this.tool} replicate exited early:\n${this.logTail()}`);
    return s;
  }

  /** Last lines of the process's output, for error messages. */
  logTail(lines = 15): string {
    try {
      return Deno.readTextFileSync(this.logPath).trimEnd().split("\n").slice(-lines).join("\n");
    } catch {
      return "(no log)";
    }
  }

  /**
   * Waits until the newest `newest` WAL segments of the file replica `replica` hold marker
   * row `k` (see replica_watch.ts); throws if the process exits first or after `timeoutMs`.
   */
  async waitForMarker(
    replica: string,
    k: number,
    what: string,
    options: { timeoutMs?: number; newest?: number; label?: string } = {},
  ): Promise<void> {
    await waitUntil(
      async () => {
        if (!this.running) {
          throw new Error(`${options.label ?? this.tool} replicate exited:\n${this.logTail()}`);
        }
        return await newestSegmentsHold(replica, k, options.newest);
      },
      what,
      options.timeoutMs ?? 120_000,
      20,
    );
  }

  /** Sends SIGTERM (both tools then sync one last time), waits, SIGKILL after `timeoutMs`. */
  async stop(timeoutMs = 30_000): Promise<Deno.CommandStatus> {
    if (this.running) {
      try {
        this.#child.kill("SIGTERM");
      } catch {
        // exited meanwhile
      }
      const killer = setTimeout(() => {
        try {
          this.#child.kill("SIGKILL");
        } catch {
          // exited meanwhile
        }
      }, timeoutMs);
      await this.#child.status;
      clearTimeout(killer);
    }
    await this.#drained;
    this.#log.close();
    return await this.#child.status;
  }
}

/**
 * Waits until `rep` wrote its first snapshot and WAL segment to the file replica `replica`;
 * returns ms from spawn to the snapshot.
 */
export async function waitReady(
  rep: Replicator,
  replica: string,
  timeoutMs = 180_000,
): Promise<number> {
  let snapshotAt: number | undefined;
  await waitUntil(
    async () => {
      if (!rep.running) throw new Error(`${rep.tool} replicate exited:\n${rep.logTail()}`);
      const files = await listReplica(replica);
      if (files.snapshots.length > 0) snapshotAt ??= performance.now();
      return files.snapshots.length > 0 && files.segments.length > 0;
    },
    `${rep.tool}'s initial snapshot in ${replica}`,
    timeoutMs,
    10,
  );
  return snapshotAt! - rep.startedAt;
}

/** Result of {@linkcode runTimed}. */
export interface TimedRun {
  /** Wall time from spawn to exit, in milliseconds. */
  ms: number;
  success: boolean;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion and measures its wall time (spawn to exit). */
export async function runTimed(
  argv: { cmd: string; args: string[]; cwd?: string },
  stdin?: string,
): Promise<TimedRun> {
  const t0 = performance.now();
  const child = new Deno.Command(argv.cmd, {
    args: argv.args,
    cwd: argv.cwd,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  live.add(child);
  try {
    // Fed while its output is read: a child that answers every line (`.timer on`) would
    // otherwise fill the pipe and wait for us while we wait for it.
    const fed = stdin === undefined ? Promise.resolve() : (async () => {
      const w = child.stdin.getWriter();
      await w.write(new TextEncoder().encode(stdin));
      await w.close();
    })();
    const [out] = await Promise.all([child.output(), fed]);
    const ms = performance.now() - t0;
    const dec = new TextDecoder();
    return {
      ms,
      success: out.success,
      stdout: dec.decode(out.stdout),
      stderr: dec.decode(out.stderr),
    };
  } finally {
    live.delete(child);
  }
}

/** Result of {@linkcode runMeasured}: {@linkcode TimedRun} plus the process's own usage. */
export interface MeasuredRun extends TimedRun {
  /** utime + stime, s (10 ms resolution); NaN without GNU time. */
  cpuSeconds: number;
  /** Peak RSS (maxrss), MiB; NaN without GNU time. */
  peakRssMb: number;
}

/** GNU time, which reports a child's CPU and peak RSS. */
const TIME_BIN = "/usr/bin/time";
let hasTimeBin: boolean | undefined;

/**
 * {@linkcode runTimed} under `/usr/bin/time`, which writes the process's CPU and peak RSS
 * to a file of its own (the process's output stays its own); both NaN where GNU time is
 * missing.
 */
export async function runMeasured(
  argv: { cmd: string; args: string[]; cwd?: string },
  stdin?: string,
): Promise<MeasuredRun> {
  hasTimeBin ??= await Deno.stat(TIME_BIN).then(() => true, () => false);
  if (!hasTimeBin) return { ...await runTimed(argv, stdin), cpuSeconds: NaN, peakRssMb: NaN };
  const stats = await Deno.makeTempFile({ prefix: "bench-time-" });
  try {
    const r = await runTimed(
      {
        cmd: TIME_BIN,
        args: ["-f", "%U %S %M", "-o", stats, argv.cmd, ...argv.args],
        cwd: argv.cwd,
      },
      stdin,
    );
    // The last line: GNU time writes a note above it when the process failed.
    const line = (await Deno.readTextFile(stats)).trim().split("\n").pop() ?? "";
    const [u, s, kb] = line.split(" ").map(Number);
    return { ...r, cpuSeconds: u + s, peakRssMb: kb / 1024 };
  } finally {
    await Deno.remove(stats).catch(() => {});
  }
}

/** Runs `argv`, throwing with its stderr if it fails. */
export async function runChecked(
  argv: { cmd: string; args: string[]; cwd?: string },
  stdin?: string,
): Promise<TimedRun> {
  const r = await runTimed(argv, stdin);
  if (!r.success) {
    throw new Error(
      `"${argv.cmd} ${argv.args.join(" ")}" failed: ${r.stderr.trim().slice(-2000)}`,
    );
  }
  return r;
}

/** Gives a replicator a moment to settle (used between phases). */
export function settle(ms = 500): Promise<void> {
  return sleep(ms);
}
