// A secure-infer HE client in JavaScript, built from protocols/he/proto/inference.proto alone.
//
// It cannot encrypt (CKKS keys and ciphertexts need SEAL), so it does what a
// foreign client does before it brings its own SEAL binding: reads the layout
// over TLS with a token, reads its budget, and shows how a refusal arrives
// (the gRPC status plus the `secure-infer-code` trailing metadata).
//
//   npm install
//   node client.js HOST:PORT CA.pem TOKEN
const path = require("path");
const fs = require("fs");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [address, caFile, token] = process.argv.slice(2);
if (!address || !caFile) {
  console.error("usage: node client.js HOST:PORT CA.pem [TOKEN]");
  process.exit(2);
}
const root = path.resolve(__dirname, "..", "..");
const definition = loader.loadSync("protocols/he/proto/inference.proto", {
  includeDirs: [root], keepCase: true, longs: Number, defaults: true,
});
const v2 = grpc.loadPackageDefinition(definition).secureinfer.he.v2;
const credentials = grpc.credentials.createSsl(fs.readFileSync(caFile));
const client = new v2.Inference(address, credentials);
const metadata = new grpc.Metadata();
if (token) metadata.set("authorization", `Bearer ${token}`);

function call(method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + 30000 }, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

function refusal(err) {
  const code = err.metadata ? err.metadata.get("secure-infer-code")[0] : undefined;
  return { status: grpc.status[err.code], code: code || null, message: err.details };
}

(async () => {
  const out = {};
  try {
    const layout = await call("GetLayout", { protocol: 2, client_software: "node-example" });
    const parsed = JSON.parse(layout.layout_json);
    out.layout = { model: layout.model, mode: parsed.mode, input_shape: parsed.input_shape,
                   poly_modulus_degree: parsed.poly_modulus_degree, chunk_bytes: layout.chunk_bytes,
                   budget: layout.budget };
    out.budget = await call("GetBudget", {});
    await call("Resume", { session_id: "0".repeat(32) });
  } catch (err) {
    out.refused = refusal(err);
  }
  console.log(JSON.stringify(out));
  client.close();
})();
