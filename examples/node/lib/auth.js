// Bearer tokens with the embedded suite's HS256 keys (services/helix/security): `<kid>.hs256`
// files (base64 secrets) in a key directory.
//
// - TokenVerifier checks the tokens of incoming calls as a Helix server does: a JWT signed
//   with one of the keys (header `kid`, alg HS256), with iss and aud "helix", a subject,
//   unexpired (10 s of leeway, as tokens.py), and the scope the method needs ("admin" holds
//   every scope). Health is open. Without a key directory the agent checks nothing, which it
//   allows only on a loopback host (or with --insecure-no-auth).
// - TokenMinter mints the agent's own short-lived tokens with the newest key, renewed when a
//   third of their life is left (client.py's MintingTokenSource).
// - tokenSource() picks where the agent's own registry calls get their token: minted from
//   the keys, else HELIX_TOKEN_FILE re-read at every call (a rotated secret is picked up),
//   else HELIX_TOKEN as given.
"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");
const path = require("node:path");

const grpc = require("@grpc/grpc-js");

const { UsageError, rpcError } = require("./helix");

const SUFFIX = ".hs256";
const LEEWAY_SECONDS = 10; // as services/helix/security/tokens.py (TokenPolicy.leeway)
const RELOAD_EVERY_MS = 5000; // an unknown kid re-reads the directory at most this often
const MAX_TOKEN_CHARS = 8192;

function unauthenticated(reason, message) {
  return rpcError(grpc.status.UNAUTHENTICATED, message, { reason });
}

/** The JSON object a token part encodes; anything else (not base64url JSON, or JSON that is
 * not a plain object: null, a number, an array) is UNAUTHENTICATED, TOKEN_MALFORMED. */
function decodePart(text, what) {
  let value;
  try {
    value = JSON.parse(Buffer.from(text, "base64url").toString("utf8"));
  } catch {
    throw unauthenticated("TOKEN_MALFORMED", `the token's ${what} is not base64url JSON`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw unauthenticated("TOKEN_MALFORMED", `the token's ${what} is not a JSON object`);
  }
  return value;
}

/** The `<kid>.hs256` secrets of `directory` as {kid, secret, written}; UsageError naming the
 * directory when it cannot be read or holds no usable key. */
function readKeys(directory) {
  let files;
  try {
    files = fs.readdirSync(directory);
  } catch (err) {
    throw new UsageError(`--auth-hs256-dir ${directory}: cannot read it (${err.code || err.message})`);
  }
  const keys = [];
  for (const file of files.sort()) {
    if (!file.endsWith(SUFFIX)) continue;
    const where = path.join(directory, file);
    let text;
    let written;
    try {
      text = fs.readFileSync(where, "utf8").trim();
      written = fs.statSync(where).mtimeMs;
    } catch (err) {
      throw new UsageError(`--auth-hs256-dir: cannot read ${where} (${err.code || err.message})`);
    }
    const secret = Buffer.from(text, "base64");
    if (secret.length >= 32) keys.push({ kid: file.slice(0, -SUFFIX.length), secret, written });
  }
  if (!keys.length) {
    throw new UsageError(
      `--auth-hs256-dir ${directory}: no ${SUFFIX} key of at least 32 bytes there (the ` +
        "suite's key directory is DATA_DIR/keys)"
    );
  }
  return keys;
}

class TokenVerifier {
  /** `directory`: the suite's key directory (DATA_DIR/keys). UsageError when it cannot be
   * read or holds no key. */
  constructor(directory, { issuer = "helix", audience = "helix" } = {}) {
    this.directory = directory;
    this.issuer = issuer;
    this.audience = audience;
    this.keys = new Map();
    this.loadedAt = 0;
    this.load();
  }

  load() {
    this.keys = new Map(readKeys(this.directory).map((k) => [k.kid, k.secret]));
    this.loadedAt = Date.now();
  }

  keyFor(kid) {
    if (!this.keys.has(kid) && Date.now() - this.loadedAt > RELOAD_EVERY_MS) {
      try {
        this.load(); // a key added by a rotation
      } catch {
        // keep the keys already known
      }
    }
    return this.keys.get(kid);
  }

  /** The principal (`sub`) of a call whose metadata carries a valid token with `scope`;
   * else throws the UNAUTHENTICATED or PERMISSION_DENIED error to answer with. */
  check(metadata, scope) {
    const values = metadata.get("authorization");
    if (values.length === 0) {
      throw unauthenticated("TOKEN_MISSING", "no authorization: Bearer token was sent");
    }
    if (values.length > 1) {
      throw unauthenticated("TOKEN_AMBIGUOUS", "more than one authorization header was sent");
    }
    const match = /^Bearer ([^\s]+)$/i.exec(String(values[0]));
    if (!match) throw unauthenticated("TOKEN_MALFORMED", "authorization must be 'Bearer TOKEN'");
    const token = match[1];
    if (token.length > MAX_TOKEN_CHARS) {
      throw unauthenticated("TOKEN_TOO_LARGE", `the token is over ${MAX_TOKEN_CHARS} characters`);
    }
    const parts = token.split(".");
    if (parts.length !== 3) throw unauthenticated("TOKEN_MALFORMED", "the token is not a JWT");
    const header = decodePart(parts[0], "header");
    if (header.alg !== "HS256") {
      throw unauthenticated("TOKEN_BAD_ALGORITHM", `the token's algorithm must be HS256`);
    }
    const key = this.keyFor(String(header.kid));
    if (!key) throw unauthenticated("TOKEN_UNKNOWN_KEY", `no key ${header.kid} here`);
    const expected = crypto.createHmac("sha256", key).update(`${parts[0]}.${parts[1]}`).digest();
    const given = Buffer.from(parts[2], "base64url");
    if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) {
      throw unauthenticated("TOKEN_BAD_SIGNATURE", "the token's signature does not verify");
    }
    const claims = decodePart(parts[1], "claims");
    const now = Date.now() / 1000;
    if (typeof claims.exp !== "number" || claims.exp < now - LEEWAY_SECONDS) {
      throw unauthenticated("TOKEN_EXPIRED", "the token has expired");
    }
    if (typeof claims.nbf === "number" && claims.nbf > now + LEEWAY_SECONDS) {
      throw unauthenticated("TOKEN_NOT_YET_VALID", "the token is not valid yet");
    }
    if (claims.iss !== this.issuer) {
      throw unauthenticated("TOKEN_WRONG_ISSUER", `the token's issuer must be ${this.issuer}`);
    }
    const audiences = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
    if (!audiences.includes(this.audience)) {
      throw unauthenticated("TOKEN_WRONG_AUDIENCE", `the token's audience must be ${this.audience}`);
    }
    if (typeof claims.sub !== "string" || !claims.sub) {
      throw unauthenticated("TOKEN_MISSING_CLAIM", "the token names no subject (sub)");
    }
    const scopes = typeof claims.scope === "string" ? claims.scope.split(" ") : [];
    if (!scopes.includes(scope) && !scopes.includes("admin")) {
      throw rpcError(
        grpc.status.PERMISSION_DENIED,
        `this call needs the scope ${scope}; the token of ${claims.sub} has: ${scopes.join(" ") || "none"}`,
        { reason: "SCOPE_MISSING", metadata: { scope } }
      );
    }
    return claims.sub;
  }
}

/** base64url of a JSON object (a JWT part). */
function encodePart(value) {
  return Buffer.from(JSON.stringify(value), "utf8").toString("base64url");
}

/** The agent's own tokens for `subject` with `scopes`, minted with the newest key of the
 * directory (re-read at each renewal, so a rotated key is used), valid `ttl` seconds and
 * renewed when a third of that is left. */
class TokenMinter {
  constructor(directory, subject, scopes, { ttl = 300, issuer = "helix", audience = "helix" } = {}) {
    this.directory = directory;
    this.subject = subject;
    this.scopes = [...new Set(scopes)].sort();
    this.ttl = Math.max(1, Math.floor(ttl));
    this.issuer = issuer;
    this.audience = audience;
    this.current = "";
    this.renewAt = 0;
    this.token(); // a bad directory is a usage error at start, not at the first heartbeat
  }

  token() {
    const now = Date.now() / 1000;
    if (this.current && now < this.renewAt) return this.current;
    let keys;
    try {
      keys = readKeys(this.directory);
    } catch (err) {
      if (this.current) return this.current; // mid-rotation: keep the last good one
      throw err;
    }
    const newest = keys.reduce((a, b) => (b.written >= a.written ? b : a));
    const issued = Math.floor(now);
    const header = encodePart({ alg: "HS256", typ: "JWT", kid: newest.kid });
    const claims = encodePart({
      sub: this.subject,
      scope: this.scopes.join(" "),
      iss: this.issuer,
      aud: this.audience,
      iat: issued,
      nbf: issued,
      exp: issued + this.ttl,
    });
    const signature = crypto
      .createHmac("sha256", newest.secret)
      .update(`${header}.${claims}`)
      .digest("base64url");
    this.current = `${header}.${claims}.${signature}`;
    this.renewAt = issued + (this.ttl * 2) / 3;
    return this.current;
  }
}

/** HELIX_TOKEN_FILE read at every call: a token rotated in the file is used from the next
 * call on; a file briefly missing or empty (mid-rotation) keeps the last good token. */
class FileTokenSource {
  constructor(file) {
    this.file = file;
    this.current = "";
    this.token(); // a missing file is a usage error at start
  }

  token() {
    let text;
    try {
      text = fs.readFileSync(this.file, "utf8").trim();
    } catch (err) {
      if (this.current) return this.current;
      throw new UsageError(`HELIX_TOKEN_FILE ${this.file}: cannot read it (${err.code || err.message})`);
    }
    if (!text || /\s/.test(text)) {
      if (this.current) return this.current;
      throw new UsageError(`HELIX_TOKEN_FILE ${this.file}: must hold one token`);
    }
    this.current = text;
    return text;
  }
}

/** Where the agent's registry calls get their token, first found: minted with the keys of
 * `keyDir` (for `subject` with `scopes`, lasting `ttl` s); HELIX_TOKEN_FILE, re-read at every
 * call; HELIX_TOKEN. Returns {token(), what}. UsageError when there is none. */
function tokenSource({ keyDir, subject, scopes, ttl }) {
  if (keyDir) {
    const minter = new TokenMinter(keyDir, subject, scopes, { ttl });
    return { token: () => minter.token(), what: `tokens for ${subject} minted with ${keyDir}` };
  }
  if (process.env.HELIX_TOKEN_FILE) {
    const file = new FileTokenSource(process.env.HELIX_TOKEN_FILE);
    return { token: () => file.token(), what: `HELIX_TOKEN_FILE ${process.env.HELIX_TOKEN_FILE}` };
  }
  const token = (process.env.HELIX_TOKEN || "").trim();
  if (!token) {
    throw new UsageError(
      `no token for the registry (scopes ${scopes.join(", ")}): give --auth-hs256-dir ` +
        "(tokens are minted with the suite's keys), or set HELIX_TOKEN_FILE or HELIX_TOKEN " +
        "(e.g. HELIX_TOKEN=$(helix token mint --sub me --scope ... --data-dir DATA_DIR))"
    );
  }
  if (/\s/.test(token)) throw new UsageError("HELIX_TOKEN must be one token, without spaces");
  return { token: () => token, what: "HELIX_TOKEN (it is not renewed: when it expires, the agent stops)" };
}

module.exports = { LEEWAY_SECONDS, TokenMinter, TokenVerifier, tokenSource };
