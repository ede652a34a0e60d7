@0x98083740c32e278c;
# tokenmill's client API (DESIGN.md §6). Evolution rules: this file id is fixed, ordinals
# are never reused or renumbered, new fields are appended, nothing is "required"
# (validation happens where the data is used: the frontend).

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("tokenmill::rpc");

struct Sampling {
  temperature @0 :Float32 = 0;   # 0 = greedy
  topP @1 :Float32 = 1;          # in (0, 1]
  seed @2 :UInt64 = 0;
  topK @3 :UInt32 = 0;           # 0 = all tokens
  minP @4 :Float32 = 0;          # in [0, 1]; 0 = off
  presencePenalty @5 :Float32;   # in [-2, 2]; subtracted once per generated token id
  frequencyPenalty @6 :Float32;  # in [-2, 2]; subtracted per occurrence in the output
  repetitionPenalty @7 :Float32 = 1; # > 0; vLLM's penalty on prompt and output ids; 1 = off
  logitBias @8 :List(LogitBias); # added to the raw logits
  topLogprobs @9 :Int32 = -1;    # -1 none, 0 only the chosen token's, N (<= 20) + top N
  # Constrained decoding: "" (none), "regex", "json_schema" or "json_object"; the server
  # refuses other names and grammars that do not compile.
  grammarKind @10 :Text;
  grammarSource @11 :Text;       # the regex or JSON Schema; empty for json_object
}

struct LogitBias {
  token @0 :Int64;               # wide, so that out-of-range ids can be reported exactly
  bias @1 :Float32;              # in [-100, 100]
}

struct TopLogprob {
  token @0 :Int32;
  logprob @1 :Float32;           # natural log
}

struct TokenLogprob {
  # Log-probabilities of one generated token, from the raw logits (before penalties,
  # bias and temperature).
  logprob @0 :Float32;           # of the chosen token
  top @1 :List(TopLogprob);      # the topLogprobs most likely tokens, best first
}

struct GenerateRequest {
  prompt :union {
    text @0 :Text;               # tokenized by the server
    tokenIds @1 :List(Int64);    # wide, so that out-of-range ids can be reported exactly
  }
  maxTokens @2 :Int64 = 16;      # must be > 0
  stopTokenIds @3 :List(Int64);  # generation ends after any of these
  sampling @4 :Sampling;
  ignoreEos @5 :Bool = false;
  addBos @6 :Bool = true;        # for text prompts
  clientSentNs @7 :Int64 = 0;    # client's steady clock when it sent the call (timeline)
  stopStrings @8 :List(Text);    # generation ends when the text contains one (excluded)
  # The prompt as segments (chunk reuse, issue 17): when non-empty, `prompt` is not used and
  # the prompt is BOS (addBos, text segments) followed by the segments. A worker whose
  # engine blends reuses each segment's KV wherever it sat in an earlier prompt.
  segments @9 :List(PromptSegment);
  recompute :union {
    serverDefault @10 :Void;     # the server's --recompute-ratio
    ratio @11 :Float64;          # share of reused segment tokens recomputed, in [0, 1]
  }
}

struct PromptSegment {
  union {
    text @0 :Text;               # tokenized alone, without BOS
    tokenIds @1 :List(Int64);
  }
}

struct TokenChunk {
  firstIndex @0 :UInt32;         # index of tokenIds[0] in the completion
  tokenIds @1 :List(Int32);
  text @2 :Text;                 # complete UTF-8 only; an unfinished character waits
  sentNs @3 :Int64;              # server steady clock when the chunk was written
  logprobs @4 :List(TokenLogprob); # one per token id when the request asked; else empty
}

interface TokenSink {
  # Implemented by the client. Flow-controlled: the server keeps a bounded number of
  # chunks in flight.
  write @0 (chunk :TokenChunk) -> stream;
}

struct Hop {
  stage @0 :Text;                # snake_case stage name (common/trace.hpp)
  node @1 :UInt32;
  tNs @2 :Int64;                 # that node's steady clock
}

struct StageTime {
  name @0 :Text;                 # interval name, e.g. prefill_compute
  ms @1 :Float64;
}

struct Summary {
  requestId @0 :UInt64;
  finishReason @1 :Text;         # length | stop | eos | cancelled | error
  errorCode @2 :Text;            # empty on success; else an errc name (overloaded, …)
  error @3 :Text;                # what was wrong, for people
  promptTokens @4 :UInt32;
  completionTokens @5 :UInt32;
  ttftMs @6 :Float64;            # server side: arrived -> first token written
  itlMeanMs @7 :Float64;         # measured at the router
  itlP50Ms @8 :Float64;
  itlP99Ms @9 :Float64;
  stages @10 :List(StageTime);   # server-side TTFT breakdown; sums to ttftMs
  hops @11 :List(Hop);           # every stamp, for clients that add their own
  prefillWorker @12 :Text;       # the worker that prefilled (empty: the decode worker)
  decodeWorker @13 :Text;
  itlSpikes @14 :List(ItlSpike); # inter-token gaps that were spikes, by cause
  steps @15 :List(DecodeStep);   # the decode step behind each token (router clock)
  migrations @16 :UInt32;        # times the request moved to another worker
  migrationReasons @17 :List(Text); # why, one per move: worker_lost | prefill_lost | ...
  retryAfterMs @18 :UInt32;      # errorCode overloaded: when to retry, ms (0: no hint)
}

struct ItlSpike {
  cause @0 :Text;                # prefill | batch_growth | transfer_wait | network | slow_step | other
  count @1 :UInt32;
}

struct DecodeStep {
  index @0 :UInt32;              # token index in the completion
  releasedNs @1 :Int64;          # the router released the token
  stepStartNs @2 :Int64;         # 0 for the first token (prefill made it)
  stepEndNs @3 :Int64;
  batch @4 :UInt32;              # sequences in the step
  prefillTokens @5 :UInt32;      # prompt tokens prefilled in the same iteration
  cause @6 :Text;                # of the gap before this token: none | prefill | ...
}

struct WorkerStatus {
  id @0 :UInt32;
  role @1 :Text;
  name @2 :Text;
  node @3 :Text;
  up @4 :Bool;
  queued @5 :UInt32;
  running @6 :UInt32;
  kvUsed @7 :UInt32;
  kvTotal @8 :UInt32;
  completed @9 :UInt64;
  tokensOut @10 :UInt64;
  detail @11 :Text;
  kvBytes @12 :UInt64;            # KV bytes sent (prefill) or received (decode)
  prefixHitBlocks @13 :UInt64;    # prompt blocks found in the prefix cache
  prefixLookupBlocks @14 :UInt64; # prompt blocks looked up there
  tiers @15 :List(KvTierStatus);  # the second KV tier's levels; empty without one
  chunkLookupTokens @16 :UInt64;  # segment tokens looked up in the chunk cache (issue 17)
  chunkHitTokens @17 :UInt64;     # of those, found there (KV moved, not computed)
  chunkRecomputedTokens @18 :UInt64; # of the hits, recomputed (selective recompute)
  fetch @19 :KvFetchStatus;       # KV fetched from and served to peers (KV workers)
}

struct KvFetchStatus {
  started @0 :UInt64;        # fetches asked of a source
  completed @1 :UInt64;      # answered and taken
  failed @2 :UInt64;         # given up: the worker computed the tokens
  blocks @3 :UInt64;         # blocks that arrived and were reused
  bytes @4 :UInt64;          # bytes of those blocks
  missing @5 :UInt64;        # blocks asked for and not written (evicted at the source)
  timeNs @6 :UInt64;         # from asking to the answer or giving up, summed
  served @7 :UInt64;         # fetches served as the source
  servedBlocks @8 :UInt64;   # blocks written into peers' pools for them
  servedBytes @9 :UInt64;    # bytes of those blocks
  serveFailures @10 :UInt64; # fetches refused or whose write failed
}

struct KvTierStatus {
  tier @0 :Text;        # "host" or "disk"
  hits @1 :UInt64;      # blocks onboarded from it
  bytesIn @2 :UInt64;   # bytes written into it
  bytesOut @3 :UInt64;  # bytes copied back into the pool
  evictions @4 :UInt64; # blocks pushed out of it
  used @5 :UInt32;      # blocks held now
  capacity @6 :UInt32;  # blocks it holds at most
}

struct NodeStatus {
  name @0 :Text;
  index @1 :UInt32;              # position in the manifest
  up @2 :Bool;
  clockOffsetNs @3 :Int64;       # add to the node's stamps to land on the supervisor's clock
  clockRttNs @4 :Int64;          # round trip of the best clock probe (-1: none yet)
  restarts @5 :UInt32;           # joins after the node's first (new processes of the node)
}

struct PlannerEvent {
  tNs @0 :Int64;                 # supervisor's steady clock
  kind @1 :Text;                 # flip, drain, resume, changed, failed
  worker @2 :Text;
  from @3 :Text;                 # role names
  to @4 :Text;
  tookNs @5 :Int64;
  why @6 :Text;
}

struct PlannerStatus {
  enabled @0 :Bool;
  decisions @1 :UInt64;
  flipsToPrefill @2 :UInt64;
  flipsToDecode @3 :UInt64;
  changesFailed @4 :UInt64;
  drains @5 :UInt64;
  lastDecision @6 :Text;
  events @7 :List(PlannerEvent); # most recent, oldest first
}

struct ClusterStatus {
  cluster @0 :Text;
  ready @1 :Bool;
  workers @2 :List(WorkerStatus);
  nodes @3 :List(NodeStatus);    # empty for a single-process cluster
  planner @4 :PlannerStatus;     # the planner and role changes (enabled false: no planner)
}

struct ModelInfo {
  name @0 :Text;
  vocabSize @1 :UInt32;
  maxContext @2 :UInt32;
  blockTokens @3 :UInt32;
}

struct DrainedWorker {
  id @0 :UInt32;
  from @1 :Text;                 # role before (prefill | decode)
  to @2 :Text;                   # role after; equal to `from` for a drain
  drainOnly @3 :Bool;
  drainNs @4 :Int64;             # from the order until it held nothing
  totalNs @5 :Int64;             # from the order until it reported
  migrated @6 :UInt32;           # decode sequences moved live to another worker
  finished @7 :UInt32;           # sequences or jobs it finished meanwhile
  errorCode @8 :Text;            # empty on success; else an errc name
  error @9 :Text;
}

struct DrainReport {
  node @0 :Text;
  workers @1 :List(DrainedWorker);
  errorCode @2 :Text;            # empty on success; else an errc name (invalid_request, …)
  error @3 :Text;
}

interface Gateway {
  generate @0 (request :GenerateRequest, sink :TokenSink) -> (summary :Summary);
  # Streams the completion into `sink`; returns once every chunk was delivered. Dropping
  # the call (or the connection) cancels the request and frees its KV blocks.
  tokenize @1 (text :Text, addBos :Bool = true) -> (tokenIds :List(Int32));
  status @2 () -> (status :ClusterStatus);
  model @3 () -> (info :ModelInfo);
  drain @4 (node :Text, timeoutMs :UInt32 = 600000, resume :Bool = false) -> (report :DrainReport);
  # Empties every prefill and decode worker of `node` (they finish what they hold and take
  # nothing new) without failing a request; returns when they are empty or the drain failed.
  # With `resume`, the node's drained workers go back into service under their role.
  login @5 (key :Text) -> (gateway :Gateway);
  # API keys (`serve --api-key`): when the server has keys, the bootstrap Gateway answers
  # only `login`; every other call fails with "unauthenticated: ...". `login` with a valid
  # key returns the Gateway to use; a wrong key fails the same way. Without keys on the
  # server every call works and `login` returns a Gateway whatever the key.
  # Why a login capability rather than a key on every call: the key crosses the wire once
  # per connection; every method (and any added later) is covered without a key field in
  # each request; and the returned capability still checks its key against the current
  # key set on every call, so a key removed by a reload (SIGHUP) stops working at once.
}
