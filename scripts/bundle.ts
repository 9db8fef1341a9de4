/**
 * `deno task bundle [--output PATH]`: writes `dist/litestream.js`, the whole command line in
 * one JavaScript file that `deno run` executes from any directory, with nothing to download
 * and no `deno.json` beside it: the npm packages and the LZ4 WebAssembly are inlined by
 * `Deno.bundle`, and the Worker that decodes large LZ4 frames (`src/internal/lz4_worker.ts`,
 * which a bundle cannot reach as a file) is bundled separately and embedded as a `data:` URL.
 *
 * ```sh
 * deno task bundle
 * cd /anywhere && deno run --allow-read --allow-write /path/to/dist/litestream.js version
 * ```
 *
 * @module
 */
/// <reference lib="deno.unstable" />
import { parseArgs } from "node:util";
import { dirname, resolve } from "node:path";

const REPO = new URL("..", import.meta.url);

/** Where `deno task bundle` writes the bundle unless `--output` says otherwise. */
export const DEFAULT_BUNDLE_PATH = "dist/litestream.js";

/** How `src/internal/lz4_pool.ts` names its Worker module; the bundle must say it once. */
const WORKER_URL_REGEXP = /new URL\(\s*["']\.\/lz4_worker\.ts["']\s*,\s*import\.meta\.url\s*\)/g;

/** Flags of the bundle's `#!` line: those `deno task install` gives the command (README). */
const SHEBANG =
  "#!/usr/bin/env -S deno run --allow-read --allow-write --allow-env --allow-net --allow-sys=osRelease";

/**
 * Builds the single-file CLI and writes it to `output` (tmp file, then rename).
 *
 * @throws {Error} If bundling fails, or the Worker reference in the bundle is not the one
 *   expected (then `src/internal/lz4_pool.ts` changed how it starts its Workers).
 */
export async function bundle(output: string): Promise<void> {
  const worker = await bundleOne(new URL("src/internal/lz4_worker.ts", REPO));
  const main = await bundleOne(new URL("main.ts", REPO));
  const found = main.match(WORKER_URL_REGEXP)?.length ?? 0;
  if (found !== 1) {
    throw new Error(
      `Cannot embed the LZ4 worker: expected one \`new URL("./lz4_worker.ts", import.meta.url)\` ` +
        `in the bundle, found ${found}`,
    );
  }
  const workerUrl = `data:text/javascript;base64,${base64(new TextEncoder().encode(worker))}`;
  const text = `${SHEBANG}\n${
    main.replace(WORKER_URL_REGEXP, () => `new URL(${JSON.stringify(workerUrl)})`)
  }`;
  await Deno.mkdir(dirname(output), { recursive: true });
  const tmp = `${output}.tmp`;
  await Deno.writeTextFile(tmp, text, { mode: 0o755 });
  await Deno.rename(tmp, output);
}

/** Bundles one entry point for Deno, npm packages included, and returns the code. */
async function bundleOne(entry: URL): Promise<string> {
  const result = await Deno.bundle({
    entrypoints: [entry.href],
    platform: "deno",
    format: "esm",
    packages: "bundle",
    // Native addons some npm packages try to load, each inside a try/catch with a JavaScript
    // fallback (ssh2's crypto, cpu-features): a bundle cannot hold them, so they stay
    // unresolved and the fallback runs, as when the addon was never built.
    external: ["*.node"],
    write: false,
  });
  const file = result.outputFiles?.[0];
  if (!result.success || !file) {
    const why = result.errors.map((e) => e.text).join("; ") || "no output";
    throw new Error(`Cannot bundle "${entry.pathname}": ${why}`);
  }
  return file.text();
}

/** Standard base64 of `bytes`. */
function base64(bytes: Uint8Array): string {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { output: { type: "string", short: "o", default: DEFAULT_BUNDLE_PATH } },
  });
  const output = resolve(values.output);
  await bundle(output);
  const { size } = await Deno.stat(output);
  // deno-lint-ignore no-console
  console.error(`Wrote ${output} (${(size / 2 ** 20).toFixed(1)} MiB)`);
}
