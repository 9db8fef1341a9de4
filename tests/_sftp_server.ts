/**
 * A real OpenSSH server on 127.0.0.1 for the SFTP tests: `/usr/sbin/sshd -D -e` with a
 * throwaway config, a generated host key, a generated client key (`ssh-keygen`) and
 * `internal-sftp` starting in a temp directory. `scripts/setup_sftp.sh` installs sshd.
 *
 * Password login needs an account with a known password. As root the server runs in a private
 * mount namespace (`unshare --mount`) where a copy of `/etc/shadow` holding a random password
 * for root is bind-mounted over the real one, so nothing on the machine changes. Where no
 * namespace can be made, a throwaway user is added with `useradd` and removed on dispose.
 * As any other user only key login is offered, for that user.
 *
 * @module
 */

/** A running sshd, stopped (and its files removed) on dispose. */
export interface SftpTestServer extends AsyncDisposable {
  readonly host: string;
  readonly port: number;
  /** `127.0.0.1:PORT`, the form of v0.3.13's `host` key. */
  readonly hostPort: string;
  /** The account to log in as (root, a throwaway user, or the current user). */
  readonly user: string;
  /** An ed25519 private key (OpenSSH format, no passphrase) that `user` may log in with. */
  readonly keyPath: string;
  /** `user`'s password, or `undefined` if password login cannot be offered here. */
  readonly password?: string;
  /** Why there is no password, when {@linkcode password} is undefined. */
  readonly passwordUnavailable?: string;
  /** The SFTP session's start directory (relative paths resolve here); writable by `user`. */
  readonly root: string;
  /** `OpenSSH_9.2p1 …`, from `sshd -V`. */
  readonly version: string;
  /** Milliseconds from the first spawn to sshd listening. */
  readonly startMs: number;
  /**
   * Kills the per-connection sshd processes (by PID), as a server restart or a dropped
   * network would; the listener keeps running. Returns how many were killed.
   */
  dropConnections(): Promise<number>;
  stop(): Promise<void>;
}

const SSHD = "/usr/sbin/sshd";
const START_TIMEOUT_MS = 15_000;
const dec = new TextDecoder();

import { closedPort } from "./_helpers.ts";

export { isCi } from "./_helpers.ts";

/** Returns why sshd cannot be started here, or `undefined` if it can. */
export async function sftpServerUnavailable(): Promise<string | undefined> {
  try {
    await Deno.stat(SSHD);
  } catch {
    return `${SSHD} is not installed (run scripts/setup_sftp.sh)`;
  }
  const keygen = await run("ssh-keygen", ["-?"], { allowFailure: true }).catch(() => undefined);
  if (keygen === undefined) return "ssh-keygen is not installed (run scripts/setup_sftp.sh)";
  return undefined;
}

/** Starts sshd on a free loopback port. */
export async function startSftpServer(): Promise<SftpTestServer> {
  const t0 = performance.now();
  const unavailable = await sftpServerUnavailable();
  if (unavailable) throw new Error(`Cannot start sshd: ${unavailable}`);
  const dir = await Deno.makeTempDir({ prefix: "litestream-sshd-" });
  const cleanups: (() => Promise<unknown>)[] = [() => Deno.remove(dir, { recursive: true })];
  const cleanup = async () => {
    for (const fn of cleanups.reverse()) await fn().catch(() => {});
  };
  try {
    const root = `${dir}/root`;
    await Deno.mkdir(root);
    await Deno.mkdir("/run/sshd", { recursive: true }).catch(() => {}); // privilege separation
    await keygen(`${dir}/host_ed25519`);
    const keyPath = `${dir}/client_ed25519`;
    await keygen(keyPath);
    await Deno.copyFile(`${keyPath}.pub`, `${dir}/authorized_keys`);
    const version = (await run(SSHD, ["-V"], { allowFailure: true })).trim().split("\n")[0];

    const isRoot = Deno.uid() === 0;
    let user = isRoot ? "root" : await currentUser();
    let password: string | undefined;
    let passwordUnavailable: string | undefined;
    let wrap: ((sshdArgs: string[]) => string[]) | undefined;
    if (!isRoot) {
      passwordUnavailable = "password login needs root to set a password";
    } else {
      password = randomPassword();
      const shadow = await shadowWithPassword("root", password, dir).catch((err) => err as Error);
      if (typeof shadow === "string" && await canUnshare(dir)) {
        wrap = (sshdArgs) => [
          "unshare",
          "--mount",
          "--propagation",
          "private",
          "--",
          "/bin/sh",
          "-c",
          'mount --bind "$0" /etc/shadow && exec "$@"',
          shadow,
          ...sshdArgs,
        ];
      } else {
        // No private namespace: a throwaway account, removed on dispose.
        const name = `lsftp${crypto.randomUUID().slice(0, 8)}`;
        try {
          await run("useradd", ["-M", "-N", "-d", root, "-s", "/bin/sh", name]);
          cleanups.push(() => run("userdel", ["-f", name]));
          await run("chpasswd", [], { stdin: `${name}:${password}\n` });
          await run("chown", [name, root]);
          user = name;
        } catch (err) {
          password = undefined;
          passwordUnavailable = `cannot create an account with a password: ${
            (err as Error).message
          }`;
        }
      }
    }

    for (let attempt = 1;; attempt++) {
      const port = closedPort();
      const config = `${dir}/sshd_config`;
      await Deno.writeTextFile(
        config,
        [
          `ListenAddress 127.0.0.1`,
          `Port ${port}`,
          `HostKey ${dir}/host_ed25519`,
          `PidFile none`,
          `AuthorizedKeysFile ${dir}/authorized_keys`,
          `StrictModes no`,
          `UsePAM no`,
          `PermitRootLogin yes`,
          `PubkeyAuthentication yes`,
          `PasswordAuthentication ${password !== undefined ? "yes" : "no"}`,
          `KbdInteractiveAuthentication no`,
          `LogLevel VERBOSE`,
          `Subsystem sftp internal-sftp -d ${root}`,
          "",
        ].join("\n"),
      );
      const sshdArgs = [SSHD, "-D", "-e", "-f", config];
      const [program, ...args] = wrap ? wrap(sshdArgs) : sshdArgs;
      const started = await spawnSshd(program, args, port);
      if ("child" in started) {
        const { child, drained } = started;
        let stopped: Promise<void> | undefined;
        const stop = () =>
          stopped ??= (async () => {
            // Let the sessions of closed clients end first, so their processes are reaped
            // by the listener rather than orphaned.
            const deadline = Date.now() + 2_000;
            while (await childPids(child.pid).then((p) => p.length > 0) && Date.now() < deadline) {
              await new Promise((r) => setTimeout(r, 20));
            }
            try {
              child.kill("SIGTERM");
            } catch { /* already gone */ }
            await child.status;
            await drained;
            await cleanup();
          })();
        return {
          host: "127.0.0.1",
          port,
          hostPort: `127.0.0.1:${port}`,
          user,
          keyPath,
          password,
          passwordUnavailable,
          root,
          version,
          startMs: Math.round(performance.now() - t0),
          dropConnections: () => killChildren(child.pid),
          stop,
          [Symbol.asyncDispose]: stop,
        };
      }
      // Another process took the port between our probe and sshd's bind: try another.
      if (!started.portTaken || attempt >= 5) {
        throw new Error(`Cannot start sshd: ${started.reason}`);
      }
    }
  } catch (err) {
    await cleanup();
    throw err;
  }
}

type Spawned =
  | { child: Deno.ChildProcess; drained: Promise<void> }
  | { reason: string; portTaken: boolean };

/** Spawns sshd and waits for its "Server listening" line, or for it to exit. */
async function spawnSshd(program: string, args: string[], port: number): Promise<Spawned> {
  const child = new Deno.Command(program, {
    args,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const tail: string[] = [];
  const { promise: listening, resolve } = Promise.withResolvers<boolean>();
  // Keep draining sshd's log so a full pipe never blocks it.
  const drained = (async () => {
    let pending = "";
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      pending += chunk;
      const lines = pending.split("\n");
      pending = lines.pop()!;
      for (const line of lines) {
        tail.push(line);
        if (tail.length > 20) tail.shift();
        if (line.includes(`Server listening on 127.0.0.1 port ${port}`)) resolve(true);
      }
    }
    resolve(false);
  })();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timedOut = new Promise<"timeout">((r) =>
    timer = setTimeout(() => r("timeout"), START_TIMEOUT_MS)
  );
  const outcome = await Promise.race([listening, child.status.then(() => false), timedOut]);
  clearTimeout(timer);
  if (outcome === true) return { child, drained };
  try {
    child.kill("SIGKILL");
  } catch { /* exited */ }
  await child.status;
  await drained;
  const log = tail.join(" | ");
  return {
    reason: outcome === "timeout" ? `not listening after ${START_TIMEOUT_MS} ms: ${log}` : log,
    portTaken: /Address already in use/.test(log),
  };
}

/** PIDs of the children of `pid` (`ps` rather than /proc, which needs --allow-all). */
async function childPids(pid: number): Promise<number[]> {
  const out = await run("ps", ["-o", "pid=", "--ppid", String(pid)], { allowFailure: true });
  return out.split("\n").map((s) => s.trim()).filter((s) => /^\d+$/.test(s)).map(Number);
}

/** Kills the children of `pid` (sshd's per-connection processes) by PID. */
async function killChildren(pid: number): Promise<number> {
  let killed = 0;
  for (const child of await childPids(pid)) {
    try {
      Deno.kill(child, "SIGKILL");
      killed++;
    } catch { /* already gone */ }
  }
  return killed;
}

async function keygen(path: string): Promise<void> {
  await run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "litestream-test", "-f", path]);
}

function randomPassword(): string {
  const b = crypto.getRandomValues(new Uint8Array(18));
  return btoa(String.fromCharCode(...b)).replace(/[+/=]/g, "x");
}

/** Writes a copy of /etc/shadow in which `user` has `password`; returns its path. */
async function shadowWithPassword(user: string, password: string, dir: string): Promise<string> {
  const hash = (await run("openssl", ["passwd", "-6", "-stdin"], { stdin: `${password}\n` }))
    .trim();
  const lines = (await Deno.readTextFile("/etc/shadow")).split("\n");
  const i = lines.findIndex((l) => l.startsWith(`${user}:`));
  if (i < 0) throw new Error(`no ${user} in /etc/shadow`);
  const fields = lines[i].split(":");
  fields[1] = hash;
  fields[2] = String(Math.floor(Date.now() / 86_400_000)); // last change: today, so not expired
  lines[i] = fields.join(":");
  const path = `${dir}/shadow`;
  await Deno.writeTextFile(path, lines.join("\n"), { mode: 0o600 });
  return path;
}

/** True if a private mount namespace with a bind mount can be made here. */
async function canUnshare(dir: string): Promise<boolean> {
  const probe = `${dir}/probe`;
  await Deno.writeTextFile(probe, "");
  const out = await new Deno.Command("unshare", {
    args: ["--mount", "--propagation", "private", "--", "mount", "--bind", probe, probe],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).output().catch(() => undefined);
  return out?.success ?? false;
}

async function currentUser(): Promise<string> {
  return (await run("id", ["-un"])).trim();
}

/** Runs a command; returns stdout (or stderr when stdout is empty); throws with its stderr. */
async function run(
  program: string,
  args: string[],
  options: { stdin?: string; allowFailure?: boolean } = {},
): Promise<string> {
  const child = new Deno.Command(program, {
    args,
    stdin: options.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (options.stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(options.stdin));
    await w.close();
  }
  const out = await child.output();
  const stdout = dec.decode(out.stdout);
  const stderr = dec.decode(out.stderr);
  if (!out.success && !options.allowFailure) {
    throw new Error(`${program} failed: ${stderr.trim() || `exit ${out.code}`}`);
  }
  return stdout || stderr;
}
