// Runs the compiled scripts/stubs/main.ts under Node (scripts/stubs.py):
//   node run.mjs OUT_DIR
// writes OUT_DIR/create_run.binpb and OUT_DIR/update_agent.binpb and fails when a service
// descriptor does not match the contract. Plain JavaScript so that the type-checked module
// needs no Node typings.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { createRunRequest, serviceProblems, updateAgentRequest } from "./out/example/main.js";

const [outDir] = process.argv.slice(2);
if (!outDir) {
  console.error("usage: node run.mjs OUT_DIR");
  process.exit(2);
}
const problems = serviceProblems();
if (problems.length > 0) {
  console.error(`ts stubs: service descriptors differ from the contract:\n  ${problems.join("\n  ")}`);
  process.exit(1);
}
writeFileSync(join(outDir, "create_run.binpb"), createRunRequest());
writeFileSync(join(outDir, "update_agent.binpb"), updateAgentRequest());
console.log("ts stubs: fixtures written, service descriptors ok");
