// Tool calls through the official `openai` npm package (v4): a named function and
// "required" (the output is constrained to one call, so even a random model's arguments
// parse as JSON under the function's schema), the same streamed (tool_calls deltas), a
// follow-up turn that sends the call and a role "tool" result back, and the 400s for an
// unknown function name and a schema the grammar compiler refuses. Run from a folder
// whose node_modules holds the package: `node openai_tools.mjs http://127.0.0.1:PORT/v1`.
// Prints one JSON object with what it saw; exits non-zero on any unexpected failure.
import { createRequire } from 'module';

const require = createRequire(process.cwd() + '/');
const OpenAI = require('openai');

const client = new OpenAI({ baseURL: process.argv[2], apiKey: 'unused', maxRetries: 0 });
const out = {};
const model = (await client.models.list()).data[0].id;

const tools = [
  {
    type: 'function',
    function: {
      name: 'get_weather',
      description: 'The weather in a city',
      strict: true,
      parameters: {
        type: 'object',
        properties: {
          city: { type: 'string', minLength: 1, maxLength: 8 },
          days: { type: 'integer' },
          unit: { enum: ['C', 'F'] },
        },
        required: ['city', 'days', 'unit'],
        additionalProperties: false,
      },
    },
  },
  {
    type: 'function',
    function: {
      name: 'get_time',
      parameters: {
        type: 'object',
        properties: { zone: { type: 'string', maxLength: 4 } },
        required: ['zone'],
        additionalProperties: false,
      },
    },
  },
];
const messages = [{ role: 'user', content: 'What is the weather in Paris?' }];
const named = { type: 'function', function: { name: 'get_weather' } };

const calls = (message) => (message.tool_calls ?? []).map((c) => ({
  id: c.id, type: c.type, name: c.function.name, args: JSON.parse(c.function.arguments),
}));

const chat = await client.chat.completions.create({
  model, messages, tools, tool_choice: named, max_tokens: 200,
});
const message = chat.choices[0].message;
out.named = { finish_reason: chat.choices[0].finish_reason, content: message.content, calls: calls(message) };

const req = await client.chat.completions.create({
  model, messages, tools, tool_choice: 'required', max_tokens: 200,
});
out.required = { finish_reason: req.choices[0].finish_reason, calls: calls(req.choices[0].message) };

const stream = await client.chat.completions.create({
  model, messages, tools, tool_choice: named, max_tokens: 200, stream: true,
});
const streamed = [];
let finish = null;
let content = '';
for await (const part of stream) {
  if (part.choices.length === 0) continue;
  const choice = part.choices[0];
  for (const d of choice.delta.tool_calls ?? []) {
    streamed[d.index] ??= { id: '', name: '', arguments: '' };
    if (d.id) streamed[d.index].id = d.id;
    if (d.function?.name) streamed[d.index].name += d.function.name;
    if (d.function?.arguments) streamed[d.index].arguments += d.function.arguments;
  }
  if (choice.delta.content) content += choice.delta.content;
  if (choice.finish_reason) finish = choice.finish_reason;
}
out.stream = {
  finish_reason: finish, content,
  calls: streamed.map((c) => ({ id: c.id, name: c.name, args: JSON.parse(c.arguments) })),
};

// The conversation goes on: the assistant's call and the tool's result are sent back.
const call = message.tool_calls[0];
const follow = await client.chat.completions.create({
  model, tools, max_tokens: 5, tool_choice: 'none',
  messages: [...messages, message, { role: 'tool', tool_call_id: call.id, content: '{"temp": 21}' }],
});
out.follow_up = {
  finish_reason: follow.choices[0].finish_reason,
  content_type: typeof follow.choices[0].message.content,
  completion_tokens: follow.usage.completion_tokens,
};

const refused = async (body) => {
  try {
    await client.chat.completions.create({ model, messages, max_tokens: 5, ...body });
    return { status: 200 };
  } catch (e) {
    return { status: e.status, param: e.error?.param ?? null, message: e.error?.message ?? String(e) };
  }
};
out.unknown_name = await refused({
  tools, tool_choice: { type: 'function', function: { name: 'get_stock' } },
});
out.bad_schema = await refused({
  tool_choice: 'required',
  tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: { n: { type: 'integer', minimum: 0 } } } } }],
});

console.log(JSON.stringify(out));
