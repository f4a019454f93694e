#!/usr/bin/env node
// Calls the dualdistill teacher over gRPC: ListModels, then GetLogits (format "json") for one sequence,
// and prints each response position as a row: the actual token's logprob, the top-k ids with their
// probabilities, and the tail mass outside the top-k.
//
//   npm ci && node client.js --target 127.0.0.1:50051 --token-ids 1,2,3,4,5,6 --top-k 5
//   (the key, when the server has keys, comes from --api-key or DUALDISTILL_API_KEY)
//
// The contract is ../../protos/dualdistill/v1/teacher.proto, loaded at run time (no generated code).
"use strict";

const path = require("node:path");
const { parseArgs } = require("node:util");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "protos");

function loadTeacherService() {
  const definition = protoLoader.loadSync("dualdistill/v1/teacher.proto", {
    includeDirs: [PROTO_ROOT],
    keepCase: true, // field names as in the proto (and the HTTP JSON): token_ids, row_lengths, ...
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).dualdistill.v1.Teacher;
}

function call(client, method, request, metadata, deadlineSeconds) {
  const deadline = new Date(Date.now() + deadlineSeconds * 1000);
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline }, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

// A SequenceResult holds flat arrays; row r owns row_lengths[r] consecutive entries of top_ids/top_logprobs.
function decodeRows(result, start) {
  const rows = [];
  let offset = 0;
  result.row_lengths.forEach((length, r) => {
    const top = [];
    for (let j = offset; j < offset + length; j++) {
      top.push({ id: result.top_ids[j], logprob: result.top_logprobs[j] });
    }
    offset += length;
    rows.push({
      position: start + r,
      tokenLogprob: result.token_logprobs[r],
      tailLogprob: result.tail_logprobs[r],
      top,
    });
  });
  return rows;
}

function formatTable(rows, tokenIds) {
  const lines = ["position  token  logprob   tail     top-k (id:prob)"];
  for (const row of rows) {
    const tail = Number.isFinite(row.tailLogprob) ? row.tailLogprob.toFixed(3) : "-inf";
    const top = row.top.map((entry) => `${entry.id}:${Math.exp(entry.logprob).toFixed(3)}`).join(" ");
    lines.push(
      `${String(row.position).padStart(8)}  ${String(tokenIds[row.position]).padStart(5)}  ` +
        `${row.tokenLogprob.toFixed(3).padStart(7)}  ${tail.padStart(7)}  ${top}`,
    );
  }
  return lines.join("\n");
}

async function main() {
  const { values } = parseArgs({
    options: {
      target: { type: "string", default: process.env.TEACHER_GRPC || "127.0.0.1:50051" },
      "api-key": { type: "string", default: process.env.DUALDISTILL_API_KEY || "" },
      model: { type: "string", default: "" },
      "token-ids": { type: "string", default: "1,2,3,4,5,6,7,8" },
      start: { type: "string", default: "1" },
      "top-k": { type: "string", default: "5" },
      deadline: { type: "string", default: "60" },
    },
  });
  const Teacher = loadTeacherService();
  const client = new Teacher(values.target, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  if (values["api-key"]) metadata.set("authorization", `Bearer ${values["api-key"]}`);
  const deadline = Number(values.deadline);

  try {
    const listed = await call(client, "ListModels", {}, metadata, deadline);
    console.log("models:");
    for (const m of listed.models) {
      console.log(`  ${m.name}  vocab=${m.vocab_size}  dtype=${m.dtype}  max_top_k=${m.max_top_k}  fingerprint=${m.fingerprint.slice(0, 12)}`);
    }
    if (listed.models.length === 0) throw new Error("the server lists no models");

    const model = values.model || listed.models[0].name;
    const tokenIds = values["token-ids"].split(",").map((s) => Number.parseInt(s.trim(), 10));
    const start = Number.parseInt(values.start, 10);
    const response = await call(
      client,
      "GetLogits",
      {
        model,
        sequences: [{ token_ids: tokenIds, start }],
        top_k: Number.parseInt(values["top-k"], 10),
        format: "json",
        request_id: "node-example",
      },
      metadata,
      deadline,
    );
    console.log(`\nlogits from ${response.model} (fingerprint ${response.fingerprint.slice(0, 12)}, request ${response.request_id}):`);
    console.log(formatTable(decodeRows(response.results[0], start), tokenIds));
  } catch (error) {
    const status = error.code !== undefined ? `${grpc.status[error.code]}: ` : "";
    console.error(`error: ${status}${error.details || error.message}`);
    process.exitCode = 1;
  } finally {
    client.close();
  }
}

main();
