// Checking the bearer tokens of incoming calls, as a Helix server does for the embedded
// suite's HS256 keys (services/helix/security): `<kid>.hs256` files (base64 secrets) in a
// key directory; a token is a JWT signed with one of them (header `kid`, alg HS256), with
// iss and aud "helix", a subject, unexpired, and the scope the method needs ("admin" holds
// every scope). Health is open. Without a key directory the agent checks nothing (a demo on
// loopback) and says so when it starts.
"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");
const path = require("node:path");

const grpc = require("@grpc/grpc-js");

const { rpcError } = require("./helix");

const SUFFIX = ".hs256";
const LEEWAY_SECONDS = 30;
const RELOAD_EVERY_MS = 5000; // an unknown kid re-reads the directory at most this often
const MAX_TOKEN_CHARS = 8192;

function unauthenticated(reason, message) {
  return rpcError(grpc.status.UNAUTHENTICATED, message, { reason });
}

function decodePart(text, what) {
  try {
    return JSON.parse(Buffer.from(text, "base64url").toString("utf8"));
  } catch {
    throw unauthenticated("TOKEN_MALFORMED", `the token's ${what} is not base64url JSON`);
  }
}

class TokenVerifier {
  /** `directory`: the suite's key directory (DATA_DIR/keys). Throws when it holds no key. */
  constructor(directory, { issuer = "helix", audience = "helix" } = {}) {
    this.directory = directory;
    this.issuer = issuer;
    this.audience = audience;
    this.keys = new Map();
    this.loadedAt = 0;
    this.load();
    if (!this.keys.size) throw new Error(`no ${SUFFIX} key in ${directory}`);
  }

  load() {
    const keys = new Map();
    for (const file of fs.readdirSync(this.directory)) {
      if (!file.endsWith(SUFFIX)) continue;
      const text = fs.readFileSync(path.join(this.directory, file), "utf8").trim();
      const secret = Buffer.from(text, "base64");
      if (secret.length >= 32) keys.set(file.slice(0, -SUFFIX.length), secret);
    }
    this.keys = keys;
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

module.exports = { TokenVerifier };
