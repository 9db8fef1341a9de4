/**
 * `deno task compile [--target TARGET]... [--dry-run]`: builds self-contained `litestream`
 * binaries into `dist/`, one per target (all four by default), with the permissions of
 * {@linkcode COMMAND_PERMISSIONS} baked in.
 *
 * `deno compile` downloads Deno's runtime (`denort`) for each target from dl.deno.land, so
 * this needs that host (or `DENORT_BIN` naming a `denort` of the same Deno version, for the
 * host's own target). `--dry-run` prints the commands instead of running them.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { COMMAND_PERMISSIONS } from "./permissions.ts";

/** Targets built by default: Linux and macOS on x86-64 and ARM64. */
export const TARGETS: readonly string[] = [
  "x86_64-unknown-linux-gnu",
  "aarch64-unknown-linux-gnu",
  "x86_64-apple-darwin",
  "aarch64-apple-darwin",
];

/** The `deno` arguments that build the binary for `target`. */
export function compileArgs(target: string): string[] {
  return [
    "compile",
    "--target",
    target,
    "--output",
    `dist/litestream-${target}`,
    ...COMMAND_PERMISSIONS,
    // The LZ4 decoding Worker is loaded by URL at run time, so it must be named.
    "--include",
    "src/internal/lz4_worker.ts",
    "main.ts",
  ];
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      target: { type: "string", multiple: true },
      "dry-run": { type: "boolean", default: false },
    },
  });
  const targets = values.target ?? TARGETS;
  const unknown = targets.filter((t) => !TARGETS.includes(t));
  if (unknown.length > 0) {
    throw new RangeError(`Unknown target "${unknown[0]}" (known: ${TARGETS.join(", ")})`);
  }
  const repo = new URL("..", import.meta.url).pathname;
  for (const target of targets) {
    const args = compileArgs(target);
    if (values["dry-run"]) {
      // deno-lint-ignore no-console
      console.log(["deno", ...args].join(" "));
      continue;
    }
    await Deno.mkdir(`${repo}/dist`, { recursive: true });
    const { code } = await new Deno.Command(Deno.execPath(), { args, cwd: repo }).spawn().status;
    if (code !== 0) {
      // deno-lint-ignore no-console
      console.error(
        `deno compile for ${target} failed (exit ${code}); it downloads denort from ` +
          "dl.deno.land, which must be reachable (see the README's Install section)",
      );
      Deno.exit(code);
    }
  }
}
