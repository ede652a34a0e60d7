#include "schema/codec.hpp"

#include <algorithm>
#include <climits>
#include <optional>
#include <string_view>

namespace tokenmill::codec {
namespace {
std::string str(capnp::Text::Reader t) {
  return std::string(t.cStr(), t.size());
}
}  // namespace

generate_params decode(rpc::GenerateRequest::Reader r) {
  generate_params p;
  auto prompt = r.getPrompt();
  if (prompt.isText()) {
    p.has_text = true;
    p.text = str(prompt.getText());
  } else {
    p.has_text = false;
    for (auto id : prompt.getTokenIds())
      p.token_ids.push_back(id);
  }
  p.max_tokens = r.getMaxTokens();
  for (auto id : r.getStopTokenIds())
    p.stop_ids.push_back(id);
  auto s = r.getSampling();
  p.sampling.temperature = s.getTemperature();
  p.sampling.top_p = s.getTopP();
  p.sampling.seed = s.getSeed();
  p.sampling.top_k = s.getTopK();
  p.sampling.min_p = s.getMinP();
  p.sampling.presence_penalty = s.getPresencePenalty();
  p.sampling.frequency_penalty = s.getFrequencyPenalty();
  p.sampling.repetition_penalty = s.getRepetitionPenalty();
  for (auto b : s.getLogitBias())
    p.logit_bias.emplace_back(b.getToken(), b.getBias());
  p.top_logprobs = s.getTopLogprobs();
  const std::string kind = str(s.getGrammarKind());
  p.sampling.grammar = grammar_kind::none;
  if (!kind.empty() && kind != "none") {
    bool known = false;
    for (auto k : {grammar_kind::regex, grammar_kind::json_schema, grammar_kind::json_object})
      if (to_string(k) == kind) {
        p.sampling.grammar = k;
        known = true;
      }
    if (!known) p.unknown_grammar_kind = kind;
  }
  p.sampling.grammar_source = str(s.getGrammarSource());
  p.grammar_field = "sampling.grammarSource";
  for (auto t : r.getStopStrings())
    p.stop_strings.emplace_back(t.cStr(), t.size());
  p.ignore_eos = r.getIgnoreEos();
  p.add_bos = r.getAddBos();
  p.client_sent_ns = r.getClientSentNs();
  for (auto seg : r.getSegments()) {
    prompt_segment ps;
    if (seg.isText()) {
      ps.text = str(seg.getText());
    } else {
      ps.has_text = false;
      for (auto id : seg.getTokenIds())
        ps.token_ids.push_back(id);
    }
    p.segments.push_back(std::move(ps));
  }
  p.segments_field = "segments";
  if (r.getRecompute().isRatio()) p.recompute_ratio = r.getRecompute().getRatio();
  return p;
}

void encode(const generate_params& p, rpc::GenerateRequest::Builder b) {
  if (p.has_text) {
    b.getPrompt().setText(p.text);
  } else {
    auto ids = b.getPrompt().initTokenIds(static_cast<unsigned>(p.token_ids.size()));
    for (unsigned i = 0; i < p.token_ids.size(); ++i)
      ids.set(i, p.token_ids[i]);
  }
  b.setMaxTokens(p.max_tokens);
  auto stops = b.initStopTokenIds(static_cast<unsigned>(p.stop_ids.size()));
  for (unsigned i = 0; i < p.stop_ids.size(); ++i)
    stops.set(i, p.stop_ids[i]);
  auto s = b.initSampling();
  s.setTemperature(p.sampling.temperature);
  s.setTopP(p.sampling.top_p);
  s.setSeed(p.sampling.seed);
  s.setTopK(p.sampling.top_k);
  s.setMinP(p.sampling.min_p);
  s.setPresencePenalty(p.sampling.presence_penalty);
  s.setFrequencyPenalty(p.sampling.frequency_penalty);
  s.setRepetitionPenalty(p.sampling.repetition_penalty);
  auto bias = s.initLogitBias(static_cast<unsigned>(p.logit_bias.size()));
  for (unsigned i = 0; i < p.logit_bias.size(); ++i) {
    bias[i].setToken(p.logit_bias[i].first);
    bias[i].setBias(static_cast<float>(p.logit_bias[i].second));
  }
  s.setTopLogprobs(static_cast<int32_t>(std::clamp<int64_t>(p.top_logprobs, INT32_MIN, INT32_MAX)));
  if (p.sampling.grammar != grammar_kind::none) {
    s.setGrammarKind(std::string(to_string(p.sampling.grammar)));
    s.setGrammarSource(p.sampling.grammar_source);
  }
  auto strs = b.initStopStrings(static_cast<unsigned>(p.stop_strings.size()));
  for (unsigned i = 0; i < p.stop_strings.size(); ++i)
    strs.set(i, p.stop_strings[i]);
  b.setIgnoreEos(p.ignore_eos);
  b.setAddBos(p.add_bos);
  if (!p.segments.empty()) {
    auto segs = b.initSegments(static_cast<unsigned>(p.segments.size()));
    for (unsigned i = 0; i < p.segments.size(); ++i) {
      const auto& ps = p.segments[i];
      if (ps.has_text) {
        segs[i].setText(ps.text);
      } else {
        auto ids = segs[i].initTokenIds(static_cast<unsigned>(ps.token_ids.size()));
        for (unsigned k = 0; k < ps.token_ids.size(); ++k)
          ids.set(k, ps.token_ids[k]);
      }
    }
  }
  if (p.recompute_ratio) b.getRecompute().setRatio(*p.recompute_ratio);
  b.setClientSentNs(p.client_sent_ns);
}

namespace {
std::optional<itl_cause> itl_cause_from_string(std::string_view name) {
  for (size_t c = 0; c < static_cast<size_t>(itl_cause::count_); ++c)
    if (to_string(static_cast<itl_cause>(c)) == name) return static_cast<itl_cause>(c);
  return std::nullopt;
}
}  // namespace

generation_summary decode(rpc::Summary::Reader r) {
  generation_summary s;
  s.id = r.getRequestId();
  s.reason = finish_reason_from_string(str(r.getFinishReason())).value_or(finish_reason::none);
  auto code = str(r.getErrorCode());
  s.error_code = code.empty() ? errc::ok : errc_from_string(code);
  s.error = str(r.getError());
  s.prompt_tokens = r.getPromptTokens();
  s.completion_tokens = r.getCompletionTokens();
  s.ttft_ms = r.getTtftMs();
  s.itl_mean_ms = r.getItlMeanMs();
  s.itl_p50_ms = r.getItlP50Ms();
  s.itl_p99_ms = r.getItlP99Ms();
  for (auto st : r.getStages())
    s.stages.push_back({str(st.getName()), st.getMs()});
  for (auto h : r.getHops()) {
    auto st = stage_from_string(str(h.getStage()));
    if (!st) continue;  // a stage this client does not know yet (newer server)
    s.hops.push_back(hop{*st, h.getNode(), h.getTNs()});
  }
  s.prefill_worker = str(r.getPrefillWorker());
  s.decode_worker = str(r.getDecodeWorker());
  if (r.hasItlSpikes()) {
    s.itl_spikes.assign(static_cast<size_t>(itl_cause::count_), 0);
    for (auto sp : r.getItlSpikes())
      if (auto c = itl_cause_from_string(str(sp.getCause())); c && *c != itl_cause::none)
        s.itl_spikes[static_cast<size_t>(*c)] += sp.getCount();
  }
  for (auto st : r.getSteps()) {
    step_record rec;
    rec.index = st.getIndex();
    rec.released_ns = st.getReleasedNs();
    rec.step_start_ns = st.getStepStartNs();
    rec.step_end_ns = st.getStepEndNs();
    rec.batch = st.getBatch();
    rec.prefill_tokens = st.getPrefillTokens();
    rec.cause = itl_cause_from_string(str(st.getCause())).value_or(itl_cause::other);
    s.steps.push_back(rec);
  }
  s.migrations = r.getMigrations();
  for (auto m : r.getMigrationReasons())
    s.migration_reasons.push_back(str(m));
  s.retry_after_ms = r.getRetryAfterMs();
  return s;
}

void encode(const generation_summary& s, rpc::Summary::Builder b) {
  b.setRequestId(s.id);
  b.setFinishReason(std::string(to_string(s.reason)));
  b.setErrorCode(s.error_code == errc::ok ? "" : std::string(to_string(s.error_code)));
  b.setError(s.error);
  b.setPromptTokens(s.prompt_tokens);
  b.setCompletionTokens(s.completion_tokens);
  b.setTtftMs(s.ttft_ms);
  b.setItlMeanMs(s.itl_mean_ms);
  b.setItlP50Ms(s.itl_p50_ms);
  b.setItlP99Ms(s.itl_p99_ms);
  auto stages = b.initStages(static_cast<unsigned>(s.stages.size()));
  for (unsigned i = 0; i < s.stages.size(); ++i) {
    stages[i].setName(s.stages[i].name);
    stages[i].setMs(s.stages[i].ms);
  }
  auto hops = b.initHops(static_cast<unsigned>(s.hops.size()));
  for (unsigned i = 0; i < s.hops.size(); ++i) {
    hops[i].setStage(std::string(to_string(s.hops[i].where)));
    hops[i].setNode(s.hops[i].node);
    hops[i].setTNs(s.hops[i].t_ns);
  }
  b.setPrefillWorker(s.prefill_worker);
  b.setDecodeWorker(s.decode_worker);
  unsigned nonzero = 0;
  for (size_t c = 1; c < s.itl_spikes.size(); ++c)
    nonzero += s.itl_spikes[c] > 0;
  auto spikes = b.initItlSpikes(nonzero);
  for (size_t c = 1, k = 0; c < s.itl_spikes.size(); ++c) {
    if (s.itl_spikes[c] == 0) continue;
    spikes[static_cast<unsigned>(k)].setCause(std::string(to_string(static_cast<itl_cause>(c))));
    spikes[static_cast<unsigned>(k)].setCount(s.itl_spikes[c]);
    ++k;
  }
  auto steps = b.initSteps(static_cast<unsigned>(s.steps.size()));
  for (unsigned i = 0; i < s.steps.size(); ++i) {
    const auto& rec = s.steps[i];
    steps[i].setIndex(rec.index);
    steps[i].setReleasedNs(rec.released_ns);
    steps[i].setStepStartNs(rec.step_start_ns);
    steps[i].setStepEndNs(rec.step_end_ns);
    steps[i].setBatch(rec.batch);
    steps[i].setPrefillTokens(rec.prefill_tokens);
    steps[i].setCause(std::string(to_string(rec.cause)));
  }
  b.setMigrations(s.migrations);
  auto reasons = b.initMigrationReasons(static_cast<unsigned>(s.migration_reasons.size()));
  for (unsigned i = 0; i < s.migration_reasons.size(); ++i)
    reasons.set(i, s.migration_reasons[i]);
  b.setRetryAfterMs(s.retry_after_ms);
}

namespace {
error_info error_of(capnp::Text::Reader code, capnp::Text::Reader message) {
  auto c = std::string(code.cStr(), code.size());
  if (c.empty()) return {};
  return {errc_from_string(c), std::string(message.cStr(), message.size())};
}
std::string code_of(const error_info& e) {
  return e.code == errc::ok ? std::string() : std::string(to_string(e.code));
}
}  // namespace

drain_summary decode(rpc::DrainReport::Reader r) {
  drain_summary s;
  s.node = str(r.getNode());
  for (auto w : r.getWorkers()) {
    worker_drain d;
    d.id = w.getId();
    d.from = role_from_string(str(w.getFrom())).value_or(role::frontend);
    d.to = role_from_string(str(w.getTo())).value_or(role::frontend);
    d.drain_only = w.getDrainOnly();
    d.drain_ns = w.getDrainNs();
    d.total_ns = w.getTotalNs();
    d.migrated = w.getMigrated();
    d.finished = w.getFinished();
    d.error = error_of(w.getErrorCode(), w.getError());
    s.workers.push_back(std::move(d));
  }
  s.error = error_of(r.getErrorCode(), r.getError());
  return s;
}

void encode(const drain_summary& s, rpc::DrainReport::Builder b) {
  b.setNode(s.node);
  auto ws = b.initWorkers(static_cast<unsigned>(s.workers.size()));
  for (unsigned i = 0; i < s.workers.size(); ++i) {
    const auto& w = s.workers[i];
    auto o = ws[i];
    o.setId(w.id);
    o.setFrom(std::string(to_string(w.from)));
    o.setTo(std::string(to_string(w.to)));
    o.setDrainOnly(w.drain_only);
    o.setDrainNs(w.drain_ns);
    o.setTotalNs(w.total_ns);
    o.setMigrated(w.migrated);
    o.setFinished(w.finished);
    o.setErrorCode(code_of(w.error));
    o.setError(w.error.message);
  }
  b.setErrorCode(code_of(s.error));
  b.setError(s.error.message);
}

cluster_status decode(rpc::ClusterStatus::Reader r) {
  cluster_status s;
  s.cluster = str(r.getCluster());
  s.ready = r.getReady();
  for (auto w : r.getWorkers()) {
    worker_status ws;
    ws.id = w.getId();
    ws.kind = role_from_string(str(w.getRole())).value_or(role::frontend);
    ws.name = str(w.getName());
    ws.node = str(w.getNode());
    ws.up = w.getUp();
    ws.queued = w.getQueued();
    ws.running = w.getRunning();
    ws.kv_used = w.getKvUsed();
    ws.kv_total = w.getKvTotal();
    ws.completed = w.getCompleted();
    ws.tokens_out = w.getTokensOut();
    ws.kv_bytes = w.getKvBytes();
    ws.prefix_hit_blocks = w.getPrefixHitBlocks();
    ws.prefix_lookup_blocks = w.getPrefixLookupBlocks();
    ws.chunk_lookup_tokens = w.getChunkLookupTokens();
    ws.chunk_hit_tokens = w.getChunkHitTokens();
    ws.chunk_recomputed_tokens = w.getChunkRecomputedTokens();
    for (auto t : w.getTiers())
      ws.tiers.push_back({str(t.getTier()), t.getHits(), t.getBytesIn(), t.getBytesOut(),
                          t.getEvictions(), t.getUsed(), t.getCapacity()});
    if (w.hasFetch()) {
      auto f = w.getFetch();
      auto& o = ws.fetch;
      o.started = f.getStarted();
      o.completed = f.getCompleted();
      o.failed = f.getFailed();
      o.blocks = f.getBlocks();
      o.bytes = f.getBytes();
      o.missing = f.getMissing();
      o.time_ns = f.getTimeNs();
      o.served = f.getServed();
      o.served_blocks = f.getServedBlocks();
      o.served_bytes = f.getServedBytes();
      o.serve_failures = f.getServeFailures();
    }
    ws.detail = str(w.getDetail());
    s.workers.push_back(std::move(ws));
  }
  for (auto n : r.getNodes())
    s.nodes.push_back({str(n.getName()), n.getIndex(), n.getUp(), n.getClockOffsetNs(),
                       n.getClockRttNs(), n.getRestarts()});
  if (r.hasPlanner()) {
    auto p = r.getPlanner();
    auto& o = s.planner;
    o.enabled = p.getEnabled();
    o.decisions = p.getDecisions();
    o.flips_to_prefill = p.getFlipsToPrefill();
    o.flips_to_decode = p.getFlipsToDecode();
    o.changes_failed = p.getChangesFailed();
    o.drains = p.getDrains();
    o.last_decision = str(p.getLastDecision());
    for (auto e : p.getEvents()) {
      planner_event ev;
      ev.t_ns = e.getTNs();
      ev.kind = str(e.getKind());
      ev.worker = str(e.getWorker());
      ev.from = role_from_string(str(e.getFrom())).value_or(role::decode);
      ev.to = role_from_string(str(e.getTo())).value_or(role::decode);
      ev.took_ns = e.getTookNs();
      ev.why = str(e.getWhy());
      o.events.push_back(std::move(ev));
    }
  }
  return s;
}

void encode(const cluster_status& s, rpc::ClusterStatus::Builder b) {
  b.setCluster(s.cluster);
  b.setReady(s.ready);
  auto ws = b.initWorkers(static_cast<unsigned>(s.workers.size()));
  for (unsigned i = 0; i < s.workers.size(); ++i) {
    const auto& w = s.workers[i];
    auto o = ws[i];
    o.setId(w.id);
    o.setRole(std::string(to_string(w.kind)));
    o.setName(w.name);
    o.setNode(w.node);
    o.setUp(w.up);
    o.setQueued(w.queued);
    o.setRunning(w.running);
    o.setKvUsed(w.kv_used);
    o.setKvTotal(w.kv_total);
    o.setCompleted(w.completed);
    o.setTokensOut(w.tokens_out);
    o.setKvBytes(w.kv_bytes);
    o.setPrefixHitBlocks(w.prefix_hit_blocks);
    o.setPrefixLookupBlocks(w.prefix_lookup_blocks);
    o.setChunkLookupTokens(w.chunk_lookup_tokens);
    o.setChunkHitTokens(w.chunk_hit_tokens);
    o.setChunkRecomputedTokens(w.chunk_recomputed_tokens);
    auto tiers = o.initTiers(static_cast<unsigned>(w.tiers.size()));
    for (unsigned t = 0; t < w.tiers.size(); ++t) {
      const auto& x = w.tiers[t];
      tiers[t].setTier(x.tier);
      tiers[t].setHits(x.hits);
      tiers[t].setBytesIn(x.bytes_in);
      tiers[t].setBytesOut(x.bytes_out);
      tiers[t].setEvictions(x.evictions);
      tiers[t].setUsed(x.used);
      tiers[t].setCapacity(x.capacity);
    }
    auto f = o.initFetch();
    f.setStarted(w.fetch.started);
    f.setCompleted(w.fetch.completed);
    f.setFailed(w.fetch.failed);
    f.setBlocks(w.fetch.blocks);
    f.setBytes(w.fetch.bytes);
    f.setMissing(w.fetch.missing);
    f.setTimeNs(w.fetch.time_ns);
    f.setServed(w.fetch.served);
    f.setServedBlocks(w.fetch.served_blocks);
    f.setServedBytes(w.fetch.served_bytes);
    f.setServeFailures(w.fetch.serve_failures);
    o.setDetail(w.detail);
  }
  auto ns = b.initNodes(static_cast<unsigned>(s.nodes.size()));
  for (unsigned i = 0; i < s.nodes.size(); ++i) {
    ns[i].setName(s.nodes[i].name);
    ns[i].setIndex(s.nodes[i].index);
    ns[i].setUp(s.nodes[i].up);
    ns[i].setClockOffsetNs(s.nodes[i].clock_offset_ns);
    ns[i].setClockRttNs(s.nodes[i].clock_rtt_ns);
    ns[i].setRestarts(s.nodes[i].restarts);
  }
  auto p = b.initPlanner();
  p.setEnabled(s.planner.enabled);
  p.setDecisions(s.planner.decisions);
  p.setFlipsToPrefill(s.planner.flips_to_prefill);
  p.setFlipsToDecode(s.planner.flips_to_decode);
  p.setChangesFailed(s.planner.changes_failed);
  p.setDrains(s.planner.drains);
  p.setLastDecision(s.planner.last_decision);
  auto evs = p.initEvents(static_cast<unsigned>(s.planner.events.size()));
  for (unsigned i = 0; i < s.planner.events.size(); ++i) {
    const auto& e = s.planner.events[i];
    evs[i].setTNs(e.t_ns);
    evs[i].setKind(e.kind);
    evs[i].setWorker(e.worker);
    evs[i].setFrom(std::string(to_string(e.from)));
    evs[i].setTo(std::string(to_string(e.to)));
    evs[i].setTookNs(e.took_ns);
    evs[i].setWhy(e.why);
  }
}

model_summary decode(rpc::ModelInfo::Reader r) {
  return model_summary{str(r.getName()), r.getVocabSize(), r.getMaxContext(), r.getBlockTokens()};
}

void encode(const model_summary& m, rpc::ModelInfo::Builder b) {
  b.setName(m.name);
  b.setVocabSize(m.vocab_size);
  b.setMaxContext(m.max_context);
  b.setBlockTokens(m.block_tokens);
}

chunk decode(rpc::TokenChunk::Reader r) {
  chunk c;
  c.first_index = r.getFirstIndex();
  c.ids = decode_ids(r.getTokenIds());
  c.text = str(r.getText());
  c.sent_ns = r.getSentNs();
  for (auto lp : r.getLogprobs()) {
    token_logprobs t;
    t.logprob = lp.getLogprob();
    for (auto top : lp.getTop())
      t.top.push_back({top.getToken(), top.getLogprob()});
    c.logprobs.push_back(std::move(t));
  }
  return c;
}

void encode(const chunk& c, rpc::TokenChunk::Builder b) {
  b.setFirstIndex(c.first_index);
  encode_ids(c.ids, b.initTokenIds(static_cast<unsigned>(c.ids.size())));
  b.setText(c.text);
  b.setSentNs(c.sent_ns);
  if (c.logprobs.empty()) return;
  auto lps = b.initLogprobs(static_cast<unsigned>(c.logprobs.size()));
  for (unsigned i = 0; i < c.logprobs.size(); ++i) {
    lps[i].setLogprob(c.logprobs[i].logprob);
    auto top = lps[i].initTop(static_cast<unsigned>(c.logprobs[i].top.size()));
    for (unsigned j = 0; j < c.logprobs[i].top.size(); ++j) {
      top[j].setToken(c.logprobs[i].top[j].token);
      top[j].setLogprob(c.logprobs[i].top[j].logprob);
    }
  }
}

std::vector<token_id> decode_ids(capnp::List<int32_t>::Reader r) {
  std::vector<token_id> out;
  out.reserve(r.size());
  for (auto id : r)
    out.push_back(id);
  return out;
}

void encode_ids(std::span<const token_id> ids, capnp::List<int32_t>::Builder b) {
  for (unsigned i = 0; i < ids.size(); ++i)
    b.set(i, ids[i]);
}

}  // namespace tokenmill::codec
