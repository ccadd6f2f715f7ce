// An agent's own registration in the Helix registry, kept alive while the agent runs: the
// RegistryService protocol of registry.proto, as services/helix/agents/registration.py
// follows it.
//
// - start(): RegisterAgent with a fresh request_id, retried with that same id (idempotent)
//   while the registry is unreachable, up to a deadline;
// - heartbeats every ttl/3 of the TTL granted (with jitter), carrying the health and load
//   when they changed; a health change is sent at once. A heartbeat answered NOT_FOUND (the
//   lease lapsed) registers again (a new epoch); FAILED_PRECONDITION EPOCH_MISMATCH (another
//   process registered the same id) stops heartbeats for good; UNAUTHENTICATED or
//   PERMISSION_DENIED (the token expired or lacks a scope) is fatal: `onFatal` is called
//   once and heartbeats stop, rather than retrying for ever while the lease lapses;
// - stop(): DeregisterAgent with the last etag known, so it never removes a newer
//   registration of the name; ABORTED (the etag moved) re-reads the agent and removes it only
//   if it is still this registration (same epoch); NOT_FOUND counts as done.
"use strict";

const crypto = require("node:crypto");

const grpc = require("@grpc/grpc-js");

const { authMetadata, describeError, durationSeconds, errorReason, unary } = require("./helix");

const TRANSIENT = new Set([
  grpc.status.UNAVAILABLE,
  grpc.status.DEADLINE_EXCEEDED,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.ABORTED,
]);
// The token was refused: retrying with the same credentials cannot help.
const FATAL = new Set([grpc.status.UNAUTHENTICATED, grpc.status.PERMISSION_DENIED]);
const CALL_TIMEOUT = 10; // seconds: register, deregister, get
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class Registration {
  /**
   * `stub`: a RegistryService client; `token`: a function giving the bearer token of each
   * call (scopes agents.write and agents.read; asked at every call, so a renewed token is
   * used); `agent`: the Agent to register (kind, endpoint, capacity, details); `agentId`:
   * the id to register under (empty: the registry picks one, kept for re-registrations);
   * `ttl`: the lease asked for in seconds (0: the registry's default); `log`: a function
   * taking one line; `onFatal`: called once with the error when the registry refuses the
   * token of a heartbeat or re-registration.
   */
  constructor({ stub, token, agent, agentId = "", ttl = 0, log = () => {}, onFatal = () => {} }) {
    this.stub = stub;
    this.token = token;
    this.onFatal = onFatal;
    this.failed = null; // the error that made the registration fatal
    this.spec = agent;
    this.agentId = agentId;
    this.ttlAsked = ttl;
    this.log = log;
    this.agent = null; // as registered: name, epoch, etag
    this.ttl = 10;
    this.health = "AGENT_HEALTH_SERVING";
    this.load = { in_flight: 0, queued: 0, utilization: 0 };
    this.reported = { health: this.health, load: { ...this.load } };
    this.timer = null;
    this.beating = null; // the heartbeat call in progress
    this.stopped = false;
    this.superseded = false;
    this.heartbeats = 0;
  }

  /** Metadata with the token of now (minted, re-read or fixed: see auth.js tokenSource). */
  get metadata() {
    return authMetadata(this.token());
  }

  get name() {
    return this.agent ? this.agent.name : "";
  }

  /** Register, retrying transient failures with the same request_id for up to `within` s. */
  async start(within = 30) {
    await this.register(within);
    this.schedule(this.interval());
  }

  async register(within) {
    const request = {
      agent_id: this.agentId,
      agent: { ...this.spec, health: this.health, load: { ...this.load } },
      request_id: crypto.randomUUID(),
    };
    if (this.ttlAsked > 0) {
      const seconds = Math.floor(this.ttlAsked);
      request.agent.ttl = { seconds, nanos: Math.round((this.ttlAsked - seconds) * 1e9) };
    }
    const giveUp = Date.now() + within * 1000;
    let delay = 100;
    for (;;) {
      try {
        const response = await unary(this.stub, "RegisterAgent", request, {
          metadata: this.metadata,
          timeout: CALL_TIMEOUT,
        });
        this.agent = response.agent;
        this.agentId = this.agent.name.replace(/^agents\//, "");
        this.ttl = durationSeconds(this.agent.ttl) || this.ttl;
        this.reported = { health: request.agent.health, load: { ...request.agent.load } };
        this.log(`registered as ${this.agent.name} (epoch ${this.agent.epoch}, ttl ${this.ttl}s)`);
        return;
      } catch (err) {
        if (!TRANSIENT.has(err.code) || Date.now() + delay > giveUp || this.stopped) throw err;
        this.log(`registering failed, retrying in ${delay}ms: ${describeError(err).split("\n")[0]}`);
        await sleep(delay);
        delay = Math.min(delay * 2, 5000);
      }
    }
  }

  interval() {
    return (this.ttl / 3) * (0.9 + 0.2 * Math.random()) * 1000;
  }

  schedule(ms) {
    if (this.stopped || this.superseded || this.failed) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.beating = this.beat().finally(() => {
        this.beating = null;
      });
    }, ms);
  }

  /** Report a new health ("AGENT_HEALTH_NOT_SERVING", ...): sent at once. */
  setHealth(health) {
    if (health === this.health) return;
    this.health = health;
    if (this.agent && !this.beating) this.schedule(0);
  }

  /** Report a new load ({in_flight, utilization}): sent with the next heartbeat. */
  setLoad(load) {
    this.load = { in_flight: 0, queued: 0, utilization: 0, ...load };
  }

  /** One heartbeat; never throws (failures are logged and retried sooner). */
  async beat() {
    const request = { name: this.agent.name, epoch: this.agent.epoch };
    const health = this.health;
    const load = { ...this.load };
    if (health !== this.reported.health) request.health = health;
    if (JSON.stringify(load) !== JSON.stringify(this.reported.load)) request.load = load;
    const timeout = Math.max(0.1, Math.min(CALL_TIMEOUT, this.ttl * 0.5));
    try {
      const response = await unary(this.stub, "Heartbeat", request, {
        metadata: this.metadata,
        timeout,
      });
      this.heartbeats += 1;
      this.ttl = durationSeconds(response.ttl) || this.ttl;
      this.reported = { health, load };
      if (response.etag) this.agent.etag = response.etag;
      // Changed meanwhile (a drain began): report it now rather than a beat later.
      this.schedule(health !== this.health ? 0 : this.interval());
    } catch (err) {
      if (this.stopped) return;
      if (FATAL.has(err.code)) {
        this.fail(err, "a heartbeat");
      } else if (err.code === grpc.status.NOT_FOUND) {
        this.log(`${this.agent.name} lost its registration, registering again`);
        try {
          await this.register(this.ttl);
        } catch (again) {
          if (FATAL.has(again.code)) {
            this.fail(again, "registering again");
            return;
          }
          this.log(`registering again failed: ${describeError(again).split("\n")[0]}`);
        }
        this.schedule(this.interval());
      } else if (
        err.code === grpc.status.FAILED_PRECONDITION &&
        errorReason(err) === "EPOCH_MISMATCH"
      ) {
        this.superseded = true;
        this.log(`${this.agent.name} was registered again by another process; heartbeats stop`);
      } else {
        this.log(`heartbeat failed, retrying: ${describeError(err).split("\n")[0]}`);
        this.schedule(Math.min(1000, this.interval()));
      }
    }
  }

  /** The registry refused the token (`err`) during `what`: heartbeats stop, onFatal is told. */
  fail(err, what) {
    if (this.failed) return;
    this.failed = err;
    clearTimeout(this.timer);
    this.log(
      `the registry refused the agent's token on ${what}: ${describeError(err).split("\n")[0]}` +
        " — the registration cannot be kept (an expired HELIX_TOKEN? use --auth-hs256-dir or " +
        "HELIX_TOKEN_FILE, which are renewed)"
    );
    this.onFatal(err);
  }

  /** Stop heartbeating and deregister (unless superseded, or the token was refused); never
   * throws. */
  async stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.beating) await this.beating;
    if (!this.agent || this.superseded || this.failed) return;
    try {
      await this.deregister(this.agent.etag);
    } catch (err) {
      if (err.code === grpc.status.ABORTED) {
        await this.deregisterIfCurrent();
      } else {
        this.log(`deregistering failed (the lease will expire): ${describeError(err).split("\n")[0]}`);
        return;
      }
    }
    this.log(`deregistered ${this.agent.name}`);
  }

  async deregister(etag) {
    try {
      await unary(
        this.stub,
        "DeregisterAgent",
        { name: this.agent.name, etag },
        { metadata: this.metadata, timeout: CALL_TIMEOUT }
      );
    } catch (err) {
      if (err.code !== grpc.status.NOT_FOUND) throw err; // already gone: done
    }
  }

  async deregisterIfCurrent() {
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const found = await unary(
          this.stub,
          "GetAgent",
          { name: this.agent.name },
          { metadata: this.metadata, timeout: CALL_TIMEOUT }
        );
        if (found.agent.epoch !== this.agent.epoch) return; // a newer registration: not ours
        await this.deregister(found.agent.etag);
        return;
      } catch (err) {
        if (err.code === grpc.status.NOT_FOUND) return;
        if (err.code !== grpc.status.ABORTED) {
          this.log(`cannot deregister ${this.agent.name}: ${describeError(err).split("\n")[0]}`);
          return;
        }
      }
    }
  }
}

module.exports = { Registration };
