// Drives the Responses API of `tokenmill serve` with the official `openai` npm package
// (v4): create (with `response.output_text`), stream (every event, in order, numbered;
// deltas joined), the SDK's ResponseStream helper, previous_response_id follow-ups,
// structured output through text.format, input items, retrieve, delete, store: false, and
// the 400s and 404s. Run from a folder whose node_modules holds the package:
// `node openai_responses.mjs http://127.0.0.1:PORT/v1`.
// Prints one JSON object with what it saw; exits non-zero on any unexpected failure.
import { createRequire } from 'module';

const require = createRequire(process.cwd() + '/');
const OpenAI = require('openai');

const client = new OpenAI({ baseURL: process.argv[2], apiKey: 'unused', maxRetries: 0 });
const out = {};
const model = (await client.models.list()).data[0].id;

/// The error an awaited call threw, as {status, param, message}; {status: 200} if none.
async function failure(promise) {
  try {
    await promise;
    return { status: 200 };
  } catch (e) {
    return { status: e.status ?? null, param: e.error?.param ?? e.param ?? null,
             message: e.error?.message ?? e.message ?? String(e) };
  }
}

const textOf = (r) => r.output.filter((o) => o.type === 'message')
  .flatMap((o) => o.content).filter((c) => c.type === 'output_text').map((c) => c.text).join('');

// Create: the whole response object.
const first = await client.responses.create({
  model, input: 'Hello there', instructions: 'You are terse.', max_output_tokens: 6,
  metadata: { run: 'conformance' },
});
out.create = {
  id: first.id, object: first.object, status: first.status,
  incomplete_details: first.incomplete_details, output_text: first.output_text,
  text_from_output: textOf(first), item_type: first.output[0]?.type,
  item_role: first.output[0]?.role, usage: first.usage, metadata: first.metadata,
  instructions: first.instructions, max_output_tokens: first.max_output_tokens,
};

// Stream: every event as it came.
const stream = await client.responses.create({
  model, input: 'Hello there', instructions: 'You are terse.', max_output_tokens: 6,
  stream: true,
});
const types = [];
const seqs = [];
let deltas = '';
let deltaCount = 0;
let last = null;
for await (const ev of stream) {
  types.push(ev.type);
  seqs.push(ev.sequence_number);
  if (ev.type === 'response.output_text.delta') { deltas += ev.delta; deltaCount += 1; }
  if (ev.type === 'response.completed' || ev.type === 'response.incomplete') last = ev.response;
}
out.stream = {
  types, seqs, deltas, delta_count: deltaCount, final_text: last ? textOf(last) : null,
  final_status: last?.status ?? null, final_usage: last?.usage ?? null, final_id: last?.id ?? null,
};

// The SDK's own stream accumulator (snapshot from response.created, deltas applied, the
// object replaced by response.completed's): a JSON answer, so that it completes.
const helper = client.responses.stream({
  model, input: 'Hello there', max_output_tokens: 50,
  text: { format: { type: 'json_object' } },
});
let helperDeltas = '';
helper.on('response.output_text.delta', (e) => { helperDeltas += e.delta; });
const helperFinal = await helper.finalResponse();
out.stream_helper = { deltas: helperDeltas, final_text: textOf(helperFinal),
                      status: helperFinal.status, usage: helperFinal.usage };

// A follow-up continues the stored conversation (its input tokens include the history);
// the same input without previous_response_id is the baseline.
const followUp = await client.responses.create({
  model, input: 'And then?', previous_response_id: first.id, max_output_tokens: 4,
});
const fresh = await client.responses.create({ model, input: 'And then?', max_output_tokens: 4 });
out.follow_up = {
  previous_response_id: followUp.previous_response_id, status: followUp.status,
  input_tokens: followUp.usage.input_tokens, fresh_input_tokens: fresh.usage.input_tokens,
};
// A chain of two: the third turn sees both earlier ones.
const third = await client.responses.create({
  model, input: 'And then?', previous_response_id: followUp.id, max_output_tokens: 4,
});
out.follow_up.third_input_tokens = third.usage.input_tokens;

// Structured output through text.format (the sim engine follows the grammar).
const schema = {
  type: 'object',
  properties: { city: { type: 'string', maxLength: 8 }, rainy: { type: 'boolean' } },
  required: ['city', 'rainy'], additionalProperties: false,
};
const structured = await client.responses.parse({
  model, input: 'The weather, as JSON.', max_output_tokens: 100,
  text: { format: { type: 'json_schema', name: 'weather', schema, strict: true } },
});
out.structured = { status: structured.status, parsed: structured.output_parsed,
                   format: structured.text.format.type };

// The input items of a response: its own input, not the earlier turns (auto-paginated by
// the SDK with `after`).
const items = [];
for await (const item of client.responses.inputItems.list(first.id, { order: 'asc', limit: 1 })) {
  items.push({ role: item.role, text: item.content.map((c) => c.text).join('') });
}
const followItems = [];
for await (const item of client.responses.inputItems.list(followUp.id)) {
  followItems.push(item.content.map((c) => c.text).join(''));
}
out.input_items = { first: items, follow_up: followItems };

// Retrieve, delete, and what is left after.
const got = await client.responses.retrieve(first.id);
out.retrieve = { id: got.id, text: textOf(got), status: got.status };
await client.responses.del(first.id);
out.deleted = {
  retrieve: await failure(client.responses.retrieve(first.id)),
  follow_up: await failure(client.responses.create({
    model, input: 'More?', previous_response_id: first.id, max_output_tokens: 2,
  })),
  delete_again: await failure(client.responses.del(first.id)),
};
const unstored = await client.responses.create({
  model, input: 'Hi', max_output_tokens: 2, store: false,
});
out.unstored = await failure(client.responses.retrieve(unstored.id));

// Bad requests: 400 naming the field.
out.bad_tools = await failure(client.responses.create({
  model, input: 'Hi',
  tools: [{ type: 'function', name: 'f', parameters: { type: 'object', properties: {} } }],
}));
out.bad_image = await failure(client.responses.create({
  model,
  input: [{ role: 'user', content: [{ type: 'input_image', image_url: 'http://127.0.0.1/x.png' }] }],
}));
out.bad_tokens = await failure(client.responses.create({ model, input: 'Hi', max_output_tokens: 0 }));

console.log(JSON.stringify(out));
