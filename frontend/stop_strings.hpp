#pragma once
/// Stop strings on streamed text (STYLE.md §2: a policy without CAF or Cap'n Proto).
/// Text is pushed as it is detokenized; what may be shown is handed back at once, except a
/// tail that could still become the start of a stop string, which waits for more text.
/// The stop string itself is never shown, nor anything after it.
#include <string>
#include <string_view>
#include <vector>

namespace tokenmill {

class stop_matcher {
 public:
  explicit stop_matcher(std::vector<std::string> stops);

  /// Appends `text`; returns the text that can be shown now. Once a stop string has
  /// appeared, returns the text before it and then only "".
  std::string push(std::string_view text);
  /// The end of the stream: returns the held-back tail (nothing after a match).
  std::string finish();
  /// True once a stop string has appeared.
  bool matched() const { return matched_; }
  bool active() const { return !stops_.empty(); }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool matched_ = false;
};

}  // namespace tokenmill
