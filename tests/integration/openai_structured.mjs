// Structured output through the official `openai` npm package (v4): response_format
// json_schema and json_object on chat, the tokenmill.regex extension on completions
// (passed through as an extra body field), streamed structured output, and the 400 a
// refused schema gets. Run from a folder whose node_modules holds the package:
// `node openai_structured.mjs http://127.0.0.1:PORT/v1`. Prints one JSON object with what
// it saw; exits non-zero on any unexpected failure.
import { createRequire } from 'module';

const require = createRequire(process.cwd() + '/');
const OpenAI = require('openai');

const client = new OpenAI({ baseURL: process.argv[2], apiKey: 'unused', maxRetries: 0 });
const out = {};
const model = (await client.models.list()).data[0].id;

const schema = {
  type: 'object',
  properties: {
    city: { type: 'string', minLength: 1, maxLength: 8 },
    rainy: { type: 'boolean' },
    temp: { type: 'integer' },
    unit: { enum: ['C', 'F'] },
  },
  required: ['city', 'rainy', 'temp', 'unit'],
  additionalProperties: false,
};
const messages = [{ role: 'user', content: 'The weather, as JSON.' }];
const rf = { type: 'json_schema', json_schema: { name: 'weather', strict: true, schema } };

const chat = await client.chat.completions.create({
  model, messages, max_tokens: 200, response_format: rf,
});
const content = chat.choices[0].message.content;
out.json_schema = { content, finish_reason: chat.choices[0].finish_reason, parsed: JSON.parse(content) };

const stream = await client.chat.completions.create({
  model, messages, max_tokens: 200, response_format: rf, stream: true,
});
let streamed = '';
for await (const part of stream) {
  if (part.choices.length > 0 && part.choices[0].delta.content) streamed += part.choices[0].delta.content;
}
out.stream = { content: streamed };

const re = await client.completions.create({
  model, prompt: 'Answer:', max_tokens: 10, tokenmill: { regex: '(yes|no)[.!]' },
});
out.regex = { text: re.choices[0].text, finish_reason: re.choices[0].finish_reason };

try {
  await client.chat.completions.create({
    model, messages, max_tokens: 5,
    response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'integer', minimum: 0 } } },
  });
  out.refused = { status: 200 };
} catch (e) {
  out.refused = { status: e.status, message: e.error?.message ?? String(e) };
}

console.log(JSON.stringify(out));
