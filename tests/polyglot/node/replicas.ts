// A Node/TypeScript client that balances over the platform's replicas: @grpc/grpc-js (the
// Connect transport of client.ts dials one address) with the platform's service config
// (../service_config.json, the one Python's services.common.clients builds): round_robin over
// every address and retries of the contract's idempotent RPCs on UNAVAILABLE. grpc-js 1.14
// ignores the config's healthCheckConfig; a replica that stops is dropped when its connection
// closes (GOAWAY) instead. Messages are the protoc-gen-es stubs under generated/ts.
//
//   tsx tests/polyglot/node/replicas.ts TARGET CALLS
//
// TARGET is HOST:PORT, several IP:PORT separated by commas, or dns:///NAME:PORT (every address
// the name resolves to, as for a Kubernetes headless Service). Makes CALLS GetServerInfo calls
// one after another and prints one JSON object per call:
//   {"call":"genai.gateway.v1.GatewayService/GetServerInfo","ok":true,"version":"0.1.0"}
//   {"call":"genai.gateway.v1.GatewayService/GetServerInfo","ok":false,"code":14,"message":"..."}

import { readFileSync } from "node:fs";
import { isIP } from "node:net";

import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, DescMethodUnary, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";

import { GatewayService } from "../../../generated/ts/genai/gateway/v1/gateway_service_pb.js";

const SERVICE_CONFIG = readFileSync(new URL("../service_config.json", import.meta.url), "utf8");

// The gRPC target for what a user wrote: a list of IP:PORT becomes grpc-js's `ipv4:`/`ipv6:`
// address list; anything else (HOST:PORT, dns:///NAME:PORT, ipv4:...) is passed through.
export function grpcTarget(written: string): string {
  if (!written.includes(",") || /^(dns|ipv4|ipv6|unix):/.test(written)) {
    return written;
  }
  const addresses = written.split(",").map((address) => address.trim());
  const families = new Set(
    addresses.map((address) => isIP(address.slice(0, address.lastIndexOf(":")).replace(/^\[(.*)\]$/, "$1"))),
  );
  if (families.size !== 1 || families.has(0)) {
    throw new Error(`${written}: list IP:PORT addresses of one family, or use dns:///NAME:PORT`);
  }
  return `${families.has(4) ? "ipv4" : "ipv6"}:${addresses.join(",")}`;
}

// A grpc-js client over every replica of `target`, balanced and retrying as the service config
// says (grpc-js retries by default; the option makes it explicit).
export function replicaClient(target: string): grpc.Client {
  return new grpc.Client(grpcTarget(target), grpc.credentials.createInsecure(), {
    "grpc.service_config": SERVICE_CONFIG,
    "grpc.enable_retries": 1,
  });
}

// Calls a unary RPC, described by the protoc-gen-es stubs, over a grpc-js client.
export function callUnary<I extends DescMessage, O extends DescMessage>(
  client: grpc.Client,
  method: DescMethodUnary<I, O>,
  request: MessageInitShape<I>,
  options: { metadata?: grpc.Metadata; timeoutMs?: number } = {},
): Promise<MessageShape<O>> {
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(
      `/${method.parent.typeName}/${method.name}`,
      (message: MessageShape<I>) => Buffer.from(toBinary(method.input, message)),
      (bytes: Buffer) => fromBinary(method.output, bytes),
      create(method.input, request),
      options.metadata ?? new grpc.Metadata(),
      { deadline: Date.now() + (options.timeoutMs ?? 10_000) },
      (error, response) => (error || response === undefined ? reject(error) : resolve(response)),
    );
  });
}

async function main(target: string, calls: number): Promise<void> {
  const client = replicaClient(target);
  const call = "genai.gateway.v1.GatewayService/GetServerInfo";
  try {
    for (let i = 0; i < calls; i++) {
      try {
        const info = await callUnary(client, GatewayService.method.getServerInfo, {});
        process.stdout.write(`${JSON.stringify({ call, ok: true, version: info.version })}\n`);
      } catch (error) {
        const status = error as grpc.ServiceError;
        process.stdout.write(`${JSON.stringify({ call, ok: false, code: status.code, message: status.details })}\n`);
      }
    }
  } finally {
    client.close();
  }
}

const [target, calls] = process.argv.slice(2);
if (target === undefined || calls === undefined || !(Number(calls) > 0)) {
  process.stderr.write("usage: replicas.ts TARGET CALLS\n");
  process.exit(2);
}
await main(target, Number(calls));
