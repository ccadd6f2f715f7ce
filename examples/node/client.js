#!/usr/bin/env node
// A Helix client in Node.js: lists the agents (RegistryService) and the DNAs
// (GeneratorService), creates a run (OrchestratorService.CreateRun), watches it to the end
// (WatchRun) printing its progress, and prints the best candidate: its id, score and genes.
//
//   HELIX_TOKEN=$(helix token mint --sub me --scope agents.read --scope dna.read \
//       --scope oracles.read --scope runs.read --scope runs.write --data-dir DATA_DIR) \
//   node client.js --address 127.0.0.1:50051 --dna dnas/knapsack --oracle knapsack-node \
//       --budget 2000 --seed 7
//
// Exit status: 0 the run SUCCEEDED; 1 it FAILED or was CANCELLED, or a call failed (the
// error is printed with its google.rpc.Status details); 2 a usage error (a bad flag).
"use strict";

const crypto = require("node:crypto");

const grpc = require("@grpc/grpc-js");

const {
  DEFAULT_ADDRESS,
  UsageError,
  authMetadata,
  client,
  codeName,
  describeError,
  integerFlag,
  namedGenes,
  parseFlags,
  secondsFlag,
  unary,
} = require("./lib/helix");

const USAGE = `usage: node client.js [options]

Lists agents and DNAs, runs DNA against ORACLE and watches the run to its end. The calls
carry HELIX_TOKEN (or the file HELIX_TOKEN_FILE names) as a bearer token; it needs the scopes
agents.read, dna.read, oracles.read, runs.read and runs.write.

  --address HOST:PORT     the suite (env HELIX_ADDRESS) [${DEFAULT_ADDRESS}]
  --dna NAME              dnas/NAME or NAME, from the generators' library [dnas/knapsack]
  --oracle NAME           oracles/NAME or NAME [oracles/knapsack-node]
  --budget N              max evaluations [2000 when no --generations]
  --generations N         max generations (generation 0 counts)
  --seed N                the seed, 0..2^64-1 [drawn by the server]
  --target X              stop once the best score reaches X
  --objective O           maximize, minimize, or auto: the oracle's own [auto]
  --run-id ID             the run's id [assigned by the server]
  --timeout S             deadline of each call, in seconds [10]
  --watch-timeout S       deadline of watching the run, in seconds [3600]
  --list-only             list agents and DNAs, create no run
  --json                  end with one JSON line: the run's outcome
  --tls-ca FILE           CA bundle to verify the server (enables TLS)
  -h, --help              this help`;

const FLAG_SPEC = {
  address: { type: "string" },
  dna: { type: "string", default: "dnas/knapsack" },
  oracle: { type: "string", default: "oracles/knapsack-node" },
  budget: { type: "string" },
  generations: { type: "string" },
  seed: { type: "string" },
  target: { type: "string" },
  objective: { type: "string", default: "auto" },
  "run-id": { type: "string", default: "" },
  timeout: { type: "string" },
  "watch-timeout": { type: "string" },
  "list-only": { type: "boolean", default: false },
  json: { type: "boolean", default: false },
  "tls-ca": { type: "string", default: "" },
  help: { type: "boolean", short: "h", default: false },
};

const UINT64_MAX = 2n ** 64n - 1n;
const UINT32_MAX = 2n ** 32n - 1n;
const WATCH_RETRIES = 5;
const STATE = (s) => s.replace(/^RUN_STATE_/, "");
const REASON = (s) => s.replace(/^RUN_STOP_REASON_/, "");

/** The options from the command line; UsageError names a bad one. Only the type of each
 * value is checked here (a number where one is needed): ranges and names are the
 * server's to check, and its errors name the field. */
function options(argv) {
  const flags = parseFlags(argv, FLAG_SPEC);
  if (flags.help) return { help: true };
  const objectives = {
    auto: "",
    maximize: "OBJECTIVE_MAXIMIZE",
    minimize: "OBJECTIVE_MINIMIZE",
  };
  if (!(flags.objective in objectives)) {
    throw new UsageError(`--objective: must be auto, maximize or minimize, not ${JSON.stringify(flags.objective)}`);
  }
  let target;
  if (flags.target !== undefined) {
    target = Number(flags.target);
    if (flags.target.trim() === "" || !Number.isFinite(target)) {
      throw new UsageError(`--target: ${JSON.stringify(flags.target)} is not a finite number`);
    }
  }
  let budget = integerFlag("budget", flags.budget, 0n, UINT64_MAX);
  const generations = integerFlag("generations", flags.generations, 0n, UINT32_MAX);
  if (budget === undefined && generations === undefined) budget = 2000n;
  return {
    address: flags.address || process.env.HELIX_ADDRESS || DEFAULT_ADDRESS,
    dna: flags.dna.startsWith("dnas/") ? flags.dna : `dnas/${flags.dna}`,
    oracle: flags.oracle.startsWith("oracles/") ? flags.oracle : `oracles/${flags.oracle}`,
    budget,
    generations,
    seed: integerFlag("seed", flags.seed, 0n, UINT64_MAX),
    target,
    objective: objectives[flags.objective],
    runId: flags["run-id"],
    timeout: secondsFlag("timeout", flags.timeout, 10),
    watchTimeout: secondsFlag("watch-timeout", flags["watch-timeout"], 3600),
    listOnly: flags["list-only"],
    json: flags.json,
    tlsCa: flags["tls-ca"],
  };
}

/** A failed call, with what the client was doing; printed with the decoded status. */
class CallFailed extends Error {
  constructor(what, error) {
    super(`${what} failed`);
    this.what = what;
    this.error = error;
  }
}

class Client {
  constructor(opts) {
    this.opts = opts;
    const token = (process.env.HELIX_TOKEN || "").trim();
    if (!token) {
      process.stderr.write(
        "client.js: no HELIX_TOKEN set: calling without a token (the server will refuse)\n"
      );
    }
    this.metadata = authMetadata(token);
    const connect = { caFile: opts.tlsCa };
    this.registry = client("RegistryService", opts.address, connect);
    this.generator = client("GeneratorService", opts.address, connect);
    this.orchestrator = client("OrchestratorService", opts.address, connect);
    this.oracles = client("OracleService", opts.address, connect);
    this.stubs = [this.registry, this.generator, this.orchestrator, this.oracles];
    this.watch = null;
  }

  close() {
    if (this.watch) this.watch.cancel();
    for (const stub of this.stubs) stub.close();
  }

  /** A unary call with the token and the per-call deadline; CallFailed names `what`. */
  async call(stub, method, request, what) {
    try {
      return await unary(stub, method, request, {
        metadata: this.metadata,
        timeout: this.opts.timeout,
      });
    } catch (err) {
      const failed = new CallFailed(what, err);
      failed.address = this.opts.address;
      throw failed;
    }
  }

  /** Every page of a List call: the concatenated `field` of the responses. */
  async listAll(stub, method, field, what) {
    const found = [];
    let pageToken = "";
    do {
      const page = await this.call(stub, method, { page_size: 1000, page_token: pageToken }, what);
      found.push(...page[field]);
      pageToken = page.next_page_token;
    } while (pageToken);
    return found;
  }

  async listAgents() {
    const agents = await this.listAll(this.registry, "ListAgents", "agents", "listing agents");
    console.log(`agents (${agents.length}):`);
    for (const agent of agents) {
      const kind = agent.kind.replace(/^AGENT_KIND_/, "").toLowerCase();
      const health = agent.health.replace(/^AGENT_HEALTH_/, "").toLowerCase();
      const hosts = agent.oracle ? agent.oracle.oracles.join(",") : "";
      const load = agent.load ? ` load ${agent.load.in_flight}/${agent.capacity}` : "";
      console.log(`  ${agent.name}  ${kind}  ${agent.endpoint}  ${health}${load}${hosts ? `  ${hosts}` : ""}`);
    }
    return agents;
  }

  async listDnas() {
    const dnas = await this.listAll(this.generator, "ListDnas", "dnas", "listing DNAs");
    console.log(`dnas (${dnas.length}):`);
    for (const doc of dnas) {
      const genes = doc.dna ? doc.dna.genes.length : 0;
      const state = doc.valid ? `${genes} genes` : `invalid (${doc.violations.length} problems)`;
      console.log(`  ${doc.name}  ${state}  ${doc.source}`);
    }
    return dnas;
  }

  /** The objective to run with: --objective, else the oracle's own, asked of the suite at
   * --address (as `helix run` does) and of no other endpoint: the user's token goes only
   * where the user sent it, never to whatever endpoint an agent registered. "" when the
   * suite cannot say (CreateRun is then left to name the problem). */
  async objective() {
    if (this.opts.objective) return this.opts.objective;
    try {
      const found = await unary(this.oracles, "GetOracle", { name: this.opts.oracle }, {
        metadata: this.metadata,
        timeout: this.opts.timeout,
      });
      if (found.oracle.objective !== "OBJECTIVE_UNSPECIFIED") return found.oracle.objective;
    } catch (err) {
      process.stderr.write(
        `client.js: asking ${this.opts.address} for the objective of ${this.opts.oracle} ` +
          `failed: ${describeError(err).split("\n")[0]} (say --objective to choose)\n`
      );
    }
    return "";
  }

  async createRun(objective) {
    const o = this.opts;
    const budget = {};
    if (o.budget !== undefined) budget.max_evaluations = String(o.budget);
    if (o.generations !== undefined) budget.max_generations = Number(o.generations);
    const run = {
      dna_name: o.dna,
      oracle: o.oracle,
      // Unknown (no agent answered): MINIMIZE is sent and the server's checks of the oracle
      // and DNA say what is wrong; say --objective to choose.
      objective: objective || "OBJECTIVE_MINIMIZE",
      budget,
    };
    if (o.seed !== undefined) run.seed = String(o.seed);
    if (o.target !== undefined) run.target_score = o.target;
    const request = { run, run_id: o.runId, request_id: crypto.randomUUID() };
    const created = await this.call(this.orchestrator, "CreateRun", request, "creating the run");
    const r = created.run;
    console.log(
      `created ${r.name}: ${r.dna_name} on ${r.oracle}, ${r.objective.replace(/^OBJECTIVE_/, "").toLowerCase()}, ` +
        `seed ${r.seed}`
    );
    return r;
  }

  /** Watch the run to its terminal event, printing each event; resumes a broken stream from
   * the last sequence received (a few times). Returns the terminal state. A terminal event
   * once received is kept: a watch that breaks right after it ends the watching there (the
   * run is over), it is not retried into a failure. */
  async watchRun(name) {
    const giveUp = Date.now() + this.opts.watchTimeout * 1000;
    let after = "0";
    let failures = 0;
    let terminal = "";
    for (;;) {
      try {
        await this.watchOnce(name, after, giveUp, (sequence, state) => {
          after = sequence;
          failures = 0;
          if (state) terminal = state;
        });
        if (terminal) return terminal;
        throw new CallFailed("watching the run", {
          code: grpc.status.UNAVAILABLE,
          message: "the watch ended before the run did",
        });
      } catch (err) {
        if (terminal) return terminal; // the run ended; only the stream after it broke
        const code = err.error ? err.error.code : undefined;
        const retry = code === grpc.status.UNAVAILABLE || code === grpc.status.RESOURCE_EXHAUSTED;
        if (!retry || ++failures > WATCH_RETRIES || Date.now() >= giveUp) throw err;
        const delay = 200 * 2 ** failures;
        process.stderr.write(
          `client.js: the watch broke (${codeName(code)}); resuming after event ${after} in ${delay}ms\n`
        );
        await new Promise((resolve) => setTimeout(resolve, delay));
      }
    }
  }

  watchOnce(name, after, giveUp, seen) {
    return new Promise((resolve, reject) => {
      const call = this.orchestrator.WatchRun({ name, after_sequence: after }, this.metadata, {
        deadline: new Date(giveUp),
      });
      this.watch = call;
      call.on("data", (response) => {
        const event = response.event;
        seen(event.sequence, printEvent(event));
      });
      call.on("error", (err) => {
        this.watch = null;
        const failed = new CallFailed("watching the run", err);
        failed.address = this.opts.address;
        reject(failed);
      });
      call.on("end", () => {
        this.watch = null;
        resolve();
      });
    });
  }

  async cancel(name) {
    await this.call(this.orchestrator, "CancelRun", { name, etag: "" }, "cancelling the run");
    console.log(`cancelled ${name}`);
  }

  /** The run's outcome, printed; with --json also as one JSON line. */
  async report(name) {
    const { run } = await this.call(this.orchestrator, "GetRun", { name }, "reading the run");
    const p = run.progress;
    const reason = run.stop_reason !== "RUN_STOP_REASON_UNSPECIFIED" ? ` (${REASON(run.stop_reason)})` : "";
    console.log(`run ${run.name} ${STATE(run.state)}${reason}${run.error ? `: ${run.error}` : ""}`);
    console.log(
      `  generations ${p.generation}, evaluations ${p.evaluations}, duplicates ${p.duplicates}, ` +
        `cache hits ${p.cache_hits}, failed ${p.failed}, errors ${p.errors}`
    );
    const outcome = {
      run: run.name,
      state: STATE(run.state),
      stop_reason: REASON(run.stop_reason),
      generation: p.generation,
      evaluations: Number(p.evaluations),
      duplicates: Number(p.duplicates),
      failed: Number(p.failed),
      errors: Number(p.errors),
      cache_hits: Number(p.cache_hits),
      oracle_config_hash: run.oracle_config_hash,
      best_id: null,
      best_score: null,
      best_genes: null,
    };
    if (p.best && p.best.candidate) {
      const best = p.best;
      outcome.best_id = best.candidate.id;
      outcome.best_score = best.verdict ? best.verdict.score : null;
      outcome.best_genes = await this.genes(run, best.candidate.genome);
      console.log(`best candidate ${outcome.best_id}`);
      console.log(`  score ${outcome.best_score}`);
      if (best.verdict && Object.keys(best.verdict.metrics).length) {
        const metrics = Object.entries(best.verdict.metrics)
          .sort(([a], [b]) => (a < b ? -1 : 1))
          .map(([k, v]) => `${k}=${v}`);
        console.log(`  metrics ${metrics.join(" ")}`);
      }
      if (best.verdict && best.verdict.message) console.log(`  message ${best.verdict.message}`);
      console.log(`  genes ${JSON.stringify(outcome.best_genes)}`);
    } else {
      console.log("no candidate was scored");
    }
    if (this.opts.json) console.log(JSON.stringify(outcome));
    return run.state;
  }

  /** The named genes of a genome: the run's DNA read back from the generator's library. */
  async genes(run, genome) {
    let dna = run.dna;
    if (run.dna_source === "dna_name" || (!dna && run.dna_name)) {
      const found = await this.call(this.generator, "GetDna", { name: run.dna_name }, "reading the DNA");
      dna = found.dna.dna;
    }
    try {
      return namedGenes(dna, genome);
    } catch (err) {
      return { undecodable: err.message };
    }
  }
}

/** Print one run event as a progress line; returns the state when it is terminal. */
function printEvent(event) {
  switch (event.kind) {
    case "state_changed": {
      const c = event.state_changed;
      const state = STATE(c.state);
      let line = `state ${state}`;
      if (c.stop_reason !== "RUN_STOP_REASON_UNSPECIFIED") line += ` (${REASON(c.stop_reason)})`;
      if (c.error) line += `: ${c.error}`;
      if (c.message) line += `: ${c.message}`;
      console.log(line);
      return ["SUCCEEDED", "FAILED", "CANCELLED"].includes(state) ? state : "";
    }
    case "generation_completed": {
      const g = event.generation_completed;
      const parts = [`generation ${g.generation}: evaluations ${g.evaluations}`];
      if (g.best_score !== null && g.best_score !== undefined) parts.push(`best ${g.best_score}`);
      if (g.generation_best_score !== null && g.generation_best_score !== undefined) {
        parts.push(`generation best ${g.generation_best_score}`);
      }
      if (g.mean_score !== null && g.mean_score !== undefined) {
        parts.push(`mean ${Number(g.mean_score.toFixed(3))}`);
      }
      parts.push(`scored ${g.scored}`, `failed ${g.failed}`, `duplicates ${g.duplicates}`);
      console.log(parts.join(", "));
      return "";
    }
    case "new_best": {
      const best = event.new_best.best;
      const score = best.verdict ? best.verdict.score : "?";
      console.log(`new best ${score} (candidate ${best.candidate.id})`);
      return "";
    }
    default:
      return "";
  }
}

/** What to print for a failure: the decoded status, and a hint for a missing token. */
function explain(err) {
  if (err instanceof CallFailed) {
    const text = describeError(err.error);
    let hint = "";
    if (err.error.code === grpc.status.UNAUTHENTICATED) {
      hint =
        "\nhint: set HELIX_TOKEN to a valid token, e.g. HELIX_TOKEN=$(helix token mint --sub me " +
        "--scope agents.read --scope dna.read --scope oracles.read --scope runs.read " +
        "--scope runs.write --data-dir DATA_DIR)";
    } else if (err.error.code === grpc.status.UNAVAILABLE) {
      hint = `\nhint: is a Helix suite serving at ${err.address}? (helix up, make serve)`;
    } else if (err.error.code === grpc.status.PERMISSION_DENIED) {
      hint = "\nhint: the token lacks a scope this call needs (see the reason above)";
    }
    return `client.js: ${err.what} failed: ${text}${hint}`;
  }
  return `client.js: ${err && err.message ? err.message : err}`;
}

async function main() {
  let opts;
  try {
    opts = options(process.argv.slice(2));
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`client.js: ${err.message}\n(--help shows the options)\n`);
    return 2;
  }
  if (opts.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const helix = new Client(opts);
  let runName = "";
  let interrupted = false;
  // Ctrl-C while the run goes: cancel it (CancelRun) rather than leave it running.
  process.on("SIGINT", () => {
    if (interrupted) process.exit(130);
    interrupted = true;
    if (!runName) process.exit(130);
    process.stderr.write(`client.js: interrupted: cancelling ${runName}\n`);
    helix.cancel(runName).then(
      () => process.exit(130),
      (err) => {
        process.stderr.write(`${explain(err)}\n`);
        process.exit(130);
      }
    );
  });
  try {
    await helix.listAgents();
    await helix.listDnas();
    if (opts.listOnly) return 0;
    const objective = await helix.objective();
    const run = await helix.createRun(objective);
    runName = run.name;
    await helix.watchRun(run.name);
    const state = await helix.report(run.name);
    return state === "RUN_STATE_SUCCEEDED" ? 0 : 1;
  } catch (err) {
    process.stderr.write(`${explain(err)}\n`);
    return 1;
  } finally {
    helix.close();
  }
}

// Any failure ends here as a readable line and a non-zero status, never an unhandled one.
process.on("unhandledRejection", (reason) => {
  process.stderr.write(`client.js: unexpected failure: ${reason && reason.message ? reason.message : reason}\n`);
  process.exit(70);
});

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`client.js: unexpected failure: ${err && err.message ? err.message : err}\n`);
    process.exit(70);
  }
);
