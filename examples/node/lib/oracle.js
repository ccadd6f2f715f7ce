// The oracle the Node agent hosts: the ten-item knapsack of examples/oracles/node_worker.js,
// judged in-process by that file's own `judge`, with the checks and the verdicts of a Python
// command oracle running the same worker (services/helix/oracle/command.py):
//
// - the DNA must have the one gene the worker reads: `take`, bits of size 10 (else
//   INVALID_ARGUMENT, reason DNA_SHAPE, naming the field);
// - each genome must fit it (only `bits`, 2 bytes, no bit set past the tenth) and each
//   non-empty candidate id must be the genome's content hash (else INVALID_ARGUMENT naming
//   `candidates[i]...`);
// - the worker's answer becomes a Verdict by the rules of command.py's parse_verdict_line
//   (status, score, metrics, message), so verdicts are field for field those of the Python
//   agent hosting `knapsack-node`;
// - verdicts are cached (bounded, least recently used first out): a duplicate is never
//   judged twice, and a cached verdict says so (`cached`).
"use strict";

const path = require("node:path");

const { UsageError, genomeId, invalidArgument, violation } = require("./helix");

// The worker whose `judge` this agent runs (override: HELIX_NODE_WORKER=/path/to/worker.js).
const WORKER =
  process.env.HELIX_NODE_WORKER ||
  path.resolve(__dirname, "..", "..", "oracles", "node_worker.js");

const GENE = "take";
const FLAGS = 10; // the worker's ten items: one flag each
const BYTES = Math.ceil(FLAGS / 8); // 2

let judge = null; // the worker's judge(request), once loadWorker() ran

/** Load the worker's `judge` (once); UsageError naming the file when it cannot be loaded or
 * is not a ten-item knapsack worker (exports judge and WEIGHTS of length 10). */
function loadWorker(file = WORKER) {
  if (judge) return judge;
  let worker;
  try {
    worker = require(file);
  } catch (err) {
    const why = err.code === "MODULE_NOT_FOUND" ? "no such module" : String(err.message).split("\n")[0];
    throw new UsageError(`the worker ${file} (HELIX_NODE_WORKER) cannot be loaded: ${why}`);
  }
  if (!worker || typeof worker.judge !== "function") {
    throw new UsageError(`the worker ${file} (HELIX_NODE_WORKER) exports no judge function`);
  }
  if (!Array.isArray(worker.WEIGHTS) || worker.WEIGHTS.length !== FLAGS) {
    throw new UsageError(`the worker ${file} (HELIX_NODE_WORKER) must export WEIGHTS of ${FLAGS} items`);
  }
  judge = worker.judge;
  return judge;
}
const MAX_MESSAGE_CHARS = 1024;
const MAX_METRICS = 64;
const METRIC_KEY = /^[a-z_][a-z0-9_.]{0,63}$/;
const VERDICT_KEYS = new Set(["id", "status", "score", "metrics", "message"]);
const STATUSES = {
  passed: "VERDICT_STATUS_PASSED",
  failed: "VERDICT_STATUS_FAILED",
  error: "VERDICT_STATUS_ERROR",
};
const OTHER_GENOME_FIELDS = [
  "reals",
  "integers",
  "choices",
  "permutations",
  "sequence_lengths",
  "sequences",
];
// Judging yields to the event loop after CHUNK candidates or SLICE_MS milliseconds, whichever
// comes first: streams, heartbeats and signals are served during a long batch however slow
// the worker is, and a batch whose stream ended stops at its next yield.
const CHUNK = 256;
const SLICE_MS = 20;

/** Violations of a DNA that does not have the worker's layout (empty when it fits). */
function checkDna(dna, where) {
  if (!dna) return [violation(where, "must be set: the layout of the candidates", "required")];
  const genes = dna.genes || [];
  const expected = `one gene, "${GENE}": bits of size ${FLAGS}`;
  if (genes.length !== 1) {
    return [violation(`${where}.genes`, `must be ${expected}; got ${genes.length}`, "dna_shape")];
  }
  const gene = genes[0];
  const found = [];
  if (gene.name !== GENE) {
    found.push(
      violation(
        `${where}.genes[0].name`,
        `must be "${GENE}" (the worker reads genome.${GENE}), got ${JSON.stringify(gene.name)}`,
        "dna_shape"
      )
    );
  }
  if (gene.kind !== "bits") {
    found.push(
      violation(`${where}.genes[0]`, `must be a bits gene, not ${gene.kind}`, "dna_shape")
    );
  } else if (Number(gene.bits.size) !== FLAGS) {
    found.push(
      violation(
        `${where}.genes[0].bits.size`,
        `must be ${FLAGS} (one flag per item), got ${gene.bits.size}`,
        "dna_shape"
      )
    );
  }
  return found;
}

/** INVALID_ARGUMENT (DNA_SHAPE) when the DNA does not fit, else nothing. */
function requireDna(dna, where, oracleId) {
  const found = checkDna(dna, where);
  if (found.length) {
    throw invalidArgument(found, {
      reason: "DNA_SHAPE",
      message: `the DNA does not fit oracle ${oracleId}: ${found[0].field}: ${found[0].description}`,
    });
  }
}

/** The batch's candidates checked and decoded: `{ids, takes}` (the id of each, recomputed,
 * and its ten flags as 0/1 numbers), or INVALID_ARGUMENT naming every bad one (at most 100). */
function decodeCandidates(candidates, where) {
  const shape = [];
  const wrong = [];
  const ids = [];
  const takes = [];
  candidates.forEach((candidate, i) => {
    const at = `${where}[${i}]`;
    const genome = candidate.genome;
    if (!genome) {
      shape.push(violation(`${at}.genome`, "must be set", "required"));
      return;
    }
    for (const key of OTHER_GENOME_FIELDS) {
      if (genome[key] && genome[key].length) {
        shape.push(
          violation(`${at}.genome.${key}`, `must be empty: the DNA has only bits`, "genome_shape")
        );
      }
    }
    const bits = genome.bits || Buffer.alloc(0);
    if (bits.length !== BYTES) {
      shape.push(
        violation(
          `${at}.genome.bits`,
          `must be ${BYTES} bytes (${FLAGS} bits), got ${bits.length}`,
          "genome_shape"
        )
      );
      return;
    }
    if (bits[BYTES - 1] >> (FLAGS - 8 * (BYTES - 1))) {
      shape.push(
        violation(`${at}.genome.bits`, `bits set past the ${FLAGS} flags`, "padding")
      );
      return;
    }
    const id = genomeId(genome);
    if (candidate.id && candidate.id !== id) {
      wrong.push(
        violation(
          `${at}.id`,
          `must be the genome's content hash ${id} (or empty), got ${candidate.id}`,
          "wrong_id"
        )
      );
    }
    const take = [];
    for (let bit = 0; bit < FLAGS; bit++) take.push((bits[bit >> 3] >> (bit & 7)) & 1);
    ids.push(id);
    takes.push(take);
  });
  if (shape.length) throw invalidArgument(shape.slice(0, 100));
  if (wrong.length) {
    throw invalidArgument(wrong.slice(0, 100), {
      reason: "WRONG_ID",
      message: "a candidate's id is not its genome's content hash",
    });
  }
  return { ids, takes };
}

/** A finite number of the worker's JSON (not a boolean), or null. */
function finite(value) {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

/** The message cut to 1024 characters (code points, as Python counts them). */
function clipMessage(text) {
  const chars = Array.from(text);
  return chars.length > MAX_MESSAGE_CHARS ? chars.slice(0, MAX_MESSAGE_CHARS).join("") : text;
}

/** [status, score, metrics, message] of the worker's answer, by the rules of command.py's
 * parse_verdict_line; a bad answer is an ERROR saying why, as there. */
function readAnswer(answer, expectedId) {
  const invalid = (why) => ["VERDICT_STATUS_ERROR", 0, {}, `invalid verdict line: ${why}`];
  if (answer === null || typeof answer !== "object" || Array.isArray(answer)) {
    return ["VERDICT_STATUS_ERROR", 0, {}, "worker wrote JSON that is not an object"];
  }
  if (answer.id !== expectedId) {
    const got = JSON.stringify(answer.id);
    return ["VERDICT_STATUS_ERROR", 0, {}, `worker answered id ${got} while ${expectedId} was expected`];
  }
  const unknown = Object.keys(answer).filter((k) => !VERDICT_KEYS.has(k));
  if (unknown.length) return invalid(`unknown verdict field(s) ${JSON.stringify(unknown.sort())}`);
  const status = typeof answer.status === "string" ? STATUSES[answer.status] : undefined;
  if (!status) {
    return invalid(`status must be passed, failed or error, not ${JSON.stringify(answer.status)}`);
  }
  const message = answer.message === undefined ? "" : answer.message;
  if (typeof message !== "string") return invalid("message must be a string");
  let score = 0;
  if (status !== "VERDICT_STATUS_ERROR") {
    score = finite(answer.score);
    if (score === null) {
      return invalid(`score must be a finite number, not ${JSON.stringify(answer.score)}`);
    }
  }
  const metrics = {};
  if ("metrics" in answer) {
    const raw = answer.metrics;
    if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
      return invalid(`metrics must be an object of at most ${MAX_METRICS} entries`);
    }
    const entries = Object.entries(raw);
    if (entries.length > MAX_METRICS) {
      return invalid(`metrics must be an object of at most ${MAX_METRICS} entries`);
    }
    for (const [key, value] of entries) {
      if (!METRIC_KEY.test(key)) {
        return invalid(`metric key ${JSON.stringify(key)} does not match [a-z_][a-z0-9_.]{0,63}`);
      }
      if (finite(value) === null) {
        return invalid(`metric ${JSON.stringify(key)} must be a finite number`);
      }
      metrics[key] = value;
    }
  }
  return [status, score, metrics, clipMessage(message)];
}

/** A google.protobuf.Duration of `nanoseconds` (a BigInt). */
function duration(nanoseconds) {
  return { seconds: String(nanoseconds / 1000000000n), nanos: Number(nanoseconds % 1000000000n) };
}

/** Judge one candidate with the worker's `judge`, as its JSON Lines loop would. */
function judgeOne(id, take) {
  const started = process.hrtime.bigint();
  let answer;
  try {
    // Through JSON and back, as on the worker's stdin and stdout: the worker sees and
    // returns exactly what it would as a program.
    const request = JSON.parse(JSON.stringify({ id, genome: { [GENE]: take } }));
    answer = JSON.parse(JSON.stringify(judge(request)));
  } catch (err) {
    answer = { id, status: "error", message: String(err).slice(0, 1000) };
  }
  const [status, score, metrics, message] = readAnswer(answer, id);
  return {
    candidate_id: id,
    status,
    score,
    metrics,
    message,
    duration: duration(process.hrtime.bigint() - started),
    cached: false,
  };
}

/** A bounded least-recently-used map of verdicts by candidate id. */
class VerdictCache {
  constructor(maxEntries) {
    this.max = maxEntries;
    this.map = new Map();
    this.hits = 0;
  }

  get(id) {
    const verdict = this.map.get(id);
    if (verdict === undefined) return undefined;
    this.map.delete(id); // most recently used: last
    this.map.set(id, verdict);
    this.hits += 1;
    return verdict;
  }

  put(id, verdict) {
    if (this.max <= 0) return;
    this.map.delete(id);
    this.map.set(id, verdict);
    while (this.map.size > this.max) this.map.delete(this.map.keys().next().value);
  }
}

const yieldToLoop = () => new Promise((resolve) => setImmediate(resolve));

/** The hosted oracle: its description (OracleInfo), capacity accounting and verification. */
class KnapsackOracle {
  constructor({ id, configHash, capacity, cacheEntries, objective, description }) {
    loadWorker();
    this.id = id;
    this.name = `oracles/${id}`;
    this.configHash = configHash;
    this.capacity = capacity;
    this.free = capacity;
    this.objective = objective;
    this.description = description;
    this.cache = new VerdictCache(cacheEntries);
    this.judged = 0; // candidates judged by the worker here (cache hits excluded)
    this.answered = 0; // verdicts returned, cached ones included
    this.batches = 0;
  }

  /** OracleInfo of oracle.proto. */
  info() {
    return {
      name: this.name,
      kind: "ORACLE_KIND_COMMAND",
      description: this.description,
      config_hash: this.configHash,
      capacity: this.capacity,
      objective: this.objective,
    };
  }

  /** The candidates held now (leased by calls and streams). */
  get held() {
    return this.capacity - this.free;
  }

  /** The verdicts of decoded candidates (`decodeCandidates`), in order; null when
   * `abort.aborted` became true (the caller went away): judging stops at the next yield.
   * Duplicates and cached candidates are judged once. */
  async verify({ ids, takes }, abort = { aborted: false }) {
    this.batches += 1;
    const byId = new Map();
    let sinceYield = 0;
    let sliceStart = Date.now();
    for (let i = 0; i < ids.length; i++) {
      if (++sinceYield > CHUNK || Date.now() - sliceStart >= SLICE_MS) {
        await yieldToLoop();
        sinceYield = 0;
        sliceStart = Date.now();
      }
      if (abort.aborted) return null;
      const id = ids[i];
      if (byId.has(id)) continue;
      const hit = this.cache.get(id);
      if (hit) {
        byId.set(id, { ...hit, cached: true });
        continue;
      }
      const verdict = judgeOne(id, takes[i]);
      this.judged += 1;
      this.cache.put(id, verdict);
      byId.set(id, verdict);
    }
    if (abort.aborted) return null;
    this.answered += ids.length;
    return ids.map((id) => byId.get(id));
  }
}

module.exports = {
  FLAGS,
  GENE,
  KnapsackOracle,
  WORKER,
  checkDna,
  loadWorker,
  decodeCandidates,
  readAnswer,
  requireDna,
};
