/// libFuzzer target: the Cap'n Proto codec (schema/codec.hpp) decoding arbitrary message
/// bytes. The bytes are read as a flat single-segment message with the RPC server's kind
/// of limits (a traversal limit, the default nesting limit); the first byte picks the
/// root type. Cap'n Proto reports malformed pointers as kj::Exception, which the RPC
/// layer turns into an error for the caller, so the harness catches exactly that; any
/// other crash or sanitizer report is a finding.
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "schema/codec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tokenmill;
  if (size == 0) return 0;
  const uint8_t sel = data[0];
  // Cap'n Proto reads aligned words: copy the rest into a word buffer (the tail that is not
  // a whole word is dropped, as a stream reader would never hand it over).
  std::vector<capnp::word> words((size - 1) / sizeof(capnp::word));
  if (words.empty()) return 0;
  std::memcpy(words.data(), data + 1, words.size() * sizeof(capnp::word));
  capnp::ReaderOptions opts;
  opts.traversalLimitInWords = (1u << 20) / sizeof(capnp::word);  // 1 MiB per message
  try {
    kj::ArrayPtr<const capnp::word> flat(words.data(), words.size());
    auto decode_root = [sel](capnp::MessageReader& msg) {
      switch (sel % 5) {
        case 0:
          (void)codec::decode(msg.getRoot<rpc::GenerateRequest>());
          break;
        case 1:
          (void)codec::decode(msg.getRoot<rpc::Summary>());
          break;
        case 2:
          (void)codec::decode(msg.getRoot<rpc::ClusterStatus>());
          break;
        case 3:
          (void)codec::decode(msg.getRoot<rpc::ModelInfo>());
          break;
        default:
          (void)codec::decode(msg.getRoot<rpc::TokenChunk>());
          break;
      }
    };
    if (sel & 0x80) {
      // With a segment table, as on the wire.
      capnp::FlatArrayMessageReader msg(flat, opts);
      decode_root(msg);
    } else {
      // One bare segment (no table), so the fuzzer reaches the pointers directly.
      kj::ArrayPtr<const capnp::word> segs[] = {flat};
      capnp::SegmentArrayMessageReader msg(kj::arrayPtr(segs, 1), opts);
      decode_root(msg);
    }
  } catch (const kj::Exception&) {
    // A malformed message: the RPC layer's error path.
  }
  return 0;
}
