/**
 * Azure Blob Storage replicas (`src/clients/abs.ts`). v0.3.13's keys: `account-name`,
 * `account-key` (else `LITESTREAM_AZURE_ACCOUNT_KEY`), `bucket` (the container), `path`,
 * `endpoint`, or `url: abs://account@container/path`.
 *
 * @module
 */
import { type Backend, str } from "./backend.ts";
import { UsageError } from "../errors.ts";

export const absBackend: Backend = {
  type: "abs",
  title: "an abs replica",
  keys: {
    "account-name": { kind: "string" },
    "account-key": { kind: "string", secret: true },
    bucket: { kind: "string" },
    endpoint: { kind: "string" },
  },
  checkUrl(url, shown) {
    return url.hostname === "" ? `replica URL "${shown}" has no container` : {};
  },
  check(replica) {
    const s = replica.settings;
    if (replica.url !== undefined && s.bucket !== undefined) {
      return { message: "cannot set both url and bucket", key: "bucket" };
    }
    if (replica.url === undefined && s.bucket === undefined) {
      return { message: "is an abs replica and needs a bucket or a url" };
    }
    return undefined;
  },
  async create(replica) {
    const abs = await import("../clients/abs.ts");
    const s = replica.settings;
    try {
      const fromUrl = replica.url ? abs.parseAbsUrl(replica.url) : undefined;
      const accountName = str(s["account-name"]) ?? fromUrl?.accountName;
      if (!accountName) throw new RangeError("abs replica needs an account-name");
      const bucket = fromUrl?.bucket ?? str(s.bucket) ?? "";
      const path = fromUrl?.path ?? replica.path ?? "";
      let accountKey = str(s["account-key"]);
      if (accountKey === undefined) {
        try {
          accountKey = Deno.env.get(abs.ACCOUNT_KEY_ENV);
        } catch (err) {
          if (!(err instanceof Deno.errors.NotCapable)) throw err;
          // Read here rather than by the client, which takes a variable it may not read for
          // unset, and would then ask the user to set what may well be set.
          const where = `abs://${accountName}@${bucket}${path ? `/${path}` : ""}`;
          throw new Error(`Cannot read the account key of abs replica "${where}"`, {
            cause: err,
          });
        }
      }
      return new abs.AbsReplicaClient({
        accountName,
        accountKey,
        bucket,
        path,
        endpoint: str(s.endpoint),
      });
    } catch (err) {
      if (err instanceof RangeError || err instanceof SyntaxError) {
        throw new UsageError(err.message, { cause: err });
      }
      throw err;
    }
  },
};
