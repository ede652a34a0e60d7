/// read_tokenizer_json and write_tokenizer_json (declared in engine/text_tokenizer.hpp):
/// Hugging Face tokenizer.json (+ tokenizer_config.json) to and from a vocab_spec.
#include <nlohmann/json.hpp>

#include <climits>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "engine/detail/vocab_core.hpp"
#include "engine/text_tokenizer.hpp"

namespace tokenmill {

using detail::canonical_pre;
using detail::gpt2_pattern;
using detail::invalid;
using detail::llama3_pattern;
using detail::parse_byte_token;
using detail::pattern_of;
using detail::piece_map;
using detail::qwen2_pattern;
using detail::space_marker;

namespace {

using json = nlohmann::json;

/// Reads a JSON file; the error names the file.
result<json> read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return invalid(path + ": cannot open");
  std::stringstream buf;
  buf << in.rdbuf();
  json j = json::parse(buf.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return invalid(path + ": not valid JSON");
  return j;
}

/// A pre_tokenizer element that names a known pattern: "" if none.
std::string pre_from_pattern(std::string_view p) {
  if (p == gpt2_pattern) return "gpt2";
  if (p == llama3_pattern) return "llama3";
  if (p == qwen2_pattern) return "qwen2";
  return {};
}

const json* member(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

/// True when a decoder (or a Sequence of them) contains Metaspace or Replace("▁", " ").
bool has_metaspace_decoder(const json& dec) {
  if (!dec.is_object()) return false;
  std::string type = dec.value("type", "");
  if (type == "Metaspace") return true;
  if (type == "Replace") {
    const json* pat = member(dec, "pattern");
    return pat && pat->is_object() && pat->value("String", "") == space_marker;
  }
  if (type == "Sequence")
    if (const json* ds = member(dec, "decoders"); ds && ds->is_array())
      for (const auto& d : *ds)
        if (has_metaspace_decoder(d)) return true;
  return false;
}

/// A special token's text from tokenizer_config.json: a string or {"content": ...}.
std::string config_token(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return v["content"].get<std::string>();
  return {};
}

result<vocab_spec> read_tokenizer_json_impl(const std::string& path) {
  auto parsed = read_json_file(path);
  if (!parsed) return parsed.error();
  const json& root = *parsed;
  auto fail = [&](const std::string& key, const std::string& what) {
    return invalid(path + ": key '" + key + "': " + what);
  };
  if (!root.is_object()) return invalid(path + ": top level is not a JSON object");
  const json* model = member(root, "model");
  if (!model) return fail("model", "missing");
  if (!model->is_object()) return fail("model", "expected an object");
  const json* type = member(*model, "type");
  if (!type) return fail("model.type", "missing");
  if (!type->is_string()) return fail("model.type", "expected a string");
  if (*type != "BPE")
    return invalid(path + ": unsupported tokenizer.json: model.type '" + type->get<std::string>() +
                   "' (only BPE)");
  const json* vocab = member(*model, "vocab");
  if (!vocab) return fail("model.vocab", "missing");
  if (!vocab->is_object()) return fail("model.vocab", "expected an object of token -> id");

  // Ids index a dense table, so a few entries with huge ids would allocate millions of
  // empty tokens (found by fuzz_tokenizer_json: a 9 KB file took 3 s and 300 MB). Real
  // vocabularies are dense; refuse an id range more than half holes before allocating it.
  {
    const json* at = member(root, "added_tokens");
    size_t defined = vocab->size() + (at && at->is_array() ? at->size() : 0);
    int64_t max_id = -1;
    std::string max_key;
    auto note = [&](const json& id, const std::string& key) {
      if (id.is_number_integer() && id.get<int64_t>() > max_id) {
        max_id = id.get<int64_t>();
        max_key = key;
      }
    };
    for (auto it = vocab->begin(); it != vocab->end(); ++it)
      note(it.value(), "model.vocab");
    if (at && at->is_array())
      for (size_t i = 0; i < at->size(); ++i)
        if ((*at)[i].is_object())
          if (const json* id = member((*at)[i], "id"))
            note(*id, "added_tokens[" + std::to_string(i) + "].id");
    if (max_id >= 0 && static_cast<size_t>(max_id) + 1 > 2 * defined + 1024)
      return fail(max_key, "id " + std::to_string(max_id) +
                               " leaves most of the id range unused (" + std::to_string(defined) +
                               " tokens defined); ids must be dense");
  }

  vocab_spec spec;
  spec.model = vocab_spec::model_kind::bpe;
  std::vector<std::string>& tokens = spec.tokens;
  std::vector<bool> seen;
  auto place = [&](size_t id, const std::string& text) {
    if (id >= tokens.size()) {
      tokens.resize(id + 1);
      seen.resize(id + 1, false);
    }
    tokens[id] = text;
    seen[id] = true;
  };
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() >= INT32_MAX)
      return fail("model.vocab", "entry '" + it.key() + "' has no valid id");
    size_t id = it.value().get<size_t>();
    if (id < seen.size() && seen[id])
      return fail("model.vocab", "id " + std::to_string(id) + " is used by '" + tokens[id] +
                                     "' and '" + it.key() + "'");
    place(id, it.key());
  }
  // Added tokens: their own ids, control ("special": true) or user-defined.
  std::vector<std::pair<size_t, token_kind>> added;
  if (const json* at = member(root, "added_tokens")) {
    if (!at->is_array()) return fail("added_tokens", "expected an array");
    for (size_t i = 0; i < at->size(); ++i) {
      const json& a = (*at)[i];
      std::string key = "added_tokens[" + std::to_string(i) + "]";
      if (!a.is_object()) return fail(key, "expected an object");
      const json* id = member(a, "id");
      const json* content = member(a, "content");
      if (!id || !id->is_number_integer() || id->get<int64_t>() < 0 ||
          id->get<int64_t>() >= INT32_MAX)
        return fail(key + ".id", "missing or not a valid id");
      if (!content || !content->is_string())
        return fail(key + ".content", "missing or not a string");
      const json* special = member(a, "special");
      if (special && !special->is_boolean()) return fail(key + ".special", "expected a boolean");
      place(id->get<size_t>(), content->get<std::string>());
      added.emplace_back(id->get<size_t>(), special && special->get<bool>()
                                                ? token_kind::control
                                                : token_kind::user_defined);
    }
  }
  if (tokens.empty()) return fail("model.vocab", "empty");
  spec.kinds.assign(tokens.size(), token_kind::normal);
  for (size_t i = 0; i < tokens.size(); ++i)
    if (!seen[i]) spec.kinds[i] = token_kind::unused;  // a hole in the id range

  piece_map ids;
  for (size_t i = 0; i < tokens.size(); ++i)
    if (seen[i]) ids.insert_or_assign(tokens[i], static_cast<token_id>(i));
  auto id_of = [&](const std::string& s) -> token_id {
    auto it = ids.find(s);
    return it == ids.end() ? -1 : it->second;
  };

  if (const json* merges = member(*model, "merges")) {
    if (!merges->is_array()) return fail("model.merges", "expected an array");
    spec.merges.reserve(merges->size());
    for (size_t i = 0; i < merges->size(); ++i) {
      const json& m = (*merges)[i];
      std::string key = "model.merges[" + std::to_string(i) + "]";
      if (m.is_string()) {
        spec.merges.push_back(m.get<std::string>());
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        std::string a = m[0].get<std::string>(), b = m[1].get<std::string>();
        if (a.find(' ') != std::string::npos || b.find(' ') != std::string::npos)
          return invalid(path + ": unsupported tokenizer.json: " + key +
                         " has a token containing a space");
        spec.merges.push_back(a + " " + b);
      } else {
        return fail(key, "expected \"a b\" or [\"a\", \"b\"]");
      }
    }
  }
  if (const json* unk = member(*model, "unk_token")) {
    if (!unk->is_string()) return fail("model.unk_token", "expected a string");
    spec.unk = id_of(unk->get<std::string>());
    if (spec.unk < 0)
      return fail("model.unk_token", "'" + unk->get<std::string>() + "' is not in the vocabulary");
  }

  bool byte_fallback = false;
  if (const json* bf = member(*model, "byte_fallback")) {
    if (!bf->is_boolean()) return fail("model.byte_fallback", "expected a boolean");
    byte_fallback = bf->get<bool>();
  }
  const json* pre = member(root, "pre_tokenizer");
  const json* decoder = member(root, "decoder");
  const json* normalizer = member(root, "normalizer");

  if (byte_fallback && decoder && has_metaspace_decoder(*decoder)) {
    // SentencePiece-style BPE (Llama 2, Mistral): the spm algorithm with scores that
    // follow the merge order, so the earliest merge producing a token ranks highest.
    spec.model = vocab_spec::model_kind::spm;
    spec.pre.clear();
    const float unranked = -1e30f;
    spec.scores.assign(tokens.size(), unranked);
    for (size_t r = 0; r < spec.merges.size(); ++r) {
      const std::string& m = spec.merges[r];
      size_t sp = m.find(' ');
      if (sp == std::string::npos)
        return fail("model.merges[" + std::to_string(r) + "]", "no space");
      token_id id = id_of(m.substr(0, sp) + m.substr(sp + 1));
      if (id >= 0 && spec.scores[id] == unranked) spec.scores[id] = -static_cast<float>(r);
    }
    spec.merges.clear();
    for (size_t i = 0; i < tokens.size(); ++i)
      if (spec.kinds[i] == token_kind::normal && parse_byte_token(tokens[i]) >= 0)
        spec.kinds[i] = token_kind::byte;
    // The space prefix: normalizer Prepend("▁") or a Metaspace pre-tokenizer that adds it.
    spec.add_space_prefix = false;
    std::function<void(const json&)> scan = [&](const json& j) {
      if (!j.is_object()) return;
      std::string t = j.value("type", "");
      if (t == "Prepend" && j.value("prepend", "") == space_marker) spec.add_space_prefix = true;
      if (t == "Metaspace") {
        if (j.value("add_prefix_space", false)) spec.add_space_prefix = true;
        std::string scheme = j.value("prepend_scheme", "");
        if (scheme == "always" || scheme == "first") spec.add_space_prefix = true;
      }
      for (const char* list : {"normalizers", "pretokenizers"})
        if (const json* l = member(j, list); l && l->is_array())
          for (const auto& e : *l)
            scan(e);
    };
    if (normalizer) scan(*normalizer);
    if (pre) scan(*pre);
  } else {
    if (byte_fallback)
      return invalid(path +
                     ": unsupported tokenizer.json: model.byte_fallback without a "
                     "Metaspace/Replace(\"▁\") decoder");
    // Qwen2 ships an NFC normalizer; like llama.cpp we leave the text as given.
    // TODO(spec): apply NFC, which only matters for text that is not already NFC.
    if (normalizer && !(normalizer->is_object() && normalizer->value("type", "") == "NFC"))
      return invalid(path + ": unsupported tokenizer.json: key 'normalizer': only null or NFC");
    if (!pre) return fail("pre_tokenizer", "missing (expected ByteLevel)");
    auto check_byte_level = [&](const json& bl, const std::string& key) -> std::string {
      if (const json* aps = member(bl, "add_prefix_space"); aps && aps->is_boolean() && *aps)
        return path + ": unsupported tokenizer.json: key '" + key + ".add_prefix_space' is true";
      return {};
    };
    std::string type = pre->is_object() ? pre->value("type", "") : "";
    if (type == "ByteLevel") {
      if (auto e = check_byte_level(*pre, "pre_tokenizer"); !e.empty()) return invalid(e);
      const json* ur = member(*pre, "use_regex");
      if (ur && ur->is_boolean() && !ur->get<bool>())
        return invalid(path +
                       ": unsupported tokenizer.json: key 'pre_tokenizer': ByteLevel "
                       "without a regex splits nothing");
      spec.pre = "gpt2";
    } else if (type == "Sequence") {
      const json* list = member(*pre, "pretokenizers");
      if (!list || !list->is_array())
        return fail("pre_tokenizer.pretokenizers", "expected an array");
      std::string found;
      bool byte_level = false;
      for (size_t i = 0; i < list->size(); ++i) {
        const json& e = (*list)[i];
        std::string key = "pre_tokenizer.pretokenizers[" + std::to_string(i) + "]";
        std::string t = e.is_object() ? e.value("type", "") : "";
        if (t == "Split") {
          const json* pat = member(e, "pattern");
          std::string p;
          if (pat && pat->is_object() && pat->contains("Regex") && (*pat)["Regex"].is_string())
            p = (*pat)["Regex"].get<std::string>();
          else if (pat && pat->is_object() && pat->contains("String") &&
                   (*pat)["String"].is_string())
            p = (*pat)["String"].get<std::string>();
          else
            return fail(key + ".pattern", "expected {\"Regex\": ...} or {\"String\": ...}");
          std::string name = pre_from_pattern(p);
          if (name.empty())
            return invalid(path + ": unsupported tokenizer.json: key '" + key +
                           ".pattern': unknown pre-tokenizer pattern '" + p + "'");
          if (!found.empty())
            return invalid(path + ": unsupported tokenizer.json: key '" + key +
                           "': more than one Split");
          found = name;
        } else if (t == "ByteLevel") {
          if (auto err = check_byte_level(e, key); !err.empty()) return invalid(err);
          const json* ur = member(e, "use_regex");
          bool use_regex = !ur || (ur->is_boolean() && ur->get<bool>());
          if (use_regex) {
            if (!found.empty())
              return invalid(path + ": unsupported tokenizer.json: key '" + key +
                             "': a Split followed by a ByteLevel with use_regex true");
            found = "gpt2";
          }
          byte_level = true;
        } else {
          return invalid(path + ": unsupported tokenizer.json: key '" + key +
                         "': pre-tokenizer type '" + t + "'");
        }
      }
      if (!byte_level)
        return invalid(path + ": unsupported tokenizer.json: key 'pre_tokenizer': no ByteLevel");
      if (found.empty())
        return invalid(path +
                       ": unsupported tokenizer.json: key 'pre_tokenizer': no split pattern");
      spec.pre = found;
    } else {
      return invalid(path + ": unsupported tokenizer.json: key 'pre_tokenizer': type '" + type +
                     "'");
    }
  }
  for (auto [id, kind] : added)
    spec.kinds[id] = static_cast<token_id>(id) == spec.unk ? token_kind::unknown : kind;
  if (spec.unk >= 0 && spec.kinds[spec.unk] == token_kind::normal)
    spec.kinds[spec.unk] = token_kind::unknown;

  // BOS/EOS: tokenizer_config.json beside the file, else TemplateProcessing's leading token.
  spec.bos = spec.eos = -1;
  spec.add_bos = false;
  bool add_bos_known = false;
  namespace fs = std::filesystem;
  fs::path config_path = fs::path(path).parent_path() / "tokenizer_config.json";
  std::error_code ec;
  if (fs::is_regular_file(config_path, ec)) {
    auto cfg = read_json_file(config_path.string());
    if (!cfg) return cfg.error();
    const json& c = *cfg;
    std::string cpath = config_path.string();
    if (!c.is_object()) return invalid(cpath + ": top level is not a JSON object");
    for (auto [key, slot] : {std::pair{"bos_token", &spec.bos}, {"eos_token", &spec.eos}}) {
      const json* v = member(c, key);
      if (!v) continue;
      std::string text = config_token(*v);
      if (text.empty())
        return invalid(cpath + ": key '" + key + "': expected a string or {\"content\": ...}");
      *slot = id_of(text);
      if (*slot < 0)
        return invalid(cpath + ": key '" + key + "': '" + text + "' is not in the vocabulary");
    }
    if (const json* ct = member(c, "chat_template")) {
      // A string, or a list of {"name", "template"} where "default" is the chat one.
      if (ct->is_string()) {
        spec.chat_template = ct->get<std::string>();
      } else if (ct->is_array()) {
        for (const auto& e : *ct)
          if (e.is_object() && e.value("name", "") == "default" && e.contains("template") &&
              e["template"].is_string())
            spec.chat_template = e["template"].get<std::string>();
      } else if (!ct->is_null()) {
        return invalid(cpath + ": key 'chat_template': expected a string or a list of templates");
      }
    }
    if (const json* ab = member(c, "add_bos_token")) {
      if (!ab->is_boolean()) return invalid(cpath + ": key 'add_bos_token': expected a boolean");
      spec.add_bos = ab->get<bool>();
      add_bos_known = true;
    }
  }
  if (const json* pp = member(root, "post_processor")) {
    std::function<const json*(const json&)> find_template = [&](const json& j) -> const json* {
      if (!j.is_object()) return nullptr;
      std::string t = j.value("type", "");
      if (t == "TemplateProcessing") return &j;
      if (t == "Sequence")
        if (const json* ps = member(j, "processors"); ps && ps->is_array())
          for (const auto& p : *ps)
            if (const json* found = find_template(p)) return found;
      return nullptr;
    };
    if (const json* tp = find_template(*pp)) {
      const json* single = member(*tp, "single");
      token_id lead = -1;
      if (single && single->is_array() && !single->empty()) {
        const json& first = (*single)[0];
        if (const json* st = member(first, "SpecialToken");
            st && st->contains("id") && (*st)["id"].is_string())
          lead = id_of((*st)["id"].get<std::string>());
      }
      if (lead >= 0) {
        if (spec.bos < 0) spec.bos = lead;
        if (!add_bos_known) spec.add_bos = lead == spec.bos;
        add_bos_known = true;
      }
    }
  }
  if (!add_bos_known) spec.add_bos = false;
  if (spec.bos < 0) spec.add_bos = false;
  return spec;
}

}  // namespace

result<vocab_spec> read_tokenizer_json(const std::string& path) {
  try {
    return read_tokenizer_json_impl(path);
  } catch (const std::exception& e) {
    return invalid(path + ": " + e.what());
  }
}

result<void> write_tokenizer_json(const vocab_spec& spec, const std::string& path) {
  try {
    if (spec.model != vocab_spec::model_kind::bpe)
      return invalid(path + ": only byte-level BPE vocabularies can be written as tokenizer.json");
    if (auto t = make_text_tokenizer(spec); !t) return invalid(path + ": " + t.error().message);
    const std::string pre = canonical_pre(spec.pre);
    using ojson = nlohmann::ordered_json;
    const size_t n = spec.tokens.size();
    auto kind = [&](size_t i) { return spec.kinds.empty() ? token_kind::normal : spec.kinds[i]; };

    ojson added = ojson::array();
    ojson vocab = ojson::object();
    // ordered_json's own insert searches linearly; append to its underlying vector instead
    // (ids in order) and check duplicates with a hash set.
    auto& vocab_entries = static_cast<std::vector<std::pair<const std::string, ojson>>&>(
        vocab.get_ref<ojson::object_t&>());
    vocab_entries.reserve(n);
    std::unordered_set<std::string_view> written;
    for (size_t i = 0; i < n; ++i) {
      const std::string& t = spec.tokens[i];
      token_kind k = kind(i);
      if (k == token_kind::unused && t.empty()) continue;  // a hole in the id range
      if (!written.insert(t).second)
        return invalid(path + ": token " + std::to_string(i) + " '" + t +
                       "' appears twice; tokenizer.json cannot hold that");
      vocab_entries.emplace_back(t, ojson(i));
      if (k == token_kind::control || k == token_kind::user_defined || k == token_kind::unknown) {
        bool special = k != token_kind::user_defined;
        added.push_back({{"id", i},
                         {"content", t},
                         {"single_word", false},
                         {"lstrip", false},
                         {"rstrip", false},
                         {"normalized", !special},
                         {"special", special}});
      }
    }
    ojson pre_tok;
    if (pre == "gpt2") {
      pre_tok = {{"type", "ByteLevel"},
                 {"add_prefix_space", false},
                 {"trim_offsets", true},
                 {"use_regex", true}};
    } else {
      pre_tok = {
          {"type", "Sequence"},
          {"pretokenizers", ojson::array({{{"type", "Split"},
                                           {"pattern", {{"Regex", std::string(pattern_of(pre))}}},
                                           {"behavior", "Isolated"},
                                           {"invert", false}},
                                          {{"type", "ByteLevel"},
                                           {"add_prefix_space", false},
                                           {"trim_offsets", true},
                                           {"use_regex", false}}})}};
    }
    ojson post = nullptr;
    if (spec.add_bos && spec.bos >= 0) {
      const std::string& b = spec.tokens[spec.bos];
      post = {
          {"type", "TemplateProcessing"},
          {"single", ojson::array({{{"SpecialToken", {{"id", b}, {"type_id", 0}}}},
                                   {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
          {"pair", ojson::array({{{"SpecialToken", {{"id", b}, {"type_id", 0}}}},
                                 {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                                 {{"SpecialToken", {{"id", b}, {"type_id", 1}}}},
                                 {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}})},
          {"special_tokens",
           {{b, {{"id", b}, {"ids", ojson::array({spec.bos})}, {"tokens", ojson::array({b})}}}}}};
    } else {
      post = {{"type", "ByteLevel"},
              {"add_prefix_space", true},
              {"trim_offsets", false},
              {"use_regex", true}};
    }
    ojson model = {{"type", "BPE"},
                   {"dropout", nullptr},
                   {"unk_token", spec.unk >= 0 ? ojson(spec.tokens[spec.unk]) : ojson(nullptr)},
                   {"continuing_subword_prefix", nullptr},
                   {"end_of_word_suffix", nullptr},
                   {"fuse_unk", false},
                   {"byte_fallback", false},
                   {"ignore_merges", pre == "llama3"},
                   {"vocab", std::move(vocab)},
                   {"merges", spec.merges}};
    ojson root = {{"version", "1.0"},
                  {"truncation", nullptr},
                  {"padding", nullptr},
                  {"added_tokens", std::move(added)},
                  {"normalizer", nullptr},
                  {"pre_tokenizer", std::move(pre_tok)},
                  {"post_processor", std::move(post)},
                  {"decoder",
                   {{"type", "ByteLevel"},
                    {"add_prefix_space", true},
                    {"trim_offsets", true},
                    {"use_regex", true}}},
                  {"model", std::move(model)}};
    ojson config = {{"add_bos_token", spec.add_bos && spec.bos >= 0},
                    {"add_eos_token", false},
                    {"bos_token", spec.bos >= 0 ? ojson(spec.tokens[spec.bos]) : ojson(nullptr)},
                    {"eos_token", spec.eos >= 0 ? ojson(spec.tokens[spec.eos]) : ojson(nullptr)},
                    {"clean_up_tokenization_spaces", false},
                    {"model_max_length", 1000000000000000019884624838656.0},
                    {"tokenizer_class", "PreTrainedTokenizerFast"}};
    if (spec.unk >= 0) config["unk_token"] = spec.tokens[spec.unk];

    auto write = [](const std::filesystem::path& p, const ojson& j) -> result<void> {
      auto io = [&](const char* what) {
        return error_info{errc::invalid_request, p.string() + ": " + what};
      };
      std::ofstream out(p, std::ios::binary | std::ios::trunc);
      if (!out) return io("cannot open for writing");
      out << j.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << '\n';
      out.close();
      if (!out) return io("write failed");
      return {};
    };
    if (auto r = write(path, root); !r) return r;
    return write(std::filesystem::path(path).parent_path() / "tokenizer_config.json", config);
  } catch (const std::exception& e) {
    return error_info{errc::internal, path + ": " + e.what()};
  }
}

}  // namespace tokenmill
