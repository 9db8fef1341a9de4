/**
 * `litestream version`.
 *
 * @module
 */
import { print } from "./output.ts";
import denoJson from "../../deno.json" with { type: "json" };

export const VERSION = `v${denoJson.version}`;

export const usage = `Prints the version.

Usage:
	litestream version
`;

export function run(_args: string[]): number {
  print(VERSION);
  return 0;
}
