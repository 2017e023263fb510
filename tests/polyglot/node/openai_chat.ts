// The gateway's OpenAI-compatible HTTP API from Node, with the official `openai` SDK (6.x).
//
//   tsx tests/polyglot/node/openai_chat.ts BASE_URL API_KEY [MODEL]
//
// BASE_URL is the API's root (`http://127.0.0.1:8080/v1`); MODEL defaults to
// smollm2-135m-instruct. Prints one JSON object per line on stdout, one per call:
//   {"call":"chat.completions.create","stream":true,"text":"...","chunks":N,"model":"...",
//    "finishReason":"stop","usage":{...},"headers":{"x-genai-model":"...",...}}
//   {"call":"chat.completions.create","stream":false,"text":"...","model":"...",...}
//   {"call":"models.list","ids":["smollm2-135m-instruct",...]}
//   {"call":"chat.completions.create","ok":false,"status":404,"error":{...OpenAI error}}
// An expected error is a line with "ok":false; anything unexpected exits non-zero.

import OpenAI from "openai";

const QUESTION = "What is the capital of France?";

function emit(line: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

function genaiHeaders(response: Response): Record<string, string> {
  const headers: Record<string, string> = {};
  response.headers.forEach((value, name) => {
    if (name.startsWith("x-genai-") || name === "x-request-id") headers[name] = value;
  });
  return headers;
}

async function main(baseURL: string, apiKey: string, model: string): Promise<void> {
  const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 120_000 });
  const messages: OpenAI.Chat.ChatCompletionMessageParam[] = [{ role: "user", content: QUESTION }];

  const { data: stream, response } = await client.chat.completions
    .create({
      model,
      messages,
      max_tokens: 16,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    })
    .withResponse();
  let text = "";
  let chunks = 0;
  let finishReason: string | null = null;
  let usage: OpenAI.CompletionUsage | null | undefined = null;
  let served = "";
  for await (const chunk of stream) {
    chunks += 1;
    served = chunk.model;
    const choice = chunk.choices[0];
    if (choice !== undefined) {
      text += choice.delta.content ?? "";
      finishReason = choice.finish_reason ?? finishReason;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  emit({
    call: "chat.completions.create",
    stream: true,
    text,
    chunks,
    model: served,
    finishReason,
    usage,
    headers: genaiHeaders(response),
  });

  const { data: completion, response: whole } = await client.chat.completions
    .create({ model, messages, max_tokens: 16, temperature: 0 })
    .withResponse();
  emit({
    call: "chat.completions.create",
    stream: false,
    text: completion.choices[0]?.message.content ?? "",
    model: completion.model,
    finishReason: completion.choices[0]?.finish_reason ?? null,
    usage: completion.usage ?? null,
    headers: genaiHeaders(whole),
  });

  const ids: string[] = [];
  for await (const listed of client.models.list()) ids.push(listed.id);
  emit({ call: "models.list", ids });

  try {
    await client.chat.completions.create({ model: "no-such-model", messages, max_tokens: 4 });
    throw new Error("an unknown model was served");
  } catch (error) {
    if (!(error instanceof OpenAI.APIError)) throw error;
    emit({ call: "chat.completions.create", ok: false, status: error.status, error: error.error });
  }
}

const [baseURL, apiKey, model = "smollm2-135m-instruct"] = process.argv.slice(2);
if (baseURL === undefined || apiKey === undefined) {
  process.stderr.write("usage: openai_chat.ts BASE_URL API_KEY [MODEL]\n");
  process.exit(2);
}
main(baseURL, apiKey, model).catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
