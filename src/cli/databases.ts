/**
 * `litestream databases`: the databases of the config file and their replicas.
 *
 * @module
 */
import { print } from "./output.ts";
import { formatUsage, parseFlags } from "./flags.ts";
import { CONFIG_FLAGS, readConfig } from "./common.ts";
import { formatTable } from "./table.ts";
import { UsageError } from "../errors.ts";

export const usage = formatUsage(
  "databases",
  "litestream databases [arguments]\n\nLists the databases in the config file.",
  CONFIG_FLAGS,
);

export async function run(args: string[]): Promise<number> {
  const { values, positionals } = parseFlags(args, CONFIG_FLAGS, "databases");
  if (positionals.length > 0) throw new UsageError(`Too many arguments: ${positionals.join(" ")}`);
  const config = await readConfig(values);
  const rows = config.dbs.map((d) => [d.path, d.replicas.map((r) => r.name ?? r.type).join(",")]);
  print(formatTable(["path", "replicas"], rows).trimEnd());
  return 0;
}
