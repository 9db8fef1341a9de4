/**
 * Builds a {@linkcode ReplicaClient} from a replica config through the backend table
 * (`src/backends/mod.ts`). A backend's module, and the SDK behind it, is loaded only when a
 * replica of its type is used, so file-only setups need no network or environment
 * permissions; so is the age module, only for replicas with an `age` key.
 *
 * @module
 */
import type { ReplicaConfig } from "../config.ts";
import type { ReplicaClient } from "../replica_client.ts";
import { UsageError } from "../errors.ts";
import { backendOf } from "../backends/mod.ts";

export { FileReplicaClient } from "./file.ts";

/** Creates the client a replica config describes. @throws {UsageError} If it is incomplete. */
export async function newReplicaClient(cfg: ReplicaConfig): Promise<ReplicaClient> {
  const backend = backendOf(cfg.type);
  if (!backend) throw new UsageError(`Replica type "${cfg.type}" is not supported`);
  const client = await backend.create({ url: cfg.url, path: cfg.path, settings: cfg.settings });
  if (!cfg.age) return client;
  const { AgeReplicaClient } = await import("./age.ts");
  return new AgeReplicaClient(client, cfg.age);
}
