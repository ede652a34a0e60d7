#pragma once
/// Slurm allocations as host manifests (`tokenmill manifest from-slurm`, `tokenmill launch
/// --slurm`). Inside a job, Slurm says which hosts it got (SLURM_JOB_NODELIST, hostlist
/// syntax: "node[01-03,07],gpu5") and how many tasks each runs (SLURM_TASKS_PER_NODE:
/// "2(x3),1"). Every task slot becomes one tokenmill node, host by host, so a host with
/// two tasks runs two nodes (on distinct default ports: 7800 + the node's index).
///
/// The template is a host manifest without `nodes` (and without `frontend.node`), with a
/// `slurm` section that says what runs where:
///
///     slurm:
///       head: [router, supervisor, kv_store]      # the first slot: node "head"
///       roles:                                    # the other slots, in this order
///         - {name: p, count: 1, actors: [{prefill: {threads: 4}}]}
///         - {name: d, share: 1, actors: [{decode: {max_batch: 64}}]}
///
/// `count` takes that many slots; the slots left after every count are split between the
/// `share` roles in proportion to their shares (largest remainder, at least one each). Node
/// names are NAME0, NAME1, ... per role. `first_port: P` and `first_http_port: H` in the
/// slurm section give node k the ports P + k and H + k (default: the manifest's, 7800 + k
/// and frontend.http_port + 1 + k). A slot no role takes is an error: the allocation
/// and the template disagree. CAF-free: tested as plain functions.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"

namespace tokenmill {

/// Host names of a Slurm hostlist, in order: comma-separated entries, each a name with any
/// number of bracketed range lists ("rack[1-2]-n[01-02]" is four hosts); a range keeps the
/// zero padding of its first bound. At most `max_hosts` hosts. Errors name the character
/// position and what was expected.
result<std::vector<std::string>> expand_hostlist(std::string_view list, size_t max_hosts = 65536);

/// SLURM_TASKS_PER_NODE ("2(x3),1") as one count per host ([2, 2, 2, 1]).
result<std::vector<uint32_t>> expand_tasks_per_node(std::string_view spec);

/// The hosts of an allocation and the tasks each runs (same length).
struct slurm_allocation {
  std::vector<std::string> hosts;
  std::vector<uint32_t> tasks;
};

/// The allocation from SLURM_JOB_NODELIST and SLURM_TASKS_PER_NODE (one task per host when
/// the latter is empty); errors name the variable.
result<slurm_allocation> slurm_allocation_from(std::string_view nodelist,
                                               std::string_view tasks_per_node);

/// One node of the manifest made for an allocation.
struct slurm_node {
  std::string name;
  std::string host;
};

struct slurm_manifest {
  std::string text;               ///< the host manifest (YAML)
  std::vector<slurm_node> nodes;  ///< in manifest order: the head first
};

/// The host manifest for `alloc` from the template's text. `template_file` prefixes every
/// error (FILE:LINE:COLUMN: FIELD: what; expected what) and is where a relative model path
/// resolves: the manifest gets it absolute, so it can be written anywhere. The result is a
/// manifest the parser accepts or an error saying why not.
result<slurm_manifest> manifest_from_slurm(const std::string& template_text,
                                           const std::string& template_file,
                                           const slurm_allocation& alloc);

}  // namespace tokenmill
