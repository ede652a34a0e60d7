// Drives `tokenmill serve` with the official `openai` npm package (v4): models,
// completions, chat, streaming with usage, logprobs (chat and completions, whole and
// streamed), penalties and logit_bias, several choices (n, a list of prompts), echo, and
// errors. Run from a folder whose node_modules holds the package:
// `node openai_client.mjs http://127.0.0.1:PORT/v1`.
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

// Logprobs: chat (logprobs + top_logprobs), whole and streamed; completions (logprobs: N).
const lpChat = await client.chat.completions.create({
  model, messages, max_tokens: 4, logprobs: true, top_logprobs: 2,
});
const content = lpChat.choices[0].logprobs.content;
out.chat_logprobs = {
  count: content.length,
  tops: content.map((c) => c.top_logprobs.length),
  tokens: content.map((c) => c.token),
  all_negative: content.every((c) => c.logprob <= 0),
  text: lpChat.choices[0].message.content,
};
const lpChatStream = await client.chat.completions.create({
  model, messages, max_tokens: 4, logprobs: true, top_logprobs: 2, stream: true,
});
const streamedTokens = [];
for await (const part of lpChatStream) {
  if (part.choices.length > 0 && part.choices[0].logprobs) {
    for (const c of part.choices[0].logprobs.content) streamedTokens.push(c.token);
  }
}
out.chat_logprobs_stream = { tokens: streamedTokens };
const lpCmpl = await client.completions.create({
  model, prompt: 'Hello there', max_tokens: 3, logprobs: 2,
});
const lp = lpCmpl.choices[0].logprobs;
out.completion_logprobs = {
  tokens: lp.tokens.length,
  token_logprobs: lp.token_logprobs.length,
  top_logprobs: lp.top_logprobs.map((t) => Object.keys(t).length),
  text_offset: lp.text_offset,
};
// Penalties and a bias are accepted.
const pen = await client.completions.create({
  model, prompt: 'Hello there', max_tokens: 3, presence_penalty: 1.0, frequency_penalty: 0.5,
  logit_bias: { '300': 5 },
});
out.penalties = { completion_tokens: pen.usage.completion_tokens };
// Several choices: a list of prompts, n > 1, echo.
const multi = await client.completions.create({
  model, prompt: ['Hello there', 'General Kenobi'], max_tokens: 3, n: 2,
});
out.multi = { indices: multi.choices.map((c) => c.index), completion_tokens: multi.usage.completion_tokens };
const chatN = await client.chat.completions.create({ model, messages, max_tokens: 2, n: 3 });
out.chat_n = { choices: chatN.choices.length };
const echoed = await client.completions.create({
  model, prompt: 'Hello there', max_tokens: 2, echo: true,
});
out.echo = { starts: echoed.choices[0].text.startsWith('Hello there') };
try {
  await client.chat.completions.create({
    model, messages, max_tokens: 1, logprobs: true, top_logprobs: 21,
  });
  out.bad_top_logprobs = { status: 0 };
} catch (e) {
  out.bad_top_logprobs = { status: e.status, param: e.param ?? (e.error && e.error.param) };
}

try {
  await client.completions.create({ model: 'no-such-model', prompt: 'x', max_tokens: 1 });
  out.error = { status: 0 };
} catch (e) {
  out.error = { status: e.status, message: e.message };
}

console.log(JSON.stringify(out));
