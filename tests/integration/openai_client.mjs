// Drives `tokenmill serve` with the official `openai` npm package (v4): models,
// completions, chat, streaming with usage, and an error. Run from a folder whose
// node_modules holds the package: `node openai_client.mjs http://127.0.0.1:PORT/v1`.
// Prints one JSON object with what it saw; exits non-zero on any unexpected failure.
import { createRequire } from 'module';

const require = createRequire(process.cwd() + '/');
const OpenAI = require('openai');

const client = new OpenAI({ baseURL: process.argv[2], apiKey: 'unused', maxRetries: 0 });
const out = {};

const models = await client.models.list();
out.models = models.data.map((m) => m.id);
const model = out.models[0];

const c = await client.completions.create({ model, prompt: 'Hello there', max_tokens: 5 });
out.completion = {
  text: c.choices[0].text,
  finish_reason: c.choices[0].finish_reason,
  completion_tokens: c.usage.completion_tokens,
};

const messages = [
  { role: 'system', content: 'You are terse.' },
  { role: 'user', content: 'Hello there' },
];
const chat = await client.chat.completions.create({ model, messages, max_tokens: 5 });
out.chat = {
  role: chat.choices[0].message.role,
  text: chat.choices[0].message.content,
  completion_tokens: chat.usage.completion_tokens,
};

const stream = await client.completions.create({
  model, prompt: 'Hello there', max_tokens: 5, stream: true,
  stream_options: { include_usage: true },
});
let text = '';
let chunks = 0;
let usageTokens = null;
for await (const part of stream) {
  chunks += 1;
  if (part.choices.length > 0) text += part.choices[0].text;
  if (part.usage) usageTokens = part.usage.completion_tokens;
}
out.stream = { text, chunks, usage_tokens: usageTokens };

const chatStream = await client.chat.completions.create({
  model, messages, max_tokens: 5, stream: true,
});
let chatText = '';
for await (const part of chatStream) {
  if (part.choices.length > 0 && part.choices[0].delta.content) chatText += part.choices[0].delta.content;
}
out.chat_stream = { text: chatText };

try {
  await client.completions.create({ model: 'no-such-model', prompt: 'x', max_tokens: 1 });
  out.error = { status: 0 };
} catch (e) {
  out.error = { status: e.status, message: e.message };
}

console.log(JSON.stringify(out));
