// A TypeScript module over the helix.v1 stubs that buf.gen.yaml generates with
// protoc-gen-es (scripts/stubs.py type-checks it with `tsc --strict`, then runs it through
// run.mjs under Node). It proves the generated API is usable, not only that it compiles:
// the fixture messages are the ones scripts/stubs.py builds in Python (expected_messages)
// and run.mjs writes their wire encoding for the script to compare; the service
// descriptors are checked against the contract.
//
// The generated code sits in ../ts next to this file's directory at build time
// (scripts/stubs.py lays the work directory out as ts/ and example/).
import { create, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import { Objective } from "../ts/helix/v1/common_pb.js";
import { OracleService } from "../ts/helix/v1/oracle_pb.js";
import { CreateRunRequestSchema, OrchestratorService } from "../ts/helix/v1/orchestrator_pb.js";
import { RegistryService, UpdateAgentRequestSchema } from "../ts/helix/v1/registry_pb.js";

/** The fixture CreateRunRequest: a oneof, an enum, a Duration and proto3 optionals. */
export function createRunRequest(): Uint8Array {
  const message = create(CreateRunRequestSchema, {
    run: {
      displayName: "rastrigin via stubs",
      dnaSource: { case: "dnaName", value: "dnas/rastrigin" },
      oracle: "oracles/rastrigin",
      objective: Objective.MINIMIZE,
      budget: {
        maxEvaluations: 20000n,
        maxDuration: durationFromMs(90_500),
        maxGenerations: 50,
      },
      targetScore: 0.25,
      seed: 7n,
    },
    runId: "stubs-run",
    requestId: "0f6c2d3e-stubs",
  });
  return toBinary(CreateRunRequestSchema, message);
}

/** The fixture UpdateAgentRequest: a map and a FieldMask. */
export function updateAgentRequest(): Uint8Array {
  // The request type of RegistryService.UpdateAgent, taken from the service descriptor.
  const init: MessageInitShape<typeof RegistryService.method.updateAgent.input> = {
    agent: {
      name: "agents/oracle-7",
      labels: { zone: "eu-1", tier: "gold" },
      ttl: { seconds: 30n },
    },
    updateMask: { paths: ["labels", "ttl"] },
  };
  return toBinary(UpdateAgentRequestSchema, create(UpdateAgentRequestSchema, init));
}

/** Problems with the service descriptors; empty when they match the contract. */
export function serviceProblems(): string[] {
  const problems: string[] = [];
  const expect = (what: string, got: unknown, want: unknown): void => {
    if (got !== want) {
      problems.push(`${what}: got ${String(got)}, want ${String(want)}`);
    }
  };
  expect("RegistryService.typeName", RegistryService.typeName, "helix.v1.RegistryService");
  expect("ListAgents kind", RegistryService.method.listAgents.methodKind, "unary");
  expect("WatchAgents kind", RegistryService.method.watchAgents.methodKind, "server_streaming");
  expect("VerifyStream kind", OracleService.method.verifyStream.methodKind, "bidi_streaming");
  expect("CreateRun name", OrchestratorService.method.createRun.name, "CreateRun");
  expect(
    "CreateRun input",
    OrchestratorService.method.createRun.input.typeName,
    "helix.v1.CreateRunRequest",
  );
  expect(
    "GetOracle idempotency",
    OracleService.method.getOracle.idempotency,
    MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS,
  );
  return problems;
}
