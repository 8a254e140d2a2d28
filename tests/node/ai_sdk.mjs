// The Vercel AI SDK (`ai` + `@ai-sdk/openai`), unmodified, against joule.
// Driven by tests/python/test_vercel_ai_sdk.py; usable by hand too:
//
//   JOULE_BASE_URL=http://127.0.0.1:8080/v1 JOULE_KEY=sk-... JOULE_MODEL=llama-sdk \
//     node tests/node/ai_sdk.mjs stream
//
// Modes:
//   generate       generateText with openai(model): the Responses API, POST {base}/responses
//   stream         streamText with openai(model), twice: an untimed warm-up call, then the
//                  timed one, whose text deltas each print a line
//                  `delta <ms since the call> <JSON of the text>` as they arrive
//   generate-chat  generateText with openai.chat(model): POST {base}/chat/completions
//   stream-chat    streamText with openai.chat(model)
//   tools          generateText with openai(model), one tool `lookup({arg: string})`,
//                  toolChoice 'required', and a single step
//   tools-chat     the same with openai.chat(model)
//
// The last line of stdout is one JSON object with the results. Any error exits 1 with the
// error (status, URL and response body where the SDK has them) on stderr.

import { createOpenAI } from "@ai-sdk/openai";
import { generateText, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const MODES = ["generate", "stream", "generate-chat", "stream-chat", "tools", "tools-chat"];
const PROMPT = "Say hello";

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`environment variable ${name} is not set`);
  return value;
}

// The error, with what the SDK knows about the HTTP exchange (APICallError and friends).
function describe(error, depth = 0) {
  if (error == null || typeof error !== "object") return String(error);
  const lines = [`${error.name ?? "Error"}: ${error.message}`];
  for (const key of ["statusCode", "url", "responseBody", "text", "value"]) {
    if (error[key] !== undefined) {
      const value = typeof error[key] === "string" ? error[key] : JSON.stringify(error[key]);
      lines.push(`  ${key}: ${value}`);
    }
  }
  if (Array.isArray(error.errors)) {
    error.errors.forEach((inner, i) => lines.push(`  errors[${i}]: ${describe(inner, depth + 1)}`));
  }
  if (error.cause !== undefined && depth < 4) lines.push(`  cause: ${describe(error.cause, depth + 1)}`);
  if (depth === 0 && error.stack) lines.push(error.stack);
  return lines.join("\n");
}

function parsedBody(body) {
  if (typeof body !== "string") return body ?? null;
  try {
    return JSON.parse(body);
  } catch {
    return body;
  }
}

function toolCallsOf(calls) {
  return (calls ?? []).map((c) => ({ toolCallId: c.toolCallId, toolName: c.toolName, input: c.input }));
}

// Times in ms since `clock.start`, to 0.1 ms.
function since(clock) {
  return Math.round((performance.now() - clock.start) * 10) / 10;
}

// A fetch that notes in `clock.wire` when each piece of a streamed response body is read off
// the connection, before the SDK parses it (diagnostics for the delta times).
function timingFetch(clock) {
  return async (input, init) => {
    const response = await fetch(input, init);
    if (!response.body || !(response.headers.get("content-type") ?? "").includes("text/event-stream")) {
      return response;
    }
    const decoder = new TextDecoder();
    const body = response.body.pipeThrough(
      new TransformStream({
        transform(chunk, controller) {
          const events = decoder.decode(chunk, { stream: true }).split("data:").length - 1;
          clock.wire.push({ t: since(clock), events });
          controller.enqueue(chunk);
        },
      }),
    );
    return new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
  };
}

// One streamText call, read to the end: its text deltas with their arrival times (printed as
// they come when `print`), and the first error part thrown.
async function streamOnce(options, clock, print) {
  clock.start = performance.now();
  clock.wire = [];
  const result = streamText({ ...options, onError: () => {} }); // errors are read from fullStream
  const deltas = [];
  const errors = [];
  for await (const part of result.fullStream) {
    if (part.type === "text-delta") {
      const t = since(clock);
      deltas.push({ t, text: part.text });
      if (print) process.stdout.write(`delta ${t} ${JSON.stringify(part.text)}\n`);
    } else if (part.type === "error") {
      errors.push(part.error);
    }
  }
  if (errors.length > 0) {
    const error = errors[0] instanceof Error ? errors[0] : new Error(JSON.stringify(errors[0]));
    if (errors.length > 1) error.message += ` (and ${errors.length - 1} more stream errors)`;
    throw error;
  }
  return { result, deltas };
}

async function main() {
  const mode = process.argv[2];
  if (!MODES.includes(mode)) throw new Error(`usage: ai_sdk.mjs <${MODES.join("|")}>`);
  const clock = { start: performance.now(), wire: [] };
  const openai = createOpenAI({
    baseURL: env("JOULE_BASE_URL"),
    apiKey: env("JOULE_KEY"),
    fetch: timingFetch(clock),
  });
  const modelId = env("JOULE_MODEL");
  const chat = mode.endsWith("-chat");
  const model = chat ? openai.chat(modelId) : openai(modelId);
  // No retries: a failure must show, not be papered over.
  const common = { model, prompt: PROMPT, maxRetries: 0 };
  const out = { mode, model: modelId, provider: model.provider };

  if (mode.startsWith("generate") || mode.startsWith("tools")) {
    const options = { ...common };
    if (mode.startsWith("tools")) {
      Object.assign(options, {
        prompt: "Look up the value",
        tools: {
          lookup: tool({
            description: "Looks a value up",
            inputSchema: z.object({ arg: z.string() }),
            execute: async ({ arg }) => ({ found: arg }),
          }),
        },
        toolChoice: "required",
        stopWhen: stepCountIs(1), // one model call: the tool's result is not sent back
      });
    }
    const result = await generateText(options);
    Object.assign(out, {
      text: result.text,
      finishReason: result.finishReason,
      rawFinishReason: result.rawFinishReason ?? null,
      usage: result.usage,
      totalUsage: result.totalUsage,
      providerMetadata: result.providerMetadata ?? null,
      toolCalls: toolCallsOf(result.toolCalls),
      toolResults: (result.toolResults ?? []).map((r) => ({ toolName: r.toolName, output: r.output })),
      steps: result.steps.length,
      warnings: result.warnings ?? [],
      response: { id: result.response?.id, modelId: result.response?.modelId },
      requestBody: parsedBody(result.request?.body),
    });
  } else {
    // A first, untimed call pays the client's one-time costs (connection, cold code, the
    // SDK's lazily built schemas): paid during the timed call, they hold up the first events
    // for tens of ms, and the rest then arrive in one burst however well they were paced.
    await streamOnce(common, clock, false);
    const { result, deltas } = await streamOnce(common, clock, true);
    const request = await result.request;
    const response = await result.response;
    Object.assign(out, {
      text: await result.text,
      finishReason: await result.finishReason,
      rawFinishReason: (await result.rawFinishReason) ?? null,
      usage: await result.usage,
      totalUsage: await result.totalUsage,
      providerMetadata: (await result.providerMetadata) ?? null,
      toolCalls: toolCallsOf(await result.toolCalls),
      steps: (await result.steps).length,
      warnings: (await result.warnings) ?? [],
      response: { id: response?.id, modelId: response?.modelId },
      requestBody: parsedBody(request?.body),
      deltaTimesMs: deltas.map((d) => d.t),
      deltas: deltas.map((d) => d.text),
      wireChunks: clock.wire, // [{t: ms, events: how many `data:` lines the piece holds}]
    });
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((error) => {
  process.stderr.write(describe(error) + "\n");
  process.exit(1);
});
