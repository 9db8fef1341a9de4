/**
 * Environment rules shared by the CLI and the S3 client, kept free of the AWS SDK so the
 * CLI can apply them without loading it.
 *
 * @module
 */

/**
 * Sets `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` from `LITESTREAM_ACCESS_KEY_ID`/
 * `LITESTREAM_SECRET_ACCESS_KEY` where the AWS variable is unset, as v0.3.13's CLI does at
 * start. {@linkcode S3ReplicaClient} applies the same rule itself without touching the
 * environment; the CLI calls this so child processes (`-exec`) see the same variables.
 */
export function applyLitestreamEnv(): void {
  for (const name of ["ACCESS_KEY_ID", "SECRET_ACCESS_KEY"]) {
    const value = Deno.env.get(`LITESTREAM_${name}`);
    if (value !== undefined && Deno.env.get(`AWS_${name}`) === undefined) {
      Deno.env.set(`AWS_${name}`, value);
    }
  }
}
