#include "grammar/regex.hpp"

#include <algorithm>
#include <array>
#include <bitset>
#include <map>
#include <stdexcept>
#include <unordered_map>

#include <fmt/format.h>

namespace tokenmill::grammar {
namespace {

using byte_set = std::bitset<256>;

/// The parsed pattern.
struct node {
  enum kind_t : uint8_t { empty, bytes, concat, alt, repeat } kind = empty;
  byte_set set;            ///< bytes: the one byte this node matches is in here
  std::vector<node> kids;  ///< concat, alt: the parts; repeat: the one repeated
  uint32_t min = 0, max = 0;
  bool unbounded = false;  ///< repeat: no upper bound
};

/// Thrown inside this file only and turned into an error_info by compile_regex.
struct regex_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

node byte_node(const byte_set& s) {
  node n;
  n.kind = node::bytes;
  n.set = s;
  return n;
}

node range_node(unsigned lo, unsigned hi) {
  byte_set s;
  for (unsigned b = lo; b <= hi; ++b)
    s.set(b);
  return byte_node(s);
}

node seq(std::vector<node> kids) {
  if (kids.size() == 1) return std::move(kids[0]);
  node n;
  n.kind = node::concat;
  n.kids = std::move(kids);
  return n;
}

node alt(std::vector<node> kids) {
  if (kids.size() == 1) return std::move(kids[0]);
  node n;
  n.kind = node::alt;
  n.kids = std::move(kids);
  return n;
}

node literal(std::string_view text) {
  std::vector<node> kids;
  for (unsigned char c : text) {
    byte_set s;
    s.set(c);
    kids.push_back(byte_node(s));
  }
  if (kids.empty()) return node{};
  return seq(std::move(kids));
}

/// One well-formed UTF-8 character of two to four bytes (Unicode's table 3-7): no overlong
/// forms (E0 80..9F, F0 80..8F), no surrogates (ED A0..BF) and nothing above U+10FFFF
/// (F4 90..BF), which a JSON parser would refuse or a detokenizer replace with U+FFFD.
node utf8_multibyte() {
  auto cont = [] { return range_node(0x80, 0xBF); };
  return alt({seq({range_node(0xC2, 0xDF), cont()}),
              seq({range_node(0xE0, 0xE0), range_node(0xA0, 0xBF), cont()}),
              seq({range_node(0xE1, 0xEC), cont(), cont()}),
              seq({range_node(0xED, 0xED), range_node(0x80, 0x9F), cont()}),
              seq({range_node(0xEE, 0xEF), cont(), cont()}),
              seq({range_node(0xF0, 0xF0), range_node(0x90, 0xBF), cont(), cont()}),
              seq({range_node(0xF1, 0xF3), cont(), cont(), cont()}),
              seq({range_node(0xF4, 0xF4), range_node(0x80, 0x8F), cont(), cont()})});
}

/// The ASCII bytes of `ascii` (bits >= 0x80 ignored), plus any non-ASCII character when
/// `any_non_ascii`, plus the listed multibyte characters.
node char_class(byte_set ascii, bool any_non_ascii, const std::vector<std::string>& extra = {}) {
  for (unsigned b = 0x80; b < 256; ++b)
    ascii.reset(b);
  std::vector<node> kids;
  if (ascii.any()) kids.push_back(byte_node(ascii));
  if (any_non_ascii) kids.push_back(utf8_multibyte());
  for (const auto& e : extra)
    kids.push_back(literal(e));
  if (kids.empty()) throw regex_error("regex: a character class matches nothing");
  return alt(std::move(kids));
}

std::string utf8_encode(uint32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
  return out;
}

byte_set ascii_set(std::string_view ranges) {
  byte_set s;
  for (size_t i = 0; i < ranges.size(); i += 2)
    for (unsigned b = (unsigned char)ranges[i]; b <= (unsigned char)ranges[i + 1]; ++b)
      s.set(b);
  return s;
}

const byte_set k_digit = ascii_set("09");
const byte_set k_word = ascii_set("09azAZ__");
const byte_set k_space = ascii_set("  \t\t\n\n\r\r\f\f\v\v");

byte_set ascii_complement(const byte_set& s) {
  byte_set out = ~s;
  for (unsigned b = 0x80; b < 256; ++b)
    out.reset(b);
  return out;
}

/// What one escape sequence stands for: a set of ASCII bytes (maybe negated, then also
/// every non-ASCII character), or a literal character (UTF-8 bytes).
struct escape {
  bool is_class = false;
  byte_set set;
  bool non_ascii = false;
  std::string text;
};

class parser {
 public:
  explicit parser(std::string_view p) : p_(p) {}

  node parse() {
    if (!p_.empty() && p_[0] == '^') pos_ = 1;
    node n = parse_alt();
    if (pos_ < p_.size()) fail(fmt::format("unbalanced ')'"));
    return n;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw regex_error(fmt::format("regex: {} at offset {}", what, pos_));
  }
  bool at_end() const { return pos_ >= p_.size(); }
  char peek() const { return p_[pos_]; }

  node parse_alt() {
    std::vector<node> alts{parse_concat()};
    while (!at_end() && peek() == '|') {
      ++pos_;
      alts.push_back(parse_concat());
    }
    return alt(std::move(alts));
  }

  node parse_concat() {
    std::vector<node> parts;
    while (!at_end() && peek() != '|' && peek() != ')') {
      if (peek() == '$' && pos_ + 1 == p_.size()) {  // the end anchor: full match anyway
        ++pos_;
        break;
      }
      parts.push_back(parse_repeat());
    }
    if (parts.empty()) return node{};
    return seq(std::move(parts));
  }

  uint32_t parse_count() {
    size_t start = pos_;
    uint64_t v = 0;
    while (!at_end() && peek() >= '0' && peek() <= '9') {
      v = v * 10 + uint64_t(peek() - '0');
      if (v > 1'000'000) fail("repetition count too large");
      ++pos_;
    }
    if (pos_ == start) fail("bad repetition {m,n}: expected a number");
    return uint32_t(v);
  }

  node parse_repeat() {
    node a = parse_atom();
    while (!at_end()) {
      char c = peek();
      uint32_t lo = 0, hi = 0;
      bool unbounded = false;
      if (c == '*') {
        unbounded = true;
        ++pos_;
      } else if (c == '+') {
        lo = 1;
        unbounded = true;
        ++pos_;
      } else if (c == '?') {
        hi = 1;
        ++pos_;
      } else if (c == '{') {
        ++pos_;
        lo = parse_count();
        hi = lo;
        if (!at_end() && peek() == ',') {
          ++pos_;
          if (!at_end() && peek() == '}')
            unbounded = true;
          else
            hi = parse_count();
        }
        if (at_end() || peek() != '}') fail("bad repetition {m,n}: expected '}'");
        ++pos_;
        if (!unbounded && hi < lo) fail(fmt::format("bad repetition {{{},{}}}: max < min", lo, hi));
        if (lo > max_repeat_ || (!unbounded && hi > max_repeat_))
          fail(fmt::format("repetition count above the limit of {}", max_repeat_));
      } else {
        break;
      }
      if (!at_end() && (peek() == '?' || peek() == '+'))
        fail("lazy and possessive quantifiers are not supported");
      node r;
      r.kind = node::repeat;
      r.min = lo;
      r.max = hi;
      r.unbounded = unbounded;
      r.kids.push_back(std::move(a));
      a = std::move(r);
    }
    return a;
  }

  uint32_t hex_digits(size_t count) {
    uint32_t v = 0;
    for (size_t i = 0; i < count; ++i) {
      if (at_end() || !std::isxdigit(static_cast<unsigned char>(peek())))
        fail(fmt::format("expected {} hex digits", count));
      char c = peek();
      v = v * 16 + uint32_t(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
      ++pos_;
    }
    return v;
  }

  /// After the backslash.
  escape parse_escape() {
    if (at_end()) fail("trailing backslash");
    const size_t at = pos_;
    char c = p_[pos_++];
    escape e;
    auto cls = [&](const byte_set& s, bool negated) {
      e.is_class = true;
      e.set = negated ? ascii_complement(s) : s;
      e.non_ascii = negated;
    };
    switch (c) {
      case 'd':
        cls(k_digit, false);
        return e;
      case 'D':
        cls(k_digit, true);
        return e;
      case 'w':
        cls(k_word, false);
        return e;
      case 'W':
        cls(k_word, true);
        return e;
      case 's':
        cls(k_space, false);
        return e;
      case 'S':
        cls(k_space, true);
        return e;
      case 'n':
        e.text = "\n";
        return e;
      case 't':
        e.text = "\t";
        return e;
      case 'r':
        e.text = "\r";
        return e;
      case 'f':
        e.text = "\f";
        return e;
      case 'v':
        e.text = "\v";
        return e;
      case '0':
        e.text = std::string(1, '\0');
        return e;
      case 'x':
        e.text = utf8_encode(hex_digits(2));
        return e;
      case 'u': {
        uint32_t cp = hex_digits(4);
        if (cp >= 0xD800 && cp <= 0xDFFF) fail("\\u escape of a surrogate is not supported");
        e.text = utf8_encode(cp);
        return e;
      }
      default:
        break;
    }
    if (std::isalnum(static_cast<unsigned char>(c)) || static_cast<unsigned char>(c) >= 0x80) {
      pos_ = at;
      fail(fmt::format("unsupported escape \\{}", c));
    }
    e.text = std::string(1, c);
    return e;
  }

  /// The UTF-8 character starting at pos_ (one byte when ASCII).
  std::string take_char() {
    unsigned char c = static_cast<unsigned char>(p_[pos_]);
    size_t len = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (pos_ + len > p_.size()) len = 1;
    std::string out(p_.substr(pos_, len));
    pos_ += len;
    return out;
  }

  node parse_class() {  // after '['
    bool negated = false;
    if (!at_end() && peek() == '^') {
      negated = true;
      ++pos_;
    }
    byte_set set;
    bool non_ascii_any = false;
    std::vector<std::string> extra;
    bool first = true;
    while (true) {
      if (at_end()) fail("unterminated character class");
      if (peek() == ']' && !first) {
        ++pos_;
        break;
      }
      first = false;
      // One item: a character (maybe the start of a range) or a class escape.
      std::string lo;
      if (peek() == '\\') {
        ++pos_;
        escape e = parse_escape();
        if (e.is_class) {
          set |= e.set;
          non_ascii_any |= e.non_ascii;
          continue;
        }
        lo = e.text;
      } else {
        if (peek() == '[' && pos_ + 1 < p_.size() && p_[pos_ + 1] == ':')
          fail("POSIX classes [:name:] are not supported");
        lo = take_char();
      }
      if (pos_ + 1 < p_.size() && peek() == '-' && p_[pos_ + 1] != ']') {
        ++pos_;
        std::string hi;
        if (peek() == '\\') {
          ++pos_;
          escape e = parse_escape();
          if (e.is_class) fail("a class escape cannot end a range");
          hi = e.text;
        } else {
          hi = take_char();
        }
        if (lo.size() != 1 || hi.size() != 1 || (unsigned char)lo[0] >= 0x80 ||
            (unsigned char)hi[0] >= 0x80)
          fail("ranges of non-ASCII characters are not supported");
        if ((unsigned char)hi[0] < (unsigned char)lo[0]) fail("bad range: end before start");
        for (unsigned b = (unsigned char)lo[0]; b <= (unsigned char)hi[0]; ++b)
          set.set(b);
        continue;
      }
      if (lo.size() == 1 && (unsigned char)lo[0] < 0x80)
        set.set((unsigned char)lo[0]);
      else
        extra.push_back(lo);
    }
    if (negated) {
      if (!extra.empty()) fail("a negated class cannot list non-ASCII characters");
      if (non_ascii_any) fail("a negated class cannot hold \\D, \\W or \\S");
      return char_class(ascii_complement(set), true);
    }
    return char_class(set, non_ascii_any, extra);
  }

  node parse_atom() {
    char c = peek();
    switch (c) {
      case '(': {
        ++pos_;
        if (!at_end() && peek() == '?') {
          if (pos_ + 1 < p_.size() && p_[pos_ + 1] == ':')
            pos_ += 2;
          else
            fail("unsupported group (?…): only (?:…) is supported");
        }
        node n = parse_alt();
        if (at_end() || peek() != ')') fail("unbalanced '('");
        ++pos_;
        return n;
      }
      case '[':
        ++pos_;
        return parse_class();
      case '.':
        ++pos_;
        return char_class(ascii_complement(ascii_set("\n\n")), true);
      case '\\': {
        ++pos_;
        escape e = parse_escape();
        if (e.is_class) return char_class(e.set, e.non_ascii);
        return literal(e.text);
      }
      case '*':
      case '+':
      case '?':
      case '{':
        fail(fmt::format("nothing to repeat before '{}'", c));
      case '^':
        fail("'^' is only supported at the start");
      case '$':
        fail("'$' is only supported at the end");
      default:
        return literal(take_char());
    }
  }

  std::string_view p_;
  size_t pos_ = 0;

 public:
  uint32_t max_repeat_ = 1000;
};

/// Thompson NFA: a state consumes one byte of `sets[set]` to `out`, or (set < 0) moves
/// without input to `out` and `out1` (each -1 when absent).
struct nfa {
  struct state {
    int32_t set = -1;
    int32_t out = -1;
    int32_t out1 = -1;
  };
  std::vector<state> st;
  std::vector<byte_set> sets;
  std::map<std::array<uint64_t, 4>, int32_t> set_index;
  size_t limit = 0;

  struct frag {
    int32_t start, end;  ///< end: an epsilon state without outs yet
  };

  int32_t add(state s) {
    if (st.size() >= limit)
      throw regex_error(fmt::format("regex: too large (more than {} NFA states)", limit));
    st.push_back(s);
    return int32_t(st.size() - 1);
  }
  int32_t set_id(const byte_set& s) {
    std::array<uint64_t, 4> key{};
    for (unsigned b = 0; b < 256; ++b)
      if (s.test(b)) key[b / 64] |= uint64_t{1} << (b % 64);
    auto [it, fresh] = set_index.emplace(key, int32_t(sets.size()));
    if (fresh) sets.push_back(s);
    return it->second;
  }
  frag empty() {
    int32_t s = add({});
    return {s, s};
  }
  void append(frag& f, frag g) {
    st[size_t(f.end)].out = g.start;
    f.end = g.end;
  }
  frag build(const node& n) {
    switch (n.kind) {
      case node::empty:
        return empty();
      case node::bytes: {
        int32_t e = add({});
        int32_t s = add({set_id(n.set), e, -1});
        return {s, e};
      }
      case node::concat: {
        frag f = build(n.kids[0]);
        for (size_t i = 1; i < n.kids.size(); ++i)
          append(f, build(n.kids[i]));
        return f;
      }
      case node::alt: {
        // A chain of epsilon forks: s_i tries kid i, or moves on to s_{i+1}.
        int32_t e = add({});
        int32_t first = -1, prev = -1;
        for (const auto& k : n.kids) {
          frag g = build(k);
          st[size_t(g.end)].out = e;
          int32_t s = add({-1, g.start, -1});
          if (prev >= 0)
            st[size_t(prev)].out1 = s;
          else
            first = s;
          prev = s;
        }
        return {first, e};
      }
      case node::repeat: {
        frag f = empty();
        for (uint32_t i = 0; i < n.min; ++i)
          append(f, build(n.kids[0]));
        if (n.unbounded) {
          int32_t s = add({});
          int32_t e = add({});
          frag g = build(n.kids[0]);
          st[size_t(s)].out = g.start;
          st[size_t(s)].out1 = e;
          st[size_t(g.end)].out = s;
          append(f, {s, e});
        } else {
          for (uint32_t i = n.min; i < n.max; ++i) {
            int32_t s = add({});
            int32_t e = add({});
            frag g = build(n.kids[0]);
            st[size_t(s)].out = g.start;
            st[size_t(s)].out1 = e;
            st[size_t(g.end)].out = e;
            append(f, {s, e});
          }
        }
        return f;
      }
    }
    return empty();
  }
};

struct vec_hash {
  size_t operator()(const std::vector<int32_t>& v) const {
    uint64_t h = 1469598103934665603ULL;
    for (int32_t x : v)
      h = (h ^ uint64_t(uint32_t(x))) * 1099511628211ULL;
    return size_t(h);
  }
};

dfa determinize(const nfa& a, int32_t start, int32_t accept, size_t max_states) {
  dfa d;
  // Byte classes: bytes that every set treats alike.
  std::array<int32_t, 256> cls{};
  uint32_t ncls = 1;
  for (const auto& s : a.sets) {
    std::vector<int32_t> remap(size_t(ncls) * 2, -1);
    uint32_t n = 0;
    for (unsigned b = 0; b < 256; ++b) {
      int32_t& r = remap[size_t(cls[b]) * 2 + (s.test(b) ? 1 : 0)];
      if (r < 0) r = int32_t(n++);
      cls[b] = r;
    }
    ncls = n;
  }
  std::vector<uint8_t> rep(ncls);
  for (unsigned b = 256; b-- > 0;)
    rep[size_t(cls[b])] = uint8_t(b);
  for (unsigned b = 0; b < 256; ++b)
    d.byte_class[b] = uint8_t(cls[b]);
  d.classes = ncls;
  // set -> classes it contains
  std::vector<std::vector<uint8_t>> set_has(a.sets.size(), std::vector<uint8_t>(ncls));
  for (size_t i = 0; i < a.sets.size(); ++i)
    for (uint32_t c = 0; c < ncls; ++c)
      set_has[i][c] = a.sets[i].test(rep[c]);

  std::vector<uint32_t> mark(a.st.size(), 0);
  uint32_t gen = 0;
  std::vector<int32_t> stack;
  auto closure = [&](std::vector<int32_t>& seeds) {
    ++gen;
    std::vector<int32_t> out;
    stack.assign(seeds.begin(), seeds.end());
    while (!stack.empty()) {
      int32_t u = stack.back();
      stack.pop_back();
      if (u < 0 || mark[size_t(u)] == gen) continue;
      mark[size_t(u)] = gen;
      const auto& s = a.st[size_t(u)];
      if (s.set >= 0) {
        out.push_back(u);
      } else {
        if (u == accept) out.push_back(u);
        stack.push_back(s.out);
        stack.push_back(s.out1);
      }
    }
    std::sort(out.begin(), out.end());
    return out;
  };

  std::unordered_map<std::vector<int32_t>, int32_t, vec_hash> ids;
  std::vector<std::vector<int32_t>> sets;
  auto intern = [&](std::vector<int32_t> s) -> int32_t {
    if (s.empty()) return dfa::dead;
    auto it = ids.find(s);
    if (it != ids.end()) return it->second;
    if (sets.size() >= max_states)
      throw regex_error(fmt::format("regex: too large (more than {} DFA states)", max_states));
    int32_t id = int32_t(sets.size());
    ids.emplace(s, id);
    sets.push_back(std::move(s));
    return id;
  };
  std::vector<int32_t> seeds{start};
  d.start = intern(closure(seeds));
  std::vector<int32_t> next;
  for (size_t i = 0; i < sets.size(); ++i) {
    for (uint32_t c = 0; c < ncls; ++c) {
      seeds.clear();
      for (int32_t u : sets[i]) {
        const auto& s = a.st[size_t(u)];
        if (s.set >= 0 && set_has[size_t(s.set)][c]) seeds.push_back(s.out);
      }
      next.push_back(seeds.empty() ? dfa::dead : intern(closure(seeds)));
    }
  }
  d.accepting.resize(sets.size());
  for (size_t i = 0; i < sets.size(); ++i)
    d.accepting[i] = std::binary_search(sets[i].begin(), sets[i].end(), accept);
  d.next = std::move(next);
  return d;
}

/// Drops the states that cannot reach an accepting one (steps into them become dead).
dfa prune(const dfa& d) {
  const size_t n = d.states();
  std::vector<std::vector<int32_t>> rev(n);
  for (size_t s = 0; s < n; ++s)
    for (uint32_t c = 0; c < d.classes; ++c) {
      int32_t t = d.next[s * d.classes + c];
      if (t >= 0) rev[size_t(t)].push_back(int32_t(s));
    }
  std::vector<uint8_t> live(n, 0);
  std::vector<int32_t> work;
  for (size_t s = 0; s < n; ++s)
    if (d.accepting[s]) {
      live[s] = 1;
      work.push_back(int32_t(s));
    }
  while (!work.empty()) {
    int32_t t = work.back();
    work.pop_back();
    for (int32_t s : rev[size_t(t)])
      if (!live[size_t(s)]) {
        live[size_t(s)] = 1;
        work.push_back(s);
      }
  }
  if (!live[size_t(d.start)]) throw regex_error("regex: the pattern matches no text");
  std::vector<int32_t> id(n, dfa::dead);
  int32_t k = 0;
  for (size_t s = 0; s < n; ++s)
    if (live[s]) id[s] = k++;
  dfa out;
  std::copy(std::begin(d.byte_class), std::end(d.byte_class), std::begin(out.byte_class));
  out.classes = d.classes;
  out.start = id[size_t(d.start)];
  for (size_t s = 0; s < n; ++s) {
    if (!live[s]) continue;
    out.accepting.push_back(d.accepting[s]);
    for (uint32_t c = 0; c < d.classes; ++c) {
      int32_t t = d.next[s * d.classes + c];
      out.next.push_back(t >= 0 ? id[size_t(t)] : dfa::dead);
    }
  }
  return out;
}

}  // namespace

int32_t dfa::walk(int32_t state, std::string_view text) const {
  for (unsigned char c : text) {
    if (state < 0) return dead;
    state = step(state, c);
  }
  return state;
}

bool dfa::matches(std::string_view text) const {
  int32_t s = walk(start, text);
  return s >= 0 && accepting[size_t(s)];
}

bool dfa::final(int32_t state) const {
  for (uint32_t c = 0; c < classes; ++c)
    if (next[size_t(state) * classes + c] >= 0) return false;
  return true;
}

result<dfa> compile_regex(std::string_view pattern, const regex_limits& limits) {
  if (pattern.size() > limits.max_pattern_bytes)
    return error_info{errc::invalid_request,
                      fmt::format("regex: pattern of {} bytes is above the limit of {}",
                                  pattern.size(), limits.max_pattern_bytes)};
  try {
    parser p(pattern);
    p.max_repeat_ = limits.max_repeat;
    node root = p.parse();
    nfa a;
    a.limit = limits.max_nfa_states;
    nfa::frag f = a.build(root);
    return prune(determinize(a, f.start, f.end, limits.max_dfa_states));
  } catch (const regex_error& e) {
    return error_info{errc::invalid_request, e.what()};
  } catch (const std::bad_alloc&) {
    return error_info{errc::invalid_request, "regex: too large (out of memory compiling it)"};
  }
}

std::string regex_escape(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (std::string_view("\\.^$|?*+()[]{}").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

}  // namespace tokenmill::grammar
