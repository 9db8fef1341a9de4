/**
 * Builds a {@linkcode ReplicaClient} from a replica config through an explicit table of
 * schemes. The S3 client (and the AWS SDK behind it) is loaded only when an S3 replica is
 * used, so file-only setups need no network or environment permissions.
 *
 * @module
 */
import type { ReplicaConfig } from "../config.ts";
import type { ReplicaClient } from "../replica_client.ts";
import { UsageError } from "../errors.ts";
import { FileReplicaClient } from "./file.ts";

export { FileReplicaClient } from "./file.ts";

/** Creates the client a replica config describes. @throws {UsageError} If it is incomplete. */
export async function newReplicaClient(cfg: ReplicaConfig): Promise<ReplicaClient> {
  switch (cfg.type) {
    case "file": {
      if (!cfg.path) throw new UsageError("File replica needs a path or a file:// url");
      return new FileReplicaClient(cfg.path);
    }
    case "s3": {
      const s3 = await import("./s3.ts");
      const fromUrl = cfg.url ? s3.parseS3Url(cfg.url) : undefined;
      const bucket = fromUrl?.bucket ?? cfg.bucket;
      if (!bucket) throw new UsageError("S3 replica needs a bucket or an s3:// url");
      return new s3.S3ReplicaClient({
        ...fromUrl,
        bucket,
        path: fromUrl?.path ?? cfg.path ?? "",
        // Explicit keys win over what the URL implies, as in v0.3.13.
        region: cfg.region ?? fromUrl?.region,
        endpoint: cfg.endpoint ?? fromUrl?.endpoint,
        forcePathStyle: cfg.forcePathStyle ?? fromUrl?.forcePathStyle,
        skipVerify: cfg.skipVerify ?? fromUrl?.skipVerify,
        accessKeyId: cfg.accessKeyId,
        secretAccessKey: cfg.secretAccessKey,
      });
    }
    default:
      throw new UsageError(`Replica type "${(cfg as { type: string }).type}" is not supported`);
  }
}
