/**
 * Tests of src/config.ts on real YAML texts: every accepted key, every rejection (each
 * message must name the file, the line and the key, on one line, without secrets), Go's
 * `os.ExpandEnv` and `time.ParseDuration` semantics, and loading from disk with the real
 * process environment.
 */
import assert from "node:assert/strict";
import {
  type Config,
  configPathFromEnv,
  DEFAULT_CONFIG_PATH,
  expandEnv,
  loadConfig,
  parseConfig,
  parseDuration,
  replicaConfigFromUrl,
} from "../src/config.ts";
import { ConfigError, UsageError } from "../src/errors.ts";

const FILE = "/etc/litestream.yml";
const CWD = "/work/app";
const HOME = "/home/alice";

function parse(text: string, env: Record<string, string> = {}): Config {
  return parseConfig(text, { path: FILE, env: (name) => env[name], cwd: CWD, home: HOME });
}

/** Parses `text`, expecting a one-line ConfigError, and returns its message. */
function rejection(text: string, env: Record<string, string> = {}): string {
  try {
    parse(text, env);
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${err}`);
    assert.ok(!err.message.includes("\n"), `message has several lines: ${err.message}`);
    return err.message;
  }
  assert.fail("parseConfig() accepted an invalid config");
}

function yaml(lines: string[]): string {
  return lines.join("\n") + "\n";
}

// ---- accepted configs -------------------------------------------------------------------

Deno.test("parseConfig() reads every v0.3.13 key into milliseconds and absolute paths", () => {
  const config = parse(yaml([
    "addr: ':9090'",
    "exec: myapp -port 8080",
    "access-key-id: AKIAGLOBAL",
    "secret-access-key: globalsecret",
    "logging:",
    "  level: DEBUG",
    "  type: json",
    "  stderr: true",
    "dbs:",
    "  - path: ~/data/app.db",
    "    meta-path: meta/app",
    "    monitor-interval: 500ms",
    "    checkpoint-interval: 1m",
    "    min-checkpoint-page-count: 500",
    "    max-checkpoint-page-count: 0",
    "    busy-timeout: 5s",
    "    replicas:",
    "      - url: s3://mybkt.localhost:9000/app",
    "        name: minio",
    "        retention: 72h",
    "        retention-check-interval: 30m",
    "        sync-interval: 10s",
    "        snapshot-interval: 6h",
    "        validation-interval: 1h30m",
    "        region: us-west-2",
    "        endpoint: http://localhost:9000",
    "        force-path-style: true",
    "        skip-verify: false",
    "      - type: s3",
    "        bucket: other",
    "        path: backups/app",
    "        access-key-id: AKIAOWN",
    "      - path: ../backups",
    "  - path: relative.db",
  ]));
  assert.deepEqual(config, {
    path: FILE,
    addr: ":9090",
    exec: "myapp -port 8080",
    logging: { level: "debug", type: "json", stderr: true },
    dbs: [
      {
        path: "/home/alice/data/app.db",
        metaPath: "/work/app/meta/app",
        monitorIntervalMs: 500,
        checkpointIntervalMs: 60_000,
        minCheckpointPageCount: 500,
        maxCheckpointPageCount: 0,
        busyTimeoutMs: 5_000,
        replicas: [
          {
            type: "s3",
            name: "minio",
            url: "s3://mybkt.localhost:9000/app",
            retentionMs: 72 * 3_600_000,
            retentionCheckIntervalMs: 30 * 60_000,
            syncIntervalMs: 10_000,
            snapshotIntervalMs: 6 * 3_600_000,
            validationIntervalMs: 5_400_000,
            settings: {
              region: "us-west-2",
              endpoint: "http://localhost:9000",
              "force-path-style": true,
              "skip-verify": false,
              "access-key-id": "AKIAGLOBAL",
              "secret-access-key": "globalsecret",
            },
          },
          {
            type: "s3",
            path: "backups/app",
            settings: {
              bucket: "other",
              "access-key-id": "AKIAOWN",
              "secret-access-key": "globalsecret",
            },
          },
          { type: "file", path: "/work/backups", settings: {} },
        ],
      },
      { path: "/work/app/relative.db", replicas: [] },
    ],
  });
});

Deno.test("parseConfig() gives an empty file no databases and default logging", () => {
  for (const text of ["", "# nothing yet\n", "~\n"]) {
    assert.deepEqual(parse(text), {
      path: FILE,
      dbs: [],
      logging: { level: "info", type: "text", stderr: false },
    });
  }
});

Deno.test("parseConfig() leaves unset keys undefined so consumers apply defaults", () => {
  const config = parse(
    yaml(["dbs:", "  - path: /data/app.db", "    replicas:", "      - path: /b"]),
  );
  assert.deepEqual(config.dbs, [{
    path: "/data/app.db",
    replicas: [{ type: "file", path: "/b", settings: {} }],
  }]);
  assert.equal(config.addr, undefined);
  assert.equal(config.exec, undefined);
});

Deno.test("parseConfig() takes the type from the URL scheme over the type key", () => {
  const config = parse(yaml([
    "dbs:",
    "  - path: /a.db",
    "    replicas:",
    "      - type: s3",
    "        url: file:///var/backups/a",
  ]));
  assert.deepEqual(config.dbs[0].replicas, [
    { type: "file", url: "file:///var/backups/a", path: "/var/backups/a", settings: {} },
  ]);
});

Deno.test("parseConfig() reads YAML 1.1 booleans and bare integers like yaml.v2", () => {
  const config = parse(yaml([
    "logging: {stderr: yes}",
    "dbs:",
    "  - path: /a.db",
    "    monitor-interval: 0",
    "    checkpoint-interval: 2000000000", // nanoseconds, as in v0.3.13
    "    replicas:",
    "      - {type: s3, bucket: 0755, force-path-style: on, skip-verify: no, name: off}",
  ]));
  assert.equal(config.logging.stderr, true);
  assert.equal(config.dbs[0].monitorIntervalMs, 0);
  assert.equal(config.dbs[0].checkpointIntervalMs, 2_000);
  const [replica] = config.dbs[0].replicas;
  assert.equal(replica.settings.bucket, "0755"); // strings keep the text as written
  assert.equal(replica.name, "off");
  assert.equal(replica.settings["force-path-style"], true);
  assert.equal(replica.settings["skip-verify"], false);
});

Deno.test("parseConfig() accepts `warning` as the warn level and treats empty values as unset", () => {
  const config = parse(yaml([
    "logging: {level: warning, type: ''}",
    "exec: ''",
    "addr:",
    "dbs:",
    "  - path: /a.db",
    "    meta-path:",
    "    monitor-interval:",
    "    min-checkpoint-page-count:",
    "    replicas:",
  ]));
  assert.deepEqual(config.logging, { level: "warn", type: "text", stderr: false });
  assert.ok(!("exec" in config) && !("addr" in config));
  assert.deepEqual(config.dbs, [{ path: "/a.db", replicas: [] }]);
});

Deno.test("parseConfig() supports anchors, aliases and merge keys", () => {
  const config = parse(yaml([
    "dbs:",
    "  - path: /a.db",
    "    replicas: &replicas",
    "      - &s3 {type: s3, bucket: bkt, sync-interval: 5s}",
    "  - path: /b.db",
    "    replicas: *replicas",
    "  - path: /c.db",
    "    replicas:",
    "      - <<: *s3",
    "        path: c",
    "        sync-interval: 1s",
  ]));
  assert.deepEqual(config.dbs[1].replicas, config.dbs[0].replicas);
  assert.deepEqual(config.dbs[2].replicas, [
    { type: "s3", path: "c", syncIntervalMs: 1_000, settings: { bucket: "bkt" } },
  ]);
});

Deno.test("parseConfig() expands $VAR and ${VAR} before parsing, unset as empty", () => {
  const text = yaml([
    "dbs:",
    "  - path: ${DATA_DIR}/app.db",
    "    replicas:",
    "      - url: s3://$BUCKET/app$SUFFIX",
    "        secret-access-key: $SECRET",
  ]);
  const config = parse(text, { DATA_DIR: "/srv", BUCKET: "prod-bkt", SECRET: "x/y+z" });
  assert.equal(config.dbs[0].path, "/srv/app.db");
  assert.equal(config.dbs[0].replicas[0].url, "s3://prod-bkt/app");
  assert.equal(config.dbs[0].replicas[0].settings["secret-access-key"], "x/y+z");

  const raw = parseConfig(text, { path: FILE, expandEnv: false, env: () => "unused", cwd: CWD });
  assert.equal(raw.dbs[0].path, "/work/app/${DATA_DIR}/app.db");
  assert.equal(raw.dbs[0].replicas[0].url, "s3://$BUCKET/app$SUFFIX");
});

// ---- rejections -------------------------------------------------------------------------

Deno.test("parseConfig() rejects an unknown key with its line", () => {
  const text = yaml([
    "dbs:",
    "  - path: /data/app.db",
    "",
    "    # replicas below",
    "",
    "",
    "    replica:",
    "      - url: s3://bkt/app",
  ]);
  assert.equal(
    rejection(text),
    'config "/etc/litestream.yml" line 7: unknown key "replica" in dbs[0] (did you mean "replicas"?)',
  );
});

Deno.test("parseConfig() rejects unknown keys at every level with a hint", () => {
  assert.equal(
    rejection("dbs: []\nlogs: {}\n"),
    'config "/etc/litestream.yml" line 2: unknown key "logs" at the top level',
  );
  assert.equal(
    rejection("logging:\n  levl: debug\n"),
    'config "/etc/litestream.yml" line 2: unknown key "levl" in logging (did you mean "level"?)',
  );
  assert.equal(
    rejection(
      yaml([
        "dbs:",
        "  - path: /a.db",
        "    replicas:",
        "      - path: /b",
        "        syncInterval: 1s",
      ]),
    ),
    'config "/etc/litestream.yml" line 5: unknown key "syncInterval" in dbs[0].replicas[0] (did you mean "sync-interval"?)',
  );
  assert.equal(
    rejection(yaml(["dbs:", "  - path: /a.db", "    sync-interval: 1s"])),
    'config "/etc/litestream.yml" line 3: unknown key "sync-interval" in dbs[0] (it belongs under dbs[].replicas[])',
  );
  assert.equal(
    rejection(yaml(["dbs: []", "levels:", "  - interval: 5m"])),
    'config "/etc/litestream.yml" line 2: unknown key "levels" at the top level (a Litestream 0.5 setting; this version follows v0.3.13)',
  );
});

Deno.test("parseConfig() rejects malformed YAML with the parser's line", () => {
  assert.equal(
    rejection(
      yaml(["dbs:", "  - path: /a.db", "    replicas:", "      - url: s3://b/x", "     path: x"]),
    ),
    'config "/etc/litestream.yml" line 5: invalid YAML: all mapping items must start at the same column',
  );
  assert.match(
    rejection("dbs:\n\t- path: /a.db\n"),
    /^config "\/etc\/litestream\.yml" line 2: invalid YAML: /,
  );
  assert.match(
    rejection("dbs: []\ndbs: []\n"),
    /^config "\/etc\/litestream\.yml" line 2: invalid YAML: map keys must be unique$/,
  );
  assert.match(rejection("- path: /a.db\n"), /line 1: the top level must be a mapping/);
  assert.match(rejection("dbs:\n  - path: *missing\n"), /line 2: .*missing/);
});

Deno.test("parseConfig() counts lines in the file as written when a variable holds newlines", () => {
  const text = yaml([
    "dbs:",
    "  - path: $P",
    "    replicas:",
    "      - path: /b",
    "        sync-interval: 0s",
  ]);
  assert.match(rejection(text, { P: "/a.db" }), /line 5: dbs\[0\]\.replicas\[0\]\.sync-interval/);
  const multiline = yaml([
    "# $NOTE",
    "dbs:",
    "  - path: /a.db",
    "    replicas:",
    "      - path: /b",
    "        sync-interval: 0s",
  ]);
  assert.match(rejection(multiline, { NOTE: "one\n# two\n# three" }), /line 6: /);
});

Deno.test("parseConfig() rejects values of the wrong type with the key", () => {
  const replica = (line: string) =>
    yaml(["dbs:", "  - path: /a.db", "    replicas:", "      - path: /b", `        ${line}`]);
  assert.equal(
    rejection(replica("sync-interval: yes")),
    'config "/etc/litestream.yml" line 5: dbs[0].replicas[0].sync-interval must be a duration such as "1s" or "500ms", got "yes"',
  );
  assert.equal(
    rejection(replica("retention: [1h]")),
    'config "/etc/litestream.yml" line 5: dbs[0].replicas[0].retention must be a duration such as "1s" or "500ms", got a list',
  );
  assert.equal(
    rejection(replica("name: {a: 1}")),
    'config "/etc/litestream.yml" line 5: dbs[0].replicas[0].name must be a string, not a mapping',
  );
  assert.equal(
    rejection(yaml(["logging:", "  stderr: maybe"])),
    'config "/etc/litestream.yml" line 2: logging.stderr must be true or false, got "maybe"',
  );
  assert.equal(
    rejection(yaml(["dbs:", "  - path: /a.db", "    max-checkpoint-page-count: 1.5"])),
    'config "/etc/litestream.yml" line 3: dbs[0].max-checkpoint-page-count must be a whole number, got "1.5"',
  );
  assert.match(rejection("dbs: /a.db\n"), /line 1: dbs must be a list/);
  assert.match(rejection("dbs:\n  - /a.db\n"), /line 2: dbs\[0\] must be a mapping/);
  assert.match(rejection("logging: debug\n"), /line 1: logging must be a mapping/);
});

Deno.test("parseConfig() rejects bad durations", () => {
  const db = (line: string) => yaml(["dbs:", "  - path: /a.db", `    ${line}`]);
  assert.equal(
    rejection(db("checkpoint-interval: 1d")),
    'config "/etc/litestream.yml" line 3: dbs[0].checkpoint-interval "1d" is not a duration: unknown unit "d" (use ns, us, ms, s, m or h)',
  );
  assert.match(
    rejection(db("monitor-interval: '10'")),
    /line 3: dbs\[0\]\.monitor-interval "10" is not a duration: missing unit/,
  );
  assert.match(
    rejection(db("monitor-interval: -1s")),
    /line 3: dbs\[0\]\.monitor-interval must be 0 or more, got "-1s"/,
  );
  assert.match(
    rejection(db("busy-timeout: 1:30")),
    /line 3: dbs\[0\]\.busy-timeout must be a duration/,
  );
});

Deno.test("parseConfig() rejects a zero sync-interval that v0.3.13 panics on", () => {
  for (const value of ["0s", "0", "-1s"]) {
    const text = yaml([
      "dbs:",
      "  - path: /a.db",
      "    replicas:",
      "      - path: /b",
      `        sync-interval: ${value}`,
    ]);
    assert.equal(
      rejection(text),
      `config "/etc/litestream.yml" line 5: dbs[0].replicas[0].sync-interval must be greater than 0, got "${value}"`,
    );
  }
  const check = yaml([
    "dbs:",
    "  - path: /a.db",
    "    replicas:",
    "      - path: /b",
    "        retention-check-interval: 0s",
  ]);
  assert.match(
    rejection(check),
    /line 5: dbs\[0\]\.replicas\[0\]\.retention-check-interval must be greater than 0/,
  );
});

Deno.test("parseConfig() rejects a min-checkpoint-page-count that is not positive", () => {
  for (const value of ["0", "-5"]) {
    assert.equal(
      rejection(yaml(["dbs:", "  - path: /a.db", `    min-checkpoint-page-count: ${value}`])),
      `config "/etc/litestream.yml" line 3: dbs[0].min-checkpoint-page-count must be greater than 0, got ${value}`,
    );
  }
  assert.match(
    rejection(yaml(["dbs:", "  - path: /a.db", "    max-checkpoint-page-count: -1"])),
    /line 3: dbs\[0\]\.max-checkpoint-page-count must be at least 0, got -1/,
  );
});

Deno.test("parseConfig() rejects a database without a path", () => {
  assert.equal(
    rejection(yaml(["dbs:", "  - path: /a.db", "  - meta-path: /meta", "    replicas: []"])),
    'config "/etc/litestream.yml" line 3: dbs[1] has no path',
  );
  assert.match(rejection(yaml(["dbs:", "  - path: ''"])), /line 2: dbs\[0\] has no path/);
  assert.match(rejection(yaml(["dbs:", "  - path: $UNSET"])), /line 2: dbs\[0\] has no path/);
});

Deno.test("parseConfig() rejects a ~ path when there is no home directory", () => {
  assert.throws(
    () =>
      parseConfig("dbs:\n  - path: ~/a.db\n", {
        path: FILE,
        env: () => undefined,
        cwd: CWD,
        home: "",
      }),
    new ConfigError(
      'config "/etc/litestream.yml" line 2: dbs[0].path: cannot expand "~/a.db": no home directory ($HOME is not set)',
    ),
  );
  assert.throws(() => replicaConfigFromUrl("~/backups", { home: "" }), UsageError);
});

Deno.test("parseConfig() rejects two databases with the same resolved path", () => {
  assert.equal(
    rejection(yaml(["dbs:", "  - path: /work/app/a.db", "  - path: /b.db", "  - path: ./a.db"])),
    'config "/etc/litestream.yml" line 4: dbs[2].path "/work/app/a.db" is already used by dbs[0]',
  );
});

Deno.test("parseConfig() rejects replicas of one database with the same name", () => {
  assert.equal(
    rejection(
      yaml([
        "dbs:",
        "  - path: /a.db",
        "    replicas:",
        "      - url: s3://one/a",
        "      - url: s3://two/a",
      ]),
    ),
    'config "/etc/litestream.yml" line 5: dbs[0].replicas[1] has the same name "s3" as dbs[0].replicas[0] (give each replica a distinct name)',
  );
  assert.match(
    rejection(
      yaml([
        "dbs:",
        "  - path: /a.db",
        "    replicas:",
        "      - {path: /b, name: x}",
        "      - path: /c",
        "        name: x",
      ]),
    ),
    /line 6: dbs\[0\]\.replicas\[1\] has the same name "x" as dbs\[0\]\.replicas\[0\]/,
  );
  // Named apart, and the same name in another database, are fine.
  const ok = parse(yaml([
    "dbs:",
    "  - path: /a.db",
    "    replicas: [{url: s3://one/a}, {url: s3://two/a, name: dr}]",
    "  - path: /b.db",
    "    replicas: [{url: s3://one/b}]",
  ]));
  assert.equal(ok.dbs[0].replicas.length, 2);
});

Deno.test("parseConfig() rejects url together with path or bucket", () => {
  assert.equal(
    rejection(
      yaml([
        "dbs:",
        "  - path: /a.db",
        "    replicas:",
        "      - url: file:///b",
        "        path: /c",
      ]),
    ),
    'config "/etc/litestream.yml" line 5: dbs[0].replicas[0] cannot set both url and path',
  );
  assert.equal(
    rejection(
      yaml([
        "dbs:",
        "  - path: /a.db",
        "    replicas:",
        "      - url: s3://bkt/a",
        "        bucket: bkt",
      ]),
    ),
    'config "/etc/litestream.yml" line 5: dbs[0].replicas[0] cannot set both url and bucket',
  );
});

Deno.test("parseConfig() rejects a path that looks like a URL", () => {
  assert.equal(
    rejection(
      yaml([
        "dbs:",
        "  - path: /a.db",
        "    replicas:",
        "      - type: s3",
        "        path: s3://bkt/a",
      ]),
    ),
    'config "/etc/litestream.yml" line 5: dbs[0].replicas[0].path "s3://bkt/a" is a URL (use the url key)',
  );
});

Deno.test("parseConfig() rejects replicas missing their destination", () => {
  assert.equal(
    rejection(yaml(["dbs:", "  - path: /a.db", "    replicas:", "      - name: backup"])),
    'config "/etc/litestream.yml" line 4: dbs[0].replicas[0] is a file replica and needs a path or a url',
  );
  assert.match(
    rejection(yaml(["dbs:", "  - path: /a.db", "    replicas:", "      - type: s3"])),
    /line 4: dbs\[0\]\.replicas\[0\] is an s3 replica and needs a bucket or a url/,
  );
  assert.match(
    rejection(yaml(["dbs:", "  - path: /a.db", "    replicas:", "      - bucket: bkt"])),
    /line 4: dbs\[0\]\.replicas\[0\]\.bucket applies only to s3, gcs and abs replicas \(set type: s3 or use an s3:\/\/ url\)/,
  );
  assert.match(
    rejection(yaml(["dbs:", "  - path: /a.db", "    replicas:", "      - url: file://host/b"])),
    /line 4: dbs\[0\]\.replicas\[0\]\.url: file URL "file:\/\/host\/b" must have an absolute path/,
  );
  assert.match(
    rejection(yaml(["dbs:", "  - path: /a.db", "    replicas:", "      - url: /var/backups"])),
    /line 4: dbs\[0\]\.replicas\[0\]\.url: replica URL "\/var\/backups" needs a scheme/,
  );
});

Deno.test("parseConfig() reads every backend of the table and names keys of another backend", () => {
  const config = parse(yaml([
    "dbs:",
    "  - path: /a.db",
    "    replicas:",
    "      - {type: sftp, host: 'h:2222', user: u, password: pw, key-path: /id, path: db}",
    "      - url: sftp://u@h:2222/db",
    "        name: sftp2",
    "      - {type: gcs, bucket: b, path: db}",
    "      - url: gcs://b/db",
    "        name: gcs2",
    "      - {type: abs, account-name: acct, account-key: k, bucket: c, endpoint: 'http://e'}",
    "      - url: abs://acct@c/db",
    "        name: abs2",
  ]));
  assert.deepEqual(config.dbs[0].replicas.map((r) => [r.type, r.settings]), [
    ["sftp", { host: "h:2222", user: "u", password: "pw", "key-path": "/id" }],
    ["sftp", {}],
    ["gcs", { bucket: "b" }],
    ["gcs", {}],
    ["abs", { "account-name": "acct", "account-key": "k", bucket: "c", endpoint: "http://e" }],
    ["abs", {}],
  ]);
  assert.equal(
    rejection(yaml(["dbs:", "  - path: /a.db", "    replicas:", "      - type: ftp"])),
    'config "/etc/litestream.yml" line 4: dbs[0].replicas[0].type "ftp" is unknown (supported: file, s3, gcs, abs, sftp)',
  );
  assert.match(
    rejection(yaml(["dbs:", "  - path: /a.db", "    replicas:", "      - url: https://bkt/a"])),
    /line 4: dbs\[0\]\.replicas\[0\]\.url: unknown replica URL scheme "https"/,
  );
  assert.match(
    rejection(
      yaml([
        "dbs:",
        "  - path: /a.db",
        "    replicas:",
        "      - path: /b",
        "        key-path: /id_rsa",
      ]),
    ),
    /line 5: dbs\[0\]\.replicas\[0\]\.key-path applies only to sftp replicas \(set type: sftp/,
  );
  assert.match(
    rejection(yaml(["dbs:", "  - path: /a.db", "    replicas:", "      - {type: sftp, host: h}"])),
    /line 4: dbs\[0\]\.replicas\[0\] is an sftp replica and needs a user/,
  );
  assert.match(
    rejection(
      yaml(["dbs:", "  - path: /a.db", "    replicas:", "      - {type: abs, password: x}"]),
    ),
    /password applies only to sftp replicas/,
  );
});

Deno.test("parseConfig() reads age identities and recipients, and names a bad key without its value", () => {
  const identity = "AGE-SECRET-KEY-1MZZ740SKSJ3JQD65JMVHJ5XR9GPN65CZAN55YHW9XRHRHRE60AQQYSLZAT";
  const recipient = "age1u6n757lrm9pn6p7qhssjlr49mgxc0pguw8ry7jwy600sxzmcx58q6vunjh";
  const config = parse(yaml([
    "dbs:",
    "  - path: /a.db",
    "    replicas:",
    "      - url: s3://bkt/a",
    "        age:",
    `          identities: [${identity}]`,
    `          recipients: [${recipient}]`,
  ]));
  assert.deepEqual(config.dbs[0].replicas[0].age, {
    identities: [identity],
    recipients: [recipient],
  });
  const bad = rejection(yaml([
    "dbs:",
    "  - path: /a.db",
    "    replicas:",
    "      - path: /b",
    "        age:",
    `          identities: [${identity.slice(0, -1)}]`,
  ]));
  assert.equal(
    bad,
    'config "/etc/litestream.yml" line 6: dbs[0].replicas[0].age.identities[0] is not an age X25519 identity ("AGE-SECRET-KEY-1…")',
  );
  assert.match(
    rejection(
      yaml(["dbs:", "  - path: /a.db", "    replicas:", "      - path: /b", "        age: {}"]),
    ),
    /line 5: dbs\[0\]\.replicas\[0\]\.age needs identities \(to restore\) and recipients/,
  );
});

Deno.test("parseConfig() rejects unknown logging types and levels", () => {
  assert.equal(
    rejection("logging:\n  type: logfmt\n"),
    'config "/etc/litestream.yml" line 2: logging.type must be text or json, got "logfmt"',
  );
  assert.equal(
    rejection("logging:\n  level: trace\n"),
    'config "/etc/litestream.yml" line 2: logging.level must be debug, info, warn or error, got "trace"',
  );
});

Deno.test("parseConfig() rejects an addr without a port", () => {
  assert.equal(
    rejection("addr: localhost\n"),
    'config "/etc/litestream.yml" line 1: addr must be HOST:PORT such as ":9090", got "localhost"',
  );
  assert.equal(parse("addr: '[::1]:9090'\n").addr, "[::1]:9090");
});

Deno.test("parseConfig() never puts a secret value in an error message", () => {
  const secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
  const cases: [string, Record<string, string>][] = [
    // A secret that breaks the YAML once expanded.
    [
      yaml([
        "dbs:",
        "  - path: /a.db",
        "    replicas:",
        "      - type: s3",
        "        bucket: b",
        "        secret-access-key: $S",
      ]),
      { S: `${secret}: [` },
    ],
    // A secret of the wrong type.
    [yaml(["secret-access-key: [$S]", "dbs: []"]), { S: secret }],
    [
      yaml([
        "dbs:",
        "  - path: /a.db",
        "    replicas:",
        "      - {type: s3, bucket: b, access-key-id: {k: $S}}",
      ]),
      { S: secret },
    ],
    // A password inside a URL.
    [
      yaml([
        "dbs:",
        "  - path: /a.db",
        "    replicas:",
        `      - url: sftp://user:${"hunter2"}@/a`,
      ]),
      {},
    ],
    [
      yaml([
        "dbs:",
        "  - path: /a.db",
        "    replicas:",
        `      - url: ftp://user:${"hunter2"}@host/a`,
      ]),
      {},
    ],
    [
      yaml([
        "dbs:",
        "  - path: /a.db",
        "    replicas:",
        "      - type: s3",
        `        path: s3://user:hunter2@bkt/a`,
      ]),
      {},
    ],
  ];
  for (const [text, env] of cases) {
    const message = rejection(text, env);
    assert.match(message, /^config "\/etc\/litestream\.yml" line \d+: /);
    assert.ok(!message.includes(secret), message);
    assert.ok(!message.includes("hunter2"), message);
  }
});

// ---- loadConfig and configPathFromEnv -------------------------------------------------

Deno.test("loadConfig() reads a file and expands the real environment", async () => {
  const dir = await Deno.makeTempDir({ prefix: "config_test_" });
  const name = `LITESTREAM_TEST_BUCKET_${crypto.randomUUID().replaceAll("-", "")}`;
  try {
    const file = `${dir}/litestream.yml`;
    await Deno.writeTextFile(
      file,
      yaml(["dbs:", "  - path: /a.db", "    replicas:", `      - url: s3://\${${name}}/a`]),
    );
    Deno.env.set(name, "from-env");
    const config = await loadConfig(file);
    assert.equal(config.path, file);
    assert.equal(config.dbs[0].replicas[0].url, "s3://from-env/a");
    const raw = await loadConfig(file, { expandEnv: false });
    assert.equal(raw.dbs[0].replicas[0].url, `s3://\${${name}}/a`);
  } finally {
    Deno.env.delete(name);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadConfig() names the file when it is missing or unreadable", async () => {
  const dir = await Deno.makeTempDir({ prefix: "config_test_" });
  try {
    await assert.rejects(loadConfig(`${dir}/missing.yml`), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.equal(err.message, `config file "${dir}/missing.yml" not found`);
      return true;
    });
    await assert.rejects(loadConfig(dir), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.equal(err.message, `cannot read config file "${dir}"`);
      assert.ok(err.cause instanceof Error);
      return true;
    });
    await Deno.writeTextFile(`${dir}/bad.yml`, "dbs:\n  - pth: /a.db\n");
    await assert.rejects(loadConfig(`${dir}/bad.yml`), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.equal(
        err.message,
        `config "${dir}/bad.yml" line 2: unknown key "pth" in dbs[0] (did you mean "path"?)`,
      );
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("configPathFromEnv() prefers the flag, then LITESTREAM_CONFIG, then the default", () => {
  const saved = Deno.env.get("LITESTREAM_CONFIG");
  try {
    Deno.env.delete("LITESTREAM_CONFIG");
    assert.deepEqual(configPathFromEnv(), { path: DEFAULT_CONFIG_PATH, explicit: false });
    Deno.env.set("LITESTREAM_CONFIG", "");
    assert.deepEqual(configPathFromEnv(), { path: "/etc/litestream.yml", explicit: false });
    Deno.env.set("LITESTREAM_CONFIG", "/srv/ls.yml");
    assert.deepEqual(configPathFromEnv(), { path: "/srv/ls.yml", explicit: true });
    assert.deepEqual(configPathFromEnv("/opt/x.yml"), { path: "/opt/x.yml", explicit: true });
    assert.deepEqual(configPathFromEnv("x.yml"), { path: `${Deno.cwd()}/x.yml`, explicit: true });
  } finally {
    if (saved === undefined) Deno.env.delete("LITESTREAM_CONFIG");
    else Deno.env.set("LITESTREAM_CONFIG", saved);
  }
});

// ---- replicaConfigFromUrl ---------------------------------------------------------------

Deno.test("replicaConfigFromUrl() turns file URLs and bare paths into absolute file replicas", () => {
  const options = { cwd: CWD, home: HOME };
  assert.deepEqual(replicaConfigFromUrl("file:///var/backups/db", options), {
    type: "file",
    url: "file:///var/backups/db",
    path: "/var/backups/db",
    settings: {},
  });
  assert.deepEqual(replicaConfigFromUrl("file:///tmp/my%20dir/../x", options).path, "/tmp/x");
  assert.deepEqual(replicaConfigFromUrl("backups/db", options), {
    type: "file",
    path: "/work/app/backups/db",
    settings: {},
  });
  assert.deepEqual(replicaConfigFromUrl("~/backups", options), {
    type: "file",
    path: "/home/alice/backups",
    settings: {},
  });
  assert.deepEqual(replicaConfigFromUrl("/abs/dir/", options), {
    type: "file",
    path: "/abs/dir",
    settings: {},
  });
});

Deno.test("replicaConfigFromUrl() keeps s3 URLs for the client to parse", () => {
  const replica = replicaConfigFromUrl("S3://mybkt.localhost:9000/dbs/app");
  assert.equal(replica.syncIntervalMs, undefined);
  assert.deepEqual(replica, { type: "s3", url: "S3://mybkt.localhost:9000/dbs/app", settings: {} });
});

Deno.test("replicaConfigFromUrl() throws UsageError naming an unknown scheme, or a URL without its host, and never shows a password", () => {
  assert.throws(() => replicaConfigFromUrl("ftp://host/a"), (err: unknown) => {
    assert.ok(err instanceof UsageError);
    assert.equal(
      err.message,
      'unknown replica URL scheme "ftp" in "ftp://host/a" (supported: file, s3, gcs, abs, sftp)',
    );
    return true;
  });
  assert.deepEqual(replicaConfigFromUrl("gcs://bkt/a"), {
    type: "gcs",
    url: "gcs://bkt/a",
    settings: {},
  });
  assert.throws(
    () => replicaConfigFromUrl("sftp://me:hunter2@/a"),
    (err: unknown) => err instanceof UsageError && !err.message.includes("hunter2"),
  );
  assert.throws(() => replicaConfigFromUrl("s3:///a"), /has no bucket/);
  assert.throws(() => replicaConfigFromUrl("file://"), /has no path/);
});

// ---- expandEnv and parseDuration --------------------------------------------------------

Deno.test("expandEnv() follows Go's os.ExpandEnv", () => {
  const env = (name: string) =>
    ({ A: "1", B_2: "two", HOME: "/home/a" } as Record<string, string>)[name];
  const cases: [string, string][] = [
    ["$A", "1"],
    ["${A}x", "1x"],
    ["$Ax", ""], // the name is "Ax"
    ["$B_2/$HOME", "two//home/a"],
    ["$UNSET-", "-"],
    ["a$", "a$"], // a trailing $ stays
    ["$ a", "$ a"], // $ not followed by a name stays
    ["$$", ""], // "$$" is the special variable "$", which is unset
    ["$1x", "x"],
    ["${}x", "x"], // bad syntax is dropped
    ["${A", "A"], // "${" without "}" drops "${"
    ["${A-b}", ""], // any text up to "}" is the name
    ["pa$$word", "paword"],
    ["no vars", "no vars"],
  ];
  for (const [input, expected] of cases) assert.equal(expandEnv(input, env), expected, input);
});

Deno.test("parseDuration() parses Go durations into milliseconds", () => {
  const cases: [string | number, number][] = [
    ["1s", 1_000],
    ["500ms", 500],
    ["1h30m", 5_400_000],
    ["1.5h", 5_400_000],
    ["24h", 86_400_000],
    ["0", 0],
    ["0s", 0],
    ["-2m", -120_000],
    ["+3s", 3_000],
    [".5s", 500],
    ["1.s", 1_000],
    ["1us", 0.001],
    ["1µs", 0.001],
    ["1m0.5s", 60_500],
    ["100ns", 0.0001],
    [1_000_000, 1], // a bare integer is nanoseconds
    [0, 0],
  ];
  for (const [input, expected] of cases) {
    assert.equal(parseDuration(input), expected, String(input));
  }
});

Deno.test("parseDuration() throws RangeError for what Go rejects", () => {
  for (
    const input of [
      "1d",
      "",
      "10",
      "1.5",
      "s",
      ".s",
      "1h-2m",
      "-",
      "1e3s",
      "1 s",
      "9999999999h",
      1.5,
    ]
  ) {
    assert.throws(() => parseDuration(input), RangeError, String(input));
  }
  assert.throws(() => parseDuration("1d"), {
    name: "RangeError",
    message: 'Cannot parse duration "1d": unknown unit "d" (use ns, us, ms, s, m or h)',
  });
});
