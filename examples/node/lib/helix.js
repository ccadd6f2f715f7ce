// Shared plumbing of the Helix Node.js examples: the contracts loaded from ../../protos at run
// time with @grpc/proto-loader (no generated code, no build step), channels and clients, the
// bearer token, deadlines, the rich error model (google.rpc.Status in the
// `grpc-status-details-bin` trailer, see protos/helix/v1/common.proto), candidate ids, and
// the named JSON form of genomes.
"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");
const path = require("node:path");
const util = require("node:util");

const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

// The repository's protos/ (override with HELIX_PROTOS, e.g. when this folder is copied out).
const PROTO_ROOT = process.env.HELIX_PROTOS || path.resolve(__dirname, "..", "..", "..", "protos");
const PROTO_FILES = [
  "helix/v1/common.proto",
  "helix/v1/candidate.proto",
  "helix/v1/dna.proto",
  "helix/v1/generator.proto",
  "helix/v1/oracle.proto",
  "helix/v1/orchestrator.proto",
  "helix/v1/registry.proto",
  "google/rpc/status.proto",
  "google/rpc/error_details.proto",
  "grpc/health/v1/health.proto",
];

// How messages look in JavaScript: field names as in the .proto, 64-bit integers as decimal
// strings (exact), enums as their names, every field present (defaults filled in), `kind`
// naming the member set of a oneof, bytes as Buffers.
const LOAD_OPTIONS = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  bytes: Buffer,
  includeDirs: [PROTO_ROOT, path.join(PROTO_ROOT, "third_party")],
};

let loaded = null;

/** The loaded contracts: `definition` (proto-loader's, by full message name) and `proto`
 * (grpc-js service constructors: proto.helix.v1.RegistryService, ...). Loaded once. */
function protos() {
  if (loaded === null) {
    for (const file of PROTO_FILES) {
      const found = LOAD_OPTIONS.includeDirs.some((dir) => fs.existsSync(path.join(dir, file)));
      if (!found) {
        throw new UsageError(
          `cannot find ${file} under ${PROTO_ROOT}: set HELIX_PROTOS to the protos/ folder ` +
            "of a Helix checkout"
        );
      }
    }
    const definition = protoLoader.loadSync(PROTO_FILES, LOAD_OPTIONS);
    loaded = { definition, proto: grpc.loadPackageDefinition(definition) };
  }
  return loaded;
}

/** The proto-loader type of a message ("helix.v1.Genome"): serialize(obj), deserialize(buf). */
function messageType(fullName) {
  const type = protos().definition[fullName];
  if (!type || typeof type.serialize !== "function") {
    throw new Error(`no message type ${fullName} in the loaded protos`);
  }
  return type;
}

// --- errors of the command line -----------------------------------------------------------

/** A mistake of the caller (a flag, a missing token): printed as one line, exit status 2. */
class UsageError extends Error {}

// --- channels, tokens, deadlines ----------------------------------------------------------

const DEFAULT_ADDRESS = "127.0.0.1:50051";

/** Client options: quick reconnects (a suite restarting), messages up to 4 MiB (the servers'
 * default), keepalive pings so a dead peer is noticed on long streams. */
const CHANNEL_OPTIONS = {
  "grpc.initial_reconnect_backoff_ms": 100,
  "grpc.max_reconnect_backoff_ms": 2000,
  "grpc.max_receive_message_length": 4 * 1024 * 1024,
  "grpc.keepalive_time_ms": 30000,
  "grpc.keepalive_timeout_ms": 10000,
};

/** Channel credentials: TLS when a CA bundle is given, else plaintext (loopback, dev). */
function channelCredentials(caFile) {
  if (!caFile) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(fs.readFileSync(caFile));
}

/** A client of `service` ("RegistryService", "GeneratorService", "OrchestratorService",
 * "OracleService") at `address`. */
function client(service, address, { caFile = "" } = {}) {
  const Service = protos().proto.helix.v1[service];
  if (!Service) throw new Error(`no service helix.v1.${service}`);
  return new Service(address, channelCredentials(caFile), CHANNEL_OPTIONS);
}

/** The bearer token from HELIX_TOKEN (or the file HELIX_TOKEN_FILE names); `what` says what
 * the caller needs it for, in the error when there is none. */
function tokenFromEnv(what) {
  let token = (process.env.HELIX_TOKEN || "").trim();
  if (!token && process.env.HELIX_TOKEN_FILE) {
    try {
      token = fs.readFileSync(process.env.HELIX_TOKEN_FILE, "utf8").trim();
    } catch (err) {
      throw new UsageError(`HELIX_TOKEN_FILE ${process.env.HELIX_TOKEN_FILE}: ${err.message}`);
    }
  }
  if (!token) {
    throw new UsageError(
      `no token: set HELIX_TOKEN to a bearer token ${what} ` +
        "(e.g. HELIX_TOKEN=$(helix token mint --sub me --scope ... --data-dir DATA_DIR))"
    );
  }
  if (/\s/.test(token)) throw new UsageError("HELIX_TOKEN must be one token, without spaces");
  return token;
}

/** Call metadata carrying `authorization: Bearer TOKEN`. */
function authMetadata(token) {
  const metadata = new grpc.Metadata();
  if (token) metadata.set("authorization", `Bearer ${token}`);
  return metadata;
}

/** A deadline `seconds` from now (every call has one). */
function deadline(seconds) {
  return new Date(Date.now() + seconds * 1000);
}

/** A unary call as a promise, with a deadline of `timeout` seconds. */
function unary(stub, method, request, { metadata = new grpc.Metadata(), timeout = 10 } = {}) {
  return new Promise((resolve, reject) => {
    stub[method](request, metadata, { deadline: deadline(timeout) }, (err, response) => {
      if (err) reject(err);
      else resolve(response);
    });
  });
}

// --- the rich error model -----------------------------------------------------------------

// Detail types a Helix server sends (and a few more google.rpc ones), by type URL.
const DETAIL_TYPES = [
  "ErrorInfo",
  "BadRequest",
  "RetryInfo",
  "QuotaFailure",
  "PreconditionFailure",
  "ResourceInfo",
  "RequestInfo",
  "DebugInfo",
  "Help",
  "LocalizedMessage",
];
const TYPE_URL_PREFIX = "type.googleapis.com/";

/** The status code's name ("INVALID_ARGUMENT") of a code number. */
function codeName(code) {
  for (const [name, value] of Object.entries(grpc.status)) {
    if (value === code) return name;
  }
  return `CODE_${code}`;
}

/** The google.rpc.Status of a failed call, decoded with its details: `{code, message,
 * details: [{type, ...fields}]}`, each detail named by its short type ("ErrorInfo"); a
 * detail of an unknown type keeps its `type_url` and raw `value`. null when the error
 * carries no (decodable) status details. */
function statusDetails(error) {
  const metadata = error && error.metadata;
  if (!metadata || typeof metadata.get !== "function") return null;
  const values = metadata.get("grpc-status-details-bin");
  if (!values.length) return null;
  let status;
  try {
    const raw = Buffer.isBuffer(values[0]) ? values[0] : Buffer.from(values[0], "base64");
    status = messageType("google.rpc.Status").deserialize(raw);
  } catch {
    return null;
  }
  const details = status.details.map((any) => {
    const url = any.type_url || "";
    const short = url.startsWith(`${TYPE_URL_PREFIX}google.rpc.`)
      ? url.slice(`${TYPE_URL_PREFIX}google.rpc.`.length)
      : "";
    if (DETAIL_TYPES.includes(short)) {
      try {
        return { type: short, ...messageType(`google.rpc.${short}`).deserialize(any.value) };
      } catch {
        // fall through: shown as an unknown detail
      }
    }
    return { type: url || "(no type)", type_url: url, value: any.value };
  });
  return { code: status.code, message: status.message, details };
}

/** Seconds of a google.protobuf.Duration as proto-loader gives it ({seconds: "1", nanos}). */
function durationSeconds(duration) {
  if (!duration) return 0;
  return Number(duration.seconds || 0) + (duration.nanos || 0) / 1e9;
}

/** One readable text for a failed call: the code and message, then one line per detail:
 *
 *   INVALID_ARGUMENT: run.budget: at least one limit must be set
 *     reason: INVALID_ARGUMENT (domain helix)
 *     field run.budget: at least one limit must be set [required]
 *     retry after: 1.5s
 */
function describeError(error) {
  if (!error || typeof error.code !== "number") {
    return `error: ${error && error.message ? error.message : String(error)}`;
  }
  const decoded = statusDetails(error);
  const message = (decoded && decoded.message) || error.details || error.message || "";
  const lines = [`${codeName(error.code)}: ${message}`];
  for (const detail of decoded ? decoded.details : []) {
    lines.push(...describeDetail(detail).map((line) => `  ${line}`));
  }
  return lines.join("\n");
}

function describeDetail(detail) {
  switch (detail.type) {
    case "ErrorInfo": {
      const meta = Object.entries(detail.metadata || {})
        .sort(([a], [b]) => (a < b ? -1 : 1))
        .map(([k, v]) => `${k}=${v}`);
      const domain = detail.domain ? ` (domain ${detail.domain})` : "";
      return [`reason: ${detail.reason}${domain}${meta.length ? ` ${meta.join(" ")}` : ""}`];
    }
    case "BadRequest":
      return (detail.field_violations || []).map((v) => {
        const rule = v.reason ? ` [${v.reason}]` : "";
        return `field ${v.field || "(request)"}: ${v.description}${rule}`;
      });
    case "RetryInfo":
      return [`retry after: ${durationSeconds(detail.retry_delay)}s`];
    case "QuotaFailure":
      return (detail.violations || []).map((v) => `quota ${v.subject}: ${v.description}`);
    case "PreconditionFailure":
      return (detail.violations || []).map(
        (v) => `precondition ${v.type} ${v.subject}: ${v.description}`
      );
    case "ResourceInfo":
      return [`resource ${detail.resource_type} ${detail.resource_name}: ${detail.description}`];
    case "RequestInfo":
      return [`request id: ${detail.request_id}`];
    case "DebugInfo":
      return [`debug: ${detail.detail}`];
    case "Help":
      return (detail.links || []).map((link) => `help: ${link.description} ${link.url}`);
    case "LocalizedMessage":
      return [`message (${detail.locale}): ${detail.message}`];
    default:
      return [`detail ${detail.type} (${detail.value ? detail.value.length : 0} bytes)`];
  }
}

/** The ErrorInfo reason of a failed call ("" when none). */
function errorReason(error) {
  const decoded = statusDetails(error);
  const info = decoded && decoded.details.find((d) => d.type === "ErrorInfo");
  return info ? info.reason : "";
}

// --- building errors (servers) ------------------------------------------------------------

/** A field violation of a BadRequest: the field path, what is wrong, the rule code. */
function violation(field, description, rule) {
  return { field, description, reason: rule };
}

function packAny(typeName, message) {
  return {
    type_url: `${TYPE_URL_PREFIX}${typeName}`,
    value: messageType(typeName).serialize(message),
  };
}

/** The error a grpc-js handler returns (callback(error) or call.emit("error", error)) for a
 * failed call, in Helix's error model: the status code, the message, and a google.rpc.Status
 * with an ErrorInfo (domain "helix", `reason`, `metadata`), a BadRequest when there are
 * `violations`, and a RetryInfo when `retryAfter` (seconds) is given. */
function rpcError(code, message, { reason, metadata = {}, violations = [], retryAfter } = {}) {
  const clipped = message.length > 512 ? `${message.slice(0, 511)}…` : message;
  const details = [
    packAny("google.rpc.ErrorInfo", {
      reason: reason || codeName(code),
      domain: "helix",
      metadata,
    }),
  ];
  if (violations.length) {
    details.push(
      packAny("google.rpc.BadRequest", {
        field_violations: violations.slice(0, 50).map((v) => ({
          field: v.field.slice(0, 200),
          description: v.description.slice(0, 200),
          reason: v.reason,
        })),
      })
    );
  }
  if (retryAfter !== undefined) {
    const seconds = Math.floor(retryAfter);
    details.push(
      packAny("google.rpc.RetryInfo", {
        retry_delay: { seconds, nanos: Math.round((retryAfter - seconds) * 1e9) },
      })
    );
  }
  const status = messageType("google.rpc.Status").serialize({ code, message: clipped, details });
  const trailers = new grpc.Metadata();
  trailers.set("grpc-status-details-bin", status);
  const error = new Error(clipped);
  error.code = code;
  error.details = clipped;
  error.metadata = trailers;
  return error;
}

/** INVALID_ARGUMENT naming every violation; the message is the first one's. */
function invalidArgument(violations, { reason = "INVALID_ARGUMENT", message } = {}) {
  const first = violations[0];
  const text = message || (first ? `${first.field}: ${first.description}` : "invalid request");
  return rpcError(grpc.status.INVALID_ARGUMENT, text, { reason, violations });
}

// --- candidate ids ------------------------------------------------------------------------

/** The candidate id of a genome (candidate.proto): the first 128 bits of SHA-256 over the
 * genome's canonical encoding, as 32 lowercase hex characters. The canonical encoding is the
 * deterministic serialisation (fields in number order, repeated fields packed, empty fields
 * omitted) after replacing -0.0 by 0.0 in `reals`: protobufjs writes fields in number order
 * and packs repeated scalars in proto3; only the empty fields are left out here, since it
 * would write an empty `bytes` field that is present on the object. */
function genomeId(genome) {
  const canonical = {};
  const repeated = ["reals", "integers", "choices", "permutations", "sequence_lengths"];
  for (const key of repeated) {
    const values = genome[key] || [];
    if (values.length) {
      canonical[key] = key === "reals" ? values.map((x) => (Object.is(x, -0) ? 0 : x)) : values;
    }
  }
  for (const key of ["bits", "sequences"]) {
    if (genome[key] && genome[key].length) canonical[key] = genome[key];
  }
  const encoded = messageType("helix.v1.Genome").serialize(canonical);
  return crypto.createHash("sha256").update(encoded).digest("hex").slice(0, 32);
}

// --- the named JSON form of genomes -------------------------------------------------------

/** The named JSON form of `genome` under `dna` (candidate.proto): one key per gene, in gene
 * order. Throws when the genome is shorter than the DNA says (a server would never send one). */
function namedGenes(dna, genome) {
  const at = { reals: 0, integers: 0, choices: 0, bits: 0, permutations: 0, lengths: 0, seq: 0 };
  const take = (list, key, n) => {
    if (at[key] + n > list.length) throw new Error(`the genome is shorter than its DNA (${key})`);
    const out = list.slice(at[key], at[key] + n);
    at[key] += n;
    return out;
  };
  const one = (values, size) => (size <= 1 ? values[0] : values);
  const named = {};
  for (const gene of dna.genes || []) {
    const kind = gene.kind;
    const spec = gene[kind] || {};
    const size = Number(spec.size || 0) || 1;
    if (kind === "real") {
      named[gene.name] = one(take(genome.reals, "reals", size), spec.size);
    } else if (kind === "integer") {
      named[gene.name] = one(take(genome.integers, "integers", size).map(Number), spec.size);
    } else if (kind === "choice") {
      const picked = take(genome.choices, "choices", size).map((i) => spec.options[i]);
      named[gene.name] = one(picked, spec.size);
    } else if (kind === "bits") {
      const bits = [];
      for (let i = 0; i < size; i++) {
        const bit = at.bits + i;
        if (bit >> 3 >= genome.bits.length) throw new Error("the genome's bits are too short");
        bits.push((genome.bits[bit >> 3] >> (bit & 7)) & 1);
      }
      at.bits += size;
      named[gene.name] = bits;
    } else if (kind === "permutation") {
      named[gene.name] = take(genome.permutations, "permutations", Number(spec.size));
    } else if (kind === "sequence") {
      const [length] = take(genome.sequence_lengths, "lengths", 1);
      const symbols = Array.from(spec.alphabet);
      const indices = [...take([...genome.sequences], "seq", length)];
      named[gene.name] = indices.map((i) => symbols[i]).join("");
    }
  }
  return named;
}

// --- small helpers ------------------------------------------------------------------------

/** Parse the command line with node:util parseArgs; a bad flag is a UsageError. */
function parseFlags(argv, options) {
  // "--budget -5": a value that looks like a flag is still the value (and then refused
  // by the flag's own check, which names it), not "an ambiguous option".
  const args = [];
  for (let i = 0; i < argv.length; i++) {
    const name = argv[i].startsWith("--") ? argv[i].slice(2) : "";
    const next = argv[i + 1];
    if (options[name] && options[name].type === "string" && /^-[0-9.]/.test(next || "")) {
      args.push(`--${name}=${next}`);
      i += 1;
    } else {
      args.push(argv[i]);
    }
  }
  try {
    return util.parseArgs({ args, options, strict: true, allowPositionals: false }).values;
  } catch (err) {
    throw new UsageError(err.message.replace(/\. To specify a positional.*$/s, ""));
  }
}

/** A whole number flag within [low, high], or a UsageError naming the flag. Accepts decimal
 * digits only (no "1e3", no "0x10", no sign unless `low` < 0); returns a BigInt. */
function integerFlag(name, text, low, high) {
  if (text === undefined) return undefined;
  const pattern = low < 0n ? /^-?[0-9]+$/ : /^[0-9]+$/;
  if (!pattern.test(text)) {
    const sign = low < 0n ? "" : " non-negative";
    throw new UsageError(`--${name}: ${JSON.stringify(text)} is not a${sign} whole number`);
  }
  const value = BigInt(text);
  if (value < low || value > high) {
    throw new UsageError(`--${name}: ${text} is out of range ${low}..${high}`);
  }
  return value;
}

/** A number of seconds flag (> 0), or a UsageError naming the flag. */
function secondsFlag(name, text, fallback) {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!/^[0-9]*\.?[0-9]+$/.test(text) || !(value > 0) || !Number.isFinite(value)) {
    throw new UsageError(`--${name}: ${JSON.stringify(text)} is not a positive number of seconds`);
  }
  return value;
}

module.exports = {
  DEFAULT_ADDRESS,
  PROTO_ROOT,
  UsageError,
  authMetadata,
  channelCredentials,
  client,
  codeName,
  deadline,
  describeError,
  durationSeconds,
  errorReason,
  genomeId,
  integerFlag,
  invalidArgument,
  messageType,
  namedGenes,
  parseFlags,
  protos,
  rpcError,
  secondsFlag,
  statusDetails,
  tokenFromEnv,
  unary,
  violation,
};
