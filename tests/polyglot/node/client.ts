// A Node/TypeScript client of the platform: Connect v2 over gRPC (HTTP/2) with the
// protoc-gen-es stubs under generated/ts.
//
//   tsx tests/polyglot/node/client.ts HOST:PORT API_KEY
//
// Prints one JSON object per line on stdout, one per call:
//   {"call":"genai.gateway.v1.GatewayService/GetServerInfo","ok":true,"response":{...proto JSON}}
//   {"call":"grpc.health.v1.Health/Check","ok":true,"service":"...","status":"SERVING"}
//   {"call":"genai.prompt.v1.PromptService/GetPrompt","ok":false,"code":5,"codeName":"NotFound",
//    "message":"...","errorInfo":{"reason":"PROMPT_NOT_FOUND","domain":"genai.platform","metadata":{...}}}
//   {"call":"genai.evaluation.v1.EvaluationService/GetDataset","ok":false,"code":5,
//    "codeName":"NotFound","message":"...","errorInfo":{"reason":"DATASET_NOT_FOUND",...}}
//   {"call":"genai.gateway.v1.GatewayService/StreamComplete","ok":true,"events":["start",
//    "delta",...,"final"],"text":"...","final":{...proto JSON}}
// Every call but GetServerInfo sends the API key as `authorization: Bearer API_KEY`.
// An expected error is a line with "ok":false; anything unexpected exits non-zero.

import { toJson } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { CompletionMetadataSchema } from "../../../generated/ts/genai/gateway/v1/gateway_pb.js";
import { GatewayService, GetServerInfoResponseSchema } from "../../../generated/ts/genai/gateway/v1/gateway_service_pb.js";
import { EvaluationService } from "../../../generated/ts/genai/evaluation/v1/evaluation_service_pb.js";
import { PromptService } from "../../../generated/ts/genai/prompt/v1/prompt_service_pb.js";
import { ErrorInfoSchema, Health } from "./standard_protos.js";

const CALL_OPTIONS = { timeoutMs: 10_000 };

function emit(line: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

function describeError(call: string, error: unknown): Record<string, unknown> {
  const connectError = ConnectError.from(error);
  const [errorInfo] = connectError.findDetails(ErrorInfoSchema);
  return {
    call,
    ok: false,
    code: connectError.code,
    codeName: Code[connectError.code],
    message: connectError.rawMessage,
    errorInfo: errorInfo === undefined ? null : toJson(ErrorInfoSchema, errorInfo),
  };
}

async function main(address: string, apiKey: string): Promise<void> {
  // The gRPC transport of Connect v2 always speaks HTTP/2 (h2c for http://).
  const transport = createGrpcTransport({
    baseUrl: `http://${address}`,
    interceptors: [
      (next) => async (request) => {
        request.header.set("authorization", `Bearer ${apiKey}`);
        return await next(request);
      },
    ],
  });

  const gateway = createClient(GatewayService, transport);
  const info = await gateway.getServerInfo({}, CALL_OPTIONS);
  emit({
    call: "genai.gateway.v1.GatewayService/GetServerInfo",
    ok: true,
    response: toJson(GetServerInfoResponseSchema, info),
  });

  // The overall server ("") and every hosted service, as a load balancer would check them.
  const health = createClient(Health, transport);
  for (const service of ["", ...info.hostedServices]) {
    const response = await health.check({ service }, CALL_OPTIONS);
    const json = toJson(Health.method.check.output, response, { alwaysEmitImplicit: true }) as {
      status: string;
    };
    emit({ call: "grpc.health.v1.Health/Check", ok: true, service, status: json.status });
  }

  const prompts = createClient(PromptService, transport);
  await expectError("genai.prompt.v1.PromptService/GetPrompt", async () => {
    const response = await prompts.getPrompt({ name: "x" }, CALL_OPTIONS);
    return response.prompt?.name ?? null;
  });
  const evaluation = createClient(EvaluationService, transport);
  await expectError("genai.evaluation.v1.EvaluationService/GetDataset", async () => {
    const response = await evaluation.getDataset({ name: "x" }, CALL_OPTIONS);
    return response.dataset?.name ?? null;
  });

  // A streamed completion of the sample `chat` prompt, pinned to the zero-compute model.
  const events: string[] = [];
  let text = "";
  let final: unknown = null;
  for await (const message of gateway.streamComplete(
    {
      prompt: "chat",
      variables: { message: "hello from Node" },
      routing: { model: "zero" },
      parameters: { maxTokens: 4 },
    },
    { timeoutMs: 60_000 },
  )) {
    events.push(message.event.case ?? "none");
    if (message.event.case === "delta") {
      text += message.event.value.text;
    } else if (message.event.case === "final") {
      final = toJson(CompletionMetadataSchema, message.event.value);
    }
  }
  emit({ call: "genai.gateway.v1.GatewayService/StreamComplete", ok: true, events, text, final });
}

// Emits the call's error line, or an "ok" line when it unexpectedly succeeds.
async function expectError(call: string, invoke: () => Promise<unknown>): Promise<void> {
  try {
    emit({ call, ok: true, response: await invoke() });
  } catch (error) {
    if (!(error instanceof ConnectError)) {
      throw error;
    }
    emit(describeError(call, error));
  }
}

const [address, apiKey] = process.argv.slice(2);
if (address === undefined || apiKey === undefined) {
  process.stderr.write("usage: client.ts HOST:PORT API_KEY\n");
  process.exit(2);
}
await main(address, apiKey);
