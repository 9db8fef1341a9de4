/**
 * Workload 6: S3 requests per hour, idle and at a steady commit rate, for both tools at
 * once against one moto server, each behind its own recording proxy (from the test
 * helpers), so each tool's requests are counted separately over the same minute.
 *
 * @module
 */
import { Replicator, REPO, type Tool, TOOLS, type ToolSet } from "./tools.ts";
import { createDb, insertRowSql, Writer } from "./sqlite.ts";
import { exists, procStats, progress, sleep, waitUntil } from "./util.ts";

/** The parts of tests/_s3_servers.ts used here (imported at run time: it may not exist). */
interface S3ServersModule {
  s3ServerUnavailable(kind: "moto"): Promise<string | undefined>;
  startS3Server(kind: "moto"): Promise<{
    endpoint: string;
    bucket: string;
    accessKeyId: string;
    secretAccessKey: string;
    stop(): Promise<void>;
  }>;
  startS3Proxy(upstream: string): Promise<{
    endpoint: string;
    requests: { method: string; url: string; status: number }[];
    stop(): Promise<void>;
  }>;
}

/** What one tool did in the two windows. */
export interface S3ToolResult {
  idleRequests: number;
  loadRequests: number;
  /** Requests per hour, extrapolated from the window. */
  idlePerHour: number;
  loadPerHour: number;
  /** Requests by kind, e.g. "PUT 20, LIST 2". */
  idleKinds: string;
  loadKinds: string;
  /** CPU seconds the replicator used in the idle window. */
  idleCpuSeconds: number;
  commits: number;
}

/** Options of {@linkcode runS3Workload}. */
export interface S3WorkloadOptions {
  dir: string;
  idleSeconds: number;
  loadSeconds: number;
  commitsPerSecond: number;
}

/** Returns why the S3 workload cannot run here, or `undefined` if it can. */
export async function s3Unavailable(): Promise<string | undefined> {
  if (!await exists(`${REPO}/src/clients/s3.ts`) || !await exists(`${REPO}/tests/_s3_servers.ts`)) {
    return "S3 client not built yet";
  }
  try {
    const mod = await loadServers();
    const why = await mod.s3ServerUnavailable("moto");
    return why ? `moto unavailable: ${why}` : undefined;
  } catch (err) {
    return `cannot load tests/_s3_servers.ts: ${(err as Error).message.split("\n")[0]}`;
  }
}

async function loadServers(): Promise<S3ServersModule> {
  // A computed specifier: `deno check` must not require the file to exist.
  const spec = new URL("../../tests/_s3_servers.ts", import.meta.url).href;
  return await import(spec) as S3ServersModule;
}

function kinds(reqs: { method: string; url: string }[]): string {
  const count = new Map<string, number>();
  for (const r of reqs) {
    let k = r.method;
    if (r.method === "GET" && /[?&]list-type=2/.test(r.url)) k = "LIST";
    else if (r.method === "POST" && /[?&]delete(=|&|$)/.test(r.url)) k = "DELETE-MULTI";
    count.set(k, (count.get(k) ?? 0) + 1);
  }
  return [...count].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k} ${n}`).join(", ") ||
    "none";
}

/** Runs both tools against moto: first idle, then at `commitsPerSecond`. */
export async function runS3Workload(
  tools: ToolSet,
  options: S3WorkloadOptions,
): Promise<Record<Tool, S3ToolResult>> {
  const mod = await loadServers();
  const server = await mod.startS3Server("moto");
  const proxies: Awaited<ReturnType<S3ServersModule["startS3Proxy"]>>[] = [];
  const reps: Replicator[] = [];
  try {
    const runs = [];
    for (const tool of TOOLS) {
      const proxy = await mod.startS3Proxy(server.endpoint);
      proxies.push(proxy);
      const dir = `${options.dir}/s3-${tool}`;
      await Deno.mkdir(dir, { recursive: true });
      const db = `${dir}/db`;
      await createDb(db);
      const config = `${dir}/litestream.yml`;
      await Deno.writeTextFile(
        config,
        [
          "dbs:",
          `  - path: ${db}`,
          "    replicas:",
          `      - url: s3://${server.bucket}/bench-${tool === "ours" ? "ours" : "v0313"}`,
          `        endpoint: ${proxy.endpoint}`,
          "        region: us-east-1",
          "        force-path-style: true",
          `        access-key-id: ${server.accessKeyId}`,
          `        secret-access-key: ${server.secretAccessKey}`,
          "",
        ].join("\n"),
      );
      const rep = new Replicator(tools, tool, ["-config", config], `${dir}/replicate.log`);
      reps.push(rep);
      runs.push({ tool, db, proxy, rep });
    }
    // Ready: the initial snapshot was stored, and the uploads after it are done.
    for (const r of runs) {
      await waitUntil(
        () => {
          if (!r.rep.running) throw new Error(`${r.tool} replicate exited:\n${r.rep.logTail()}`);
          return r.proxy.requests.some((q) =>
            q.method === "PUT" && q.url.includes("/snapshots/") && q.status === 200
          );
        },
        `${r.tool}'s first snapshot on S3`,
        60_000,
        50,
      );
    }
    await sleep(5_000);

    progress(`s3: idle for ${options.idleSeconds} s`);
    const idleStart = await Promise.all(runs.map(async (r) => ({
      n: r.proxy.requests.length,
      cpu: (await procStats(r.rep.pid))?.cpuSeconds ?? NaN,
    })));
    await sleep(options.idleSeconds * 1000);
    const idleEnd = await Promise.all(runs.map(async (r) => ({
      n: r.proxy.requests.length,
      cpu: (await procStats(r.rep.pid))?.cpuSeconds ?? NaN,
    })));

    progress(`s3: ${options.commitsPerSecond} commits/s for ${options.loadSeconds} s`);
    const writers = runs.map((r) => new Writer(r.db));
    for (const w of writers) await w.init();
    const loadStart = runs.map((r) => r.proxy.requests.length);
    const total = Math.round(options.loadSeconds * options.commitsPerSecond);
    const spacing = 1000 / options.commitsPerSecond;
    const t0 = performance.now();
    await Promise.all(writers.map(async (w) => {
      for (let k = 1; k <= total; k++) {
        await w.exec(insertRowSql(k));
        await sleep(t0 + k * spacing - performance.now());
      }
    }));
    await sleep(t0 + options.loadSeconds * 1000 - performance.now());
    const loadEnd = runs.map((r) => r.proxy.requests.length);
    for (const w of writers) await w.close();

    const out = {} as Record<Tool, S3ToolResult>;
    runs.forEach((r, i) => {
      const idle = r.proxy.requests.slice(idleStart[i].n, idleEnd[i].n);
      const load = r.proxy.requests.slice(loadStart[i], loadEnd[i]);
      out[r.tool] = {
        idleRequests: idle.length,
        loadRequests: load.length,
        idlePerHour: idle.length * 3600 / options.idleSeconds,
        loadPerHour: load.length * 3600 / options.loadSeconds,
        idleKinds: kinds(idle),
        loadKinds: kinds(load),
        idleCpuSeconds: idleEnd[i].cpu - idleStart[i].cpu,
        commits: total,
      };
    });
    return out;
  } finally {
    for (const r of reps) await r.stop();
    for (const p of proxies) await p.stop();
    await server.stop();
  }
}
