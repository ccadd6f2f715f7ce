#!/usr/bin/env node
// A Helix oracle agent in Node.js: serves helix.v1.OracleService (ListOracles, GetOracle,
// Verify, VerifyStream with the credit protocol of protos/helix/v1/oracle.proto) and
// grpc.health.v1.Health, hosting one oracle — the ten-item knapsack of
// examples/oracles/node_worker.js, judged by that file's own `judge` — under the name and
// config_hash of the Python agents' oracle it is equivalent to, so a run uses both:
//
//   HASH=$(helix oracle hash knapsack-node --config examples/oracles/oracles.yaml)
//   node oracle_agent.js --config-hash "$HASH" --registry-address 127.0.0.1:50051 \
//       --auth-hs256-dir DATA_DIR/keys
//
// Stating the config_hash is the operator's promise that this agent gives the verdicts the
// Python agents give for that configuration (the run pins one hash; agents with another
// are refused). With --registry-address it registers itself (kind ORACLE, its endpoint,
// capacity and oracle), heartbeats at a third of its lease with its load, and on SIGTERM
// (or SIGINT) drains: NOT_SERVING, no new streams or credit, the batches it holds answered,
// then it deregisters and exits 0, printing how many candidates it verified. Its registry
// calls carry tokens it mints with the --auth-hs256-dir keys (renewed before they expire),
// else HELIX_TOKEN_FILE (re-read at every call), else HELIX_TOKEN; if the registry refuses
// the token (expired, a scope missing), the agent drains and exits 1 rather than serve
// unregistered.
"use strict";

const grpc = require("@grpc/grpc-js");

const {
  UsageError,
  channelCredentials,
  client,
  describeError,
  durationSeconds,
  integerFlag,
  invalidArgument,
  parseFlags,
  protos,
  rpcError,
  secondsFlag,
  violation,
} = require("./lib/helix");
const { KnapsackOracle, decodeCandidates, requireDna } = require("./lib/oracle");
const { TokenVerifier, tokenSource } = require("./lib/auth");
const { Registration } = require("./lib/registration");

const USAGE = `usage: node oracle_agent.js --config-hash HASH [options]

Serves oracle NAME (default knapsack-node) on HOST:PORT and, with --registry-address,
registers it there. The agent's own registry calls (scopes agents.write, agents.read) carry
tokens it mints with the --auth-hs256-dir keys, renewed before they expire; without keys,
the token in the file HELIX_TOKEN_FILE names (re-read at every call: rotate it there), else
HELIX_TOKEN (never renewed: when the registry refuses it, the agent drains and exits 1).

  --config-hash HASH        the config_hash it serves under (env HELIX_ORACLE_CONFIG_HASH):
                            helix oracle hash NAME --config FILE prints the Python agents' one
  --oracle NAME             the oracle's id [knapsack-node]
  --host HOST               listen host [127.0.0.1]; a host other than loopback needs
                            --auth-hs256-dir (or --insecure-no-auth)
  --port PORT               listen port; 0 picks a free one [0]
  --capacity N              candidates held at once [64]
  --stream-share F          share of the capacity one stream may hold, (0, 1] [0.5]
  --idle-timeout S          end a stream idle this long, holding nothing [60]
  --cache-entries N         verdicts cached, least recently used out first [100000]
  --objective O             maximize, minimize or none [maximize]
  --registry-address ADDR   register with the registry there (env HELIX_REGISTRY_ADDRESS)
  --registry-ca FILE        CA bundle to reach the registry by TLS
  --agent-id ID             id to register as [the registry picks one]
  --advertise-address ADDR  endpoint to register [the listen address]; required when
                            --host is a wildcard (0.0.0.0, ::)
  --ttl S                   lease asked for, in seconds [the registry's default]
  --auth-hs256-dir DIR      the suite's HS256 keys (DATA_DIR/keys; env
                            HELIX_AUTH_HS256_DIR): callers' tokens are checked with them,
                            and the agent mints its own registry tokens with them
  --token-ttl S             life of the tokens it mints [300]
  --insecure-no-auth        serve a host other than loopback without checking tokens
  --grace S                 at SIGTERM, how long held batches may take [20]
  -h, --help                this help`;

const FLAG_SPEC = {
  "config-hash": { type: "string" },
  oracle: { type: "string", default: "knapsack-node" },
  host: { type: "string", default: "127.0.0.1" },
  port: { type: "string", default: "0" },
  capacity: { type: "string", default: "64" },
  "stream-share": { type: "string", default: "0.5" },
  "idle-timeout": { type: "string" },
  "cache-entries": { type: "string", default: "100000" },
  objective: { type: "string", default: "maximize" },
  "registry-address": { type: "string" },
  "registry-ca": { type: "string", default: "" },
  "agent-id": { type: "string", default: "" },
  "advertise-address": { type: "string", default: "" },
  ttl: { type: "string" },
  "auth-hs256-dir": { type: "string" },
  grace: { type: "string" },
  "token-ttl": { type: "string" },
  "insecure-no-auth": { type: "boolean", default: false },
  help: { type: "boolean", short: "h", default: false },
};

const ORACLE_ID = /^[a-z][a-z0-9-]{0,62}$/;
const MAX_CANDIDATES = 10000;
const MAX_BATCH_ID_RANGES = 65536;
const REPORT_EVERY_MS = 1000;
const HEALTH_WATCHERS = 100;
const AGENT_SCOPES = ["agents.write", "agents.read"]; // Heartbeat, ...; GetAgent (deregister)
const WILDCARD_HOSTS = new Set(["0.0.0.0", "::", "[::]", ""]);

/** Whether `host` is a loopback address (127.0.0.0/8, ::1, localhost). */
function isLoopback(host) {
  const bare = host.replace(/^\[(.*)\]$/, "$1").toLowerCase();
  return bare === "localhost" || bare === "::1" || /^127(\.\d{1,3}){3}$/.test(bare);
}

function log(line) {
  process.stderr.write(`${new Date().toISOString()} helix-node-oracle: ${line}\n`);
}

/** The settings from the command line and environment; UsageError names a bad one. */
function settings(argv) {
  const flags = parseFlags(argv, FLAG_SPEC);
  if (flags.help) return { help: true };
  const configHash = flags["config-hash"] || process.env.HELIX_ORACLE_CONFIG_HASH || "";
  if (!configHash) {
    throw new UsageError(
      "--config-hash is required: the config_hash of the oracle this agent is equivalent " +
        "to (helix oracle hash NAME --config FILE prints it)"
    );
  }
  if (!/^[0-9a-f]{64}$/.test(configHash)) {
    throw new UsageError("--config-hash must be 64 lowercase hex characters");
  }
  if (!ORACLE_ID.test(flags.oracle)) {
    throw new UsageError("--oracle must match [a-z][a-z0-9-]{0,62}");
  }
  const objectives = {
    maximize: "OBJECTIVE_MAXIMIZE",
    minimize: "OBJECTIVE_MINIMIZE",
    none: "OBJECTIVE_UNSPECIFIED",
  };
  if (!(flags.objective in objectives)) {
    throw new UsageError("--objective must be maximize, minimize or none");
  }
  const share = Number(flags["stream-share"]);
  if (!(share > 0 && share <= 1)) throw new UsageError("--stream-share must be in (0, 1]");
  const agentId = flags["agent-id"];
  if (agentId && !ORACLE_ID.test(agentId)) {
    throw new UsageError("--agent-id must match [a-z][a-z0-9-]{0,62}");
  }
  const keyDir = flags["auth-hs256-dir"] || process.env.HELIX_AUTH_HS256_DIR || "";
  if (!keyDir && !isLoopback(flags.host) && !flags["insecure-no-auth"]) {
    throw new UsageError(
      `--host ${flags.host} is not loopback: give --auth-hs256-dir DATA_DIR/keys so callers' ` +
        "tokens are checked (or --insecure-no-auth to serve anyone unchecked)"
    );
  }
  const registryAddress = flags["registry-address"] || process.env.HELIX_REGISTRY_ADDRESS || "";
  if (registryAddress && WILDCARD_HOSTS.has(flags.host) && !flags["advertise-address"]) {
    throw new UsageError(
      `--host ${flags.host || '""'} listens on every interface, which is no address to ` +
        "register: give --advertise-address HOST:PORT (where the orchestrator reaches this agent)"
    );
  }
  return {
    configHash,
    oracle: flags.oracle,
    host: flags.host,
    port: Number(integerFlag("port", flags.port, 0n, 65535n)),
    capacity: Number(integerFlag("capacity", flags.capacity, 1n, 100000n)),
    share,
    idleTimeout: secondsFlag("idle-timeout", flags["idle-timeout"], 60),
    cacheEntries: Number(integerFlag("cache-entries", flags["cache-entries"], 0n, 10000000n)),
    objective: objectives[flags.objective],
    registryAddress,
    registryCa: flags["registry-ca"],
    agentId,
    advertiseAddress: flags["advertise-address"],
    ttl: secondsFlag("ttl", flags.ttl, 0),
    keyDir,
    grace: secondsFlag("grace", flags.grace, 20),
    tokenTtl: secondsFlag("token-ttl", flags["token-ttl"], 300),
  };
}

/** The batch ids seen on a stream, as sorted disjoint ranges [low, high] of BigInts:
 * increasing counters stay one range; ids that scatter are bounded (RESOURCE_EXHAUSTED). */
class BatchIds {
  constructor() {
    this.lows = [];
    this.highs = [];
  }

  /** Record `id`; false when it was seen before. */
  add(id) {
    let lo = 0;
    let hi = this.lows.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.lows[mid] <= id) lo = mid + 1;
      else hi = mid;
    }
    const i = lo - 1; // the last range starting at or before id
    if (i >= 0 && id <= this.highs[i]) return false;
    const joinsLeft = i >= 0 && this.highs[i] === id - 1n;
    const joinsRight = i + 1 < this.lows.length && this.lows[i + 1] === id + 1n;
    if (joinsLeft && joinsRight) {
      this.highs[i] = this.highs[i + 1];
      this.lows.splice(i + 1, 1);
      this.highs.splice(i + 1, 1);
    } else if (joinsLeft) {
      this.highs[i] = id;
    } else if (joinsRight) {
      this.lows[i + 1] = id;
    } else {
      if (this.lows.length >= MAX_BATCH_ID_RANGES) {
        throw rpcError(
          grpc.status.RESOURCE_EXHAUSTED,
          `batch ids on this stream form over ${MAX_BATCH_ID_RANGES} separate ranges; use ` +
            "increasing counters (or open a new stream)",
          { reason: "RESOURCE_EXHAUSTED" }
        );
      }
      this.lows.splice(i + 1, 0, id);
      this.highs.splice(i + 1, 0, id);
    }
    return true;
  }
}

/** INTERNAL without details for an unexpected exception: logged here as one line (no
 * stack trace: a caller repeating a bad call must not flood the log), never sent. */
function internal(err, what) {
  const text = err && err.message ? `${err.name || "Error"}: ${err.message}` : String(err);
  log(`${what} failed unexpectedly: ${text.split("\n")[0].slice(0, 500)}`);
  return rpcError(grpc.status.INTERNAL, `${what} failed`, { reason: "INTERNAL" });
}

/** The error to answer with: a gRPC status error as it is, anything else INTERNAL. */
function asStatus(err, what) {
  return err && typeof err.code === "number" ? err : internal(err, what);
}

/** The agent: its oracle, its server, its streams, its registration and its drain. */
class Agent {
  constructor(config) {
    this.config = config;
    this.oracle = new KnapsackOracle({
      id: config.oracle,
      configHash: config.configHash,
      capacity: config.capacity,
      cacheEntries: config.cacheEntries,
      objective: config.objective,
      description: "the ten-item 0/1 knapsack of node_worker.js, served by a Node.js agent",
    });
    this.verifier = config.keyDir ? new TokenVerifier(config.keyDir) : null;
    // The registry calls' token source, made here so a bad one is a usage error (exit 2).
    this.tokens = config.registryAddress
      ? tokenSource({
          keyDir: config.keyDir,
          subject: config.agentId || "helix-node-oracle",
          scopes: AGENT_SCOPES,
          ttl: config.tokenTtl,
        })
      : null;
    // Settles with the error when the registry refuses the agent's token for good.
    this.fatal = new Promise((resolve) => {
      this.onFatal = resolve;
    });
    this.draining = false;
    this.sessions = new Set();
    this.healthWatchers = new Set();
    this.registration = null;
    this.server = null;
    this.address = "";
    this.reporter = null;
  }

  // --- calls ------------------------------------------------------------------------

  /** Check the caller's token for `scope` (no-op without a key directory). */
  authorize(call, scope) {
    if (this.verifier) this.verifier.check(call.metadata, scope);
  }

  /** The hosted oracle named `name`, or NOT_FOUND. */
  lookup(name, field) {
    if (!name) throw invalidArgument([violation(field, "must be set", "required")]);
    if (!/^oracles\/[a-z][a-z0-9-]{0,62}$/.test(name)) {
      throw invalidArgument([
        violation(field, 'must be "oracles/{oracle}", {oracle} matching [a-z][a-z0-9-]{0,62}', "pattern"),
      ]);
    }
    if (name !== this.oracle.name) {
      throw rpcError(
        grpc.status.NOT_FOUND,
        `no oracle ${name} on this agent (ListOracles shows the hosted ones)`,
        { reason: "NOT_FOUND", metadata: { oracle: name } }
      );
    }
    return this.oracle;
  }

  refuseWhileDraining() {
    if (this.draining) {
      throw rpcError(
        grpc.status.UNAVAILABLE,
        "this oracle agent is shutting down; use another one",
        { reason: "ORACLE_DRAINING", retryAfter: 1 }
      );
    }
  }

  /** Take `n` candidates of the capacity, or RESOURCE_EXHAUSTED; returns a release function. */
  lease(n) {
    const oracle = this.oracle;
    if (n > oracle.capacity) {
      throw rpcError(
        grpc.status.RESOURCE_EXHAUSTED,
        `${n} candidates are more than oracle ${oracle.id} holds at once (${oracle.capacity}): ` +
          `send batches of at most ${oracle.capacity}`,
        { reason: "BATCH_OVER_CAPACITY", metadata: { capacity: String(oracle.capacity) } }
      );
    }
    if (n < 1 || n > oracle.free) {
      throw rpcError(
        grpc.status.RESOURCE_EXHAUSTED,
        `oracle ${oracle.id} holds ${oracle.held} of its capacity of ${oracle.capacity} ` +
          `candidates; ${n} more do not fit now`,
        {
          reason: "ORACLE_BUSY",
          retryAfter: 0.5,
          metadata: { capacity: String(oracle.capacity), free: String(oracle.free) },
        }
      );
    }
    oracle.free -= n;
    let held = true;
    return () => {
      if (held) {
        held = false;
        oracle.free += n;
      }
    };
  }

  /** A unary handler: errors with a code are answered as they are, others as INTERNAL. */
  unary(what, scope, body) {
    return (call, callback) => {
      Promise.resolve()
        .then(() => {
          this.authorize(call, scope);
          return body(call.request, call);
        })
        .then(
          (response) => callback(null, response),
          (err) => callback(asStatus(err, what))
        );
    };
  }

  listOracles(request) {
    if (Number(request.page_size) < 0) {
      throw invalidArgument([violation("page_size", "must not be negative", "range")]);
    }
    if (request.page_token && request.page_token.length > 1024) {
      throw invalidArgument([violation("page_token", "must be at most 1024 characters", "too_long")]);
    }
    if (request.page_token) {
      throw invalidArgument([violation("page_token", "is not a next_page_token of this listing", "invalid_page_token")], {
        reason: "INVALID_PAGE_TOKEN",
      });
    }
    return { oracles: [this.oracle.info()], next_page_token: "" };
  }

  getOracle(request) {
    return { oracle: this.lookup(request.name, "name").info() };
  }

  async verify(request, call) {
    const found = [];
    const n = request.candidates.length;
    if (n < 1) found.push(violation("candidates", "must hold at least 1 candidate", "too_few"));
    if (n > MAX_CANDIDATES) {
      found.push(violation("candidates", `must hold at most ${MAX_CANDIDATES} candidates`, "too_many"));
    }
    if (request.timeout && !(durationSeconds(request.timeout) > 0)) {
      found.push(violation("timeout", "must be > 0 when set", "range"));
    }
    if (found.length) throw invalidArgument(found);
    this.refuseWhileDraining();
    const oracle = this.lookup(request.oracle, "oracle");
    requireDna(request.dna, "dna", oracle.id);
    const decoded = decodeCandidates(request.candidates, "candidates");
    const release = this.lease(n);
    const abort = { aborted: false }; // the caller went away: stop judging its candidates
    if (call) call.on("cancelled", () => (abort.aborted = true));
    try {
      const verdicts = await oracle.verify(decoded, abort);
      if (verdicts === null) throw rpcError(grpc.status.CANCELLED, "the call was cancelled");
      return { verdicts };
    } finally {
      release();
    }
  }

  verifyStream(call) {
    if (this.draining) {
      call.emit("error", this.drainingError());
      return;
    }
    try {
      this.authorize(call, "verify");
    } catch (err) {
      call.emit("error", asStatus(err, "VerifyStream"));
      return;
    }
    const session = new StreamSession(this, call);
    this.sessions.add(session);
    session.start();
  }

  drainingError() {
    return rpcError(
      grpc.status.UNAVAILABLE,
      "this oracle agent is shutting down; the batches it held are answered: continue on " +
        "another agent",
      { reason: "ORACLE_DRAINING", retryAfter: 1 }
    );
  }

  // --- health -----------------------------------------------------------------------

  servingStatus(service) {
    if (service !== "" && service !== "helix.v1.OracleService") return null;
    return this.draining ? "NOT_SERVING" : "SERVING";
  }

  healthCheck(call, callback) {
    const status = this.servingStatus(call.request.service);
    if (status === null) {
      callback({ code: grpc.status.NOT_FOUND, details: `unknown service ${call.request.service}` });
    } else {
      callback(null, { status });
    }
  }

  healthWatch(call) {
    if (this.healthWatchers.size >= HEALTH_WATCHERS) {
      call.emit("error", { code: grpc.status.RESOURCE_EXHAUSTED, details: "too many watchers" });
      return;
    }
    const watcher = { call, service: call.request.service };
    this.healthWatchers.add(watcher);
    const forget = () => this.healthWatchers.delete(watcher);
    call.on("cancelled", forget);
    call.on("close", forget);
    call.on("error", forget);
    call.write({ status: this.servingStatus(watcher.service) || "SERVICE_UNKNOWN" });
  }

  announceHealth() {
    for (const watcher of this.healthWatchers) {
      const status = this.servingStatus(watcher.service);
      if (status !== null) watcher.call.write({ status });
      if (this.draining) watcher.call.end();
    }
    if (this.draining) this.healthWatchers.clear();
  }

  // --- life cycle -------------------------------------------------------------------

  async start() {
    const { proto } = protos();
    const server = new grpc.Server({
      "grpc.max_receive_message_length": 4 * 1024 * 1024,
      "grpc.keepalive_permit_without_calls": 1,
    });
    server.addService(proto.helix.v1.OracleService.service, {
      ListOracles: this.unary("ListOracles", "oracles.read", (r) => this.listOracles(r)),
      GetOracle: this.unary("GetOracle", "oracles.read", (r) => this.getOracle(r)),
      Verify: this.unary("Verify", "verify", (r, call) => this.verify(r, call)),
      VerifyStream: (call) => this.verifyStream(call),
    });
    server.addService(proto.grpc.health.v1.Health.service, {
      Check: (call, callback) => this.healthCheck(call, callback),
      Watch: (call) => this.healthWatch(call),
    });
    const port = await new Promise((resolve, reject) => {
      const where = `${this.config.host}:${this.config.port}`;
      server.bindAsync(where, grpc.ServerCredentials.createInsecure(), (err, bound) =>
        err ? reject(new UsageError(`cannot listen on ${where}: ${err.message}`)) : resolve(bound)
      );
    });
    this.server = server;
    this.address = `${this.config.host}:${port}`;
    process.stdout.write(`helix node oracle listening on ${this.address}\n`);
    if (!this.verifier) log("no --auth-hs256-dir: callers' tokens are not checked");
    if (this.config.registryAddress) await this.register();
    this.reportLoad();
    this.reporter = setInterval(() => this.reportLoad(), REPORT_EVERY_MS);
  }

  async register() {
    const config = this.config;
    const source = this.tokens;
    log(`registry calls carry ${source.what}`);
    const stub = client("RegistryService", config.registryAddress, { caFile: config.registryCa });
    this.registration = new Registration({
      stub,
      token: source.token,
      agentId: config.agentId,
      ttl: config.ttl,
      log,
      onFatal: (err) => this.onFatal(err),
      agent: {
        kind: "AGENT_KIND_ORACLE",
        endpoint: config.advertiseAddress || this.address,
        capacity: this.oracle.capacity,
        oracle: { oracles: [this.oracle.name] },
      },
    });
    await this.registration.start();
    process.stdout.write(`registered as ${this.registration.name}\n`);
  }

  /** The load the registry sees: candidates held, and the share of capacity (by 0.05). */
  reportLoad() {
    if (!this.registration) return;
    const held = this.oracle.held;
    const utilization = Math.round((held / this.oracle.capacity) * 20) / 20;
    this.registration.setLoad({ in_flight: held, utilization });
  }

  /** SIGTERM: NOT_SERVING, no new work, held batches answered (within the grace), then
   * deregistered and stopped. Resolves when it is safe to exit. */
  async drain() {
    if (this.draining) return;
    this.draining = true;
    log("draining: no new streams or credit; answering the batches held");
    clearInterval(this.reporter);
    this.announceHealth();
    if (this.registration) this.registration.setHealth("AGENT_HEALTH_NOT_SERVING");
    for (const session of this.sessions) session.maybeFinish();
    const giveUp = Date.now() + this.config.grace * 1000;
    while (this.sessions.size && Date.now() < giveUp) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    if (this.sessions.size) log(`${this.sessions.size} streams still held work after the grace`);
    await this.stopServing();
  }

  /** Deregister (if registered) and stop the server: calls still running get 2 s. */
  async stopServing() {
    clearInterval(this.reporter);
    if (this.registration) {
      await this.registration.stop();
      this.registration.stub.close();
    }
    const server = this.server;
    if (!server) return;
    await new Promise((resolve) => {
      const force = setTimeout(() => {
        server.forceShutdown();
        resolve();
      }, 2000);
      server.tryShutdown(() => {
        clearTimeout(force);
        resolve();
      });
    });
  }

  summary() {
    const o = this.oracle;
    return (
      `verified ${o.answered} candidates (${o.judged} judged, ${o.cache.hits} from cache) ` +
      `in ${o.batches} batches`
    );
  }
}

/** One VerifyStream after it was accepted: the protocol's seven steps (oracle.proto). */
class StreamSession {
  constructor(agent, call) {
    this.agent = agent;
    this.call = call;
    this.oracle = null;
    this.release = null; // gives the stream's window back
    this.allowance = 0;
    this.held = 0; // batches received and not answered
    this.seen = new BatchIds();
    this.opened = false;
    this.readingDone = false;
    this.ended = false;
    this.idleTimer = null;
    this.abort = { aborted: false }; // set when the stream ends: its batches stop being judged
  }

  start() {
    const call = this.call;
    call.on("data", (message) => this.take(message));
    call.on("end", () => {
      this.readingDone = true;
      if (!this.opened) {
        // Half-closed before `open`: a protocol error, as the Python service answers it.
        this.finish(
          invalidArgument([
            violation("open", "must be sent as the stream's first message", "required"),
          ])
        );
        return;
      }
      this.maybeFinish();
    });
    call.on("cancelled", () => this.close()); // the client went away: abandon the work
    call.on("error", () => this.close());
    call.on("close", () => this.close());
    this.armIdle(); // also bounds the wait for the first message
  }

  /** End the stream with `error` (null: OK) unless it has ended. */
  finish(error) {
    if (this.ended) return;
    this.close();
    if (error) this.call.emit("error", error);
    else this.call.end();
  }

  /** Stop everything the stream holds: its window, its idle timer, the judging of its
   * batches (they stop at their next yield); forget it. */
  close() {
    this.ended = true;
    this.abort.aborted = true;
    clearTimeout(this.idleTimer);
    if (this.release) this.release();
    this.agent.sessions.delete(this);
  }

  /** The idle timeout runs only while the stream holds no batch. */
  armIdle() {
    clearTimeout(this.idleTimer);
    if (this.held || this.ended) return;
    const seconds = this.agent.config.idleTimeout;
    this.idleTimer = setTimeout(() => {
      this.finish(
        rpcError(
          grpc.status.DEADLINE_EXCEEDED,
          `the stream held credit and sent no batch for ${seconds}s; open a new stream to go on`,
          { reason: "STREAM_IDLE" }
        )
      );
    }, seconds * 1000);
  }

  take(message) {
    if (this.ended) return;
    try {
      if (!this.opened) this.open(message);
      else this.batch(message);
    } catch (err) {
      this.finish(asStatus(err, "VerifyStream"));
    }
  }

  /** Step 1 and 2: the `open` message; the window granted as credit. */
  open(message) {
    if (message.kind !== "open") {
      throw invalidArgument([
        violation("open", "must be sent as the stream's first message", "required"),
      ]);
    }
    const open = message.open;
    if (open.timeout && !(durationSeconds(open.timeout) > 0)) {
      throw invalidArgument([violation("open.timeout", "must be > 0 when set", "range")]);
    }
    if (open.config_hash && !/^[0-9a-f]{64}$/.test(open.config_hash)) {
      throw invalidArgument([
        violation("open.config_hash", "must be 64 lowercase hex characters", "pattern"),
      ]);
    }
    const oracle = this.agent.lookup(open.oracle, "open.oracle");
    requireDna(open.dna, "open.dna", oracle.id);
    if (open.config_hash && open.config_hash !== oracle.configHash) {
      throw rpcError(
        grpc.status.FAILED_PRECONDITION,
        `${oracle.name} has config_hash ${oracle.configHash}, not the ${open.config_hash} the ` +
          "stream asks for",
        { reason: "CONFIG_HASH_MISMATCH", metadata: { config_hash: oracle.configHash } }
      );
    }
    this.agent.refuseWhileDraining();
    const share = Math.max(1, Math.floor(oracle.capacity * this.agent.config.share));
    const window = oracle.free ? Math.min(share, oracle.free) : share; // 0 free: ORACLE_BUSY
    this.release = this.agent.lease(window);
    this.oracle = oracle;
    this.opened = true;
    this.allowance = window;
    this.call.write({ credit: { candidates: window } });
    this.armIdle();
  }

  /** Step 3 and 4: a batch checked against the allowance and the ids seen, then verified. */
  batch(message) {
    if (message.kind !== "batch") {
      const field = message.kind === "open" ? "open" : "batch";
      const text = message.kind ? "must be sent only once, in the first message" : "must be set";
      throw invalidArgument([violation(field, text, "oneof")]);
    }
    const batch = message.batch;
    const n = batch.candidates.length;
    const found = [];
    if (batch.batch_id === "0") found.push(violation("batch.batch_id", "must be set (not 0)", "required"));
    if (n < 1) found.push(violation("batch.candidates", "must hold at least 1 candidate", "too_few"));
    if (n > MAX_CANDIDATES) {
      found.push(violation("batch.candidates", `must hold at most ${MAX_CANDIDATES} candidates`, "too_many"));
    }
    if (found.length) throw invalidArgument(found);
    const decoded = decodeCandidates(batch.candidates, "batch.candidates");
    if (n > this.allowance) {
      throw rpcError(
        grpc.status.RESOURCE_EXHAUSTED,
        `batch ${batch.batch_id} has ${n} candidates but the stream's allowance is ` +
          `${this.allowance}: send only as many as the credit granted`,
        {
          reason: "CREDIT_EXCEEDED",
          metadata: { allowance: String(this.allowance), batch_id: batch.batch_id },
        }
      );
    }
    if (!this.seen.add(BigInt(batch.batch_id))) {
      throw invalidArgument(
        [violation("batch.batch_id", "must be unique within the stream", "reused")],
        { message: `batch_id ${batch.batch_id} was already sent on this stream` }
      );
    }
    this.allowance -= n;
    this.held += 1;
    clearTimeout(this.idleTimer);
    this.oracle.verify(decoded, this.abort).then(
      (verdicts) => {
        if (verdicts === null) {
          log(`a VerifyStream ended: batch ${batch.batch_id} stopped being judged`);
          return;
        }
        this.answer(batch.batch_id, n, verdicts);
      },
      (err) => this.finish(internal(err, "verifying a batch"))
    );
  }

  /** Step 4 and 5: the verdicts sent; their candidates granted again once written. */
  answer(batchId, n, verdicts) {
    if (this.ended) return;
    this.held -= 1;
    this.call.write({ verdicts: { batch_id: batchId, verdicts } }, (err) => {
      if (!err) this.grant(n);
    });
    this.maybeFinish();
    this.armIdle();
  }

  grant(n) {
    if (this.ended || this.readingDone || this.agent.draining) return;
    this.allowance += n;
    this.call.write({ credit: { candidates: n } });
  }

  /** Steps 6 and 7: once nothing is held, a half-closed stream ends OK, a draining agent's
   * with UNAVAILABLE (ORACLE_DRAINING). */
  maybeFinish() {
    if (this.held || this.ended) return;
    if (this.agent.draining) this.finish(this.agent.drainingError());
    else if (this.readingDone) this.finish(null);
  }
}

async function main() {
  let config;
  try {
    config = settings(process.argv.slice(2));
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`oracle_agent.js: ${err.message}\n(--help shows the options)\n`);
    return 2;
  }
  if (config.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  let agent;
  try {
    agent = new Agent(config);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`oracle_agent.js: ${err.message}\n`);
    return 2;
  }
  // The first SIGTERM or SIGINT starts the drain; later ones are ignored while it runs.
  const signalled = new Promise((resolve) => {
    process.once("SIGTERM", () => resolve("SIGTERM"));
    process.once("SIGINT", () => resolve("SIGINT"));
  });
  process.on("SIGTERM", () => {});
  process.on("SIGINT", () => {});
  try {
    await agent.start();
  } catch (err) {
    const text = err instanceof UsageError ? err.message : describeError(err);
    process.stderr.write(`oracle_agent.js: cannot start: ${text}\n`);
    await agent.stopServing();
    return 1;
  }
  const refused = agent.fatal.then((err) => ({ err }));
  const why = await Promise.race([signalled, refused]);
  if (typeof why === "string") {
    log(`${why}: stopping`);
    await agent.drain();
    process.stdout.write(`${agent.summary()}\n`);
    return 0;
  }
  // The registry refused the token: serving unregistered helps no one. Answer what is held,
  // then exit non-zero so a supervisor notices.
  process.stderr.write(
    `oracle_agent.js: the registry refused the agent's token: ${describeError(why.err).split("\n")[0]}\n`
  );
  await agent.drain();
  process.stdout.write(`${agent.summary()}\n`);
  return 1;
}

// A bug must not leave a half-working agent: report it and exit non-zero.
process.on("unhandledRejection", (reason) => {
  log(`unhandled rejection: ${reason && reason.stack ? reason.stack : reason}`);
  process.exit(70);
});

// Exit once main is done (an open client channel must not keep the process alive).
main().then(
  (code) => process.exit(code),
  (err) => {
    log(`failed: ${err && err.stack ? err.stack : err}`);
    process.exit(70);
  }
);
