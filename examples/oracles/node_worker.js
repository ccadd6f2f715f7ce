// A command oracle in JavaScript (Node.js, no dependencies): 0/1 knapsack, the same
// instance as python_worker.py. Protocol: docs/oracle-protocol.md.
"use strict";
const readline = require("node:readline");

const WEIGHTS = [23, 31, 29, 44, 53, 38, 63, 85, 89, 82];
const VALUES = [92, 57, 49, 68, 60, 43, 67, 84, 87, 72];
const CAPACITY = 165; // optimum 309: items 0, 1, 2, 3, 5

function judge(request) {
  const take = request.genome.take;
  if (!Array.isArray(take) || take.length !== WEIGHTS.length) {
    return { id: request.id, status: "error", message: `take must list ${WEIGHTS.length} flags` };
  }
  let weight = 0;
  let value = 0;
  take.forEach((t, i) => {
    if (t) {
      weight += WEIGHTS[i];
      value += VALUES[i];
    }
  });
  const over = Math.max(0, weight - CAPACITY);
  const verdict = {
    id: request.id,
    status: over ? "failed" : "passed",
    score: value - 10 * over,
    metrics: { weight, value },
  };
  if (over) verdict.message = `${over} over capacity`;
  return verdict;
}

// Run as a program (`node node_worker.js`, what oracles.yaml starts): answer JSON Lines on
// stdin/stdout. Required as a module (examples/node/oracle_agent.js): export `judge` and the
// instance, and read nothing.
function serve() {
  const lines = readline.createInterface({ input: process.stdin });
  lines.on("line", (line) => {
    const request = JSON.parse(line);
    let verdict;
    try {
      verdict = judge(request);
    } catch (err) {
      verdict = { id: request.id, status: "error", message: String(err).slice(0, 1000) };
    }
    process.stdout.write(JSON.stringify(verdict) + "\n");
  });
}

module.exports = { judge, WEIGHTS, VALUES, CAPACITY };

if (require.main === module) {
  serve();
}
