#include "engine/text_tokenizer.hpp"

#include <exception>
#include <string>

#include "engine/detail/vocab_core.hpp"

namespace tokenmill {

result<std::shared_ptr<const tokenizer>> make_text_tokenizer(const vocab_spec& spec) {
  try {
    if (spec.model == vocab_spec::model_kind::spm) return detail::make_spm_tokenizer(spec);
    return detail::make_bpe_tokenizer(spec);
  } catch (const std::exception& e) {
    return error_info{errc::internal, std::string("make_text_tokenizer: ") + e.what()};
  }
}

}  // namespace tokenmill
