#pragma once
/// `tokenmill k8s render`: the Kubernetes objects that run a host manifest's cluster.
///
/// Nodes with the same actors (and options) form a role group, run by one StatefulSet with
/// a headless Service; the frontend's node is always a group of its own (its probes and
/// Service differ). Pod k of group G is the k-th node of G in manifest order, and in the
/// cluster it is named after its pod: the manifest the pods read (a ConfigMap mounted at
/// /etc/tokenmill/cluster.yaml) is the given one with every node renamed to its pod's name,
/// addressed by the pod's stable DNS name (`POD.SERVICE`), and given its group's ports
/// (every pod has its own address, so the nodes of a group can share the ports of the
/// group's first node). So every pod runs the same command, `tokenmill node --name
/// $(POD_NAME)`, and one image serves every role.
///
/// Probes: liveness on `/health`; readiness on `/ready` for the frontend's node (the
/// cluster is ready and a decode worker is up), on `/health` for the others (their HTTP
/// endpoint only answers once the node joined the supervisor). Resource requests: CPUs =
/// the worker threads of the node (at least 1), `nvidia.com/gpu` = the highest device
/// ordinal of its cuda workers + 1, memory when given. A PodDisruptionBudget per group lets
/// one pod at a time be evicted, none of the supervisor's group (the cluster does not
/// survive losing it). CAF-free: tested as plain functions.
#include <cstdint>
#include <string>
#include <vector>

#include "cluster/manifest.hpp"
#include "common/result.hpp"

namespace tokenmill {

/// How to render; everything but the image has a default.
struct k8s_options {
  std::string image;                  ///< container image with `tokenmill` on its PATH
  std::string namespace_name;         ///< metadata.namespace of every object; empty: not set
  std::string prefix;                 ///< object name prefix; empty: the cluster's name, sanitised
  std::string model_claim;            ///< PVC holding the model; empty: "<prefix>-models"
  std::string model_dir = "/models";  ///< where the model claim is mounted in every pod
  std::string service_type = "ClusterIP";  ///< the frontend Service's type
  std::string memory;  ///< memory request and limit of every pod ("8Gi"); empty: none
  /// UCX_TLS in every pod ("tcp": pods share no memory, so UCX must not pick shared-memory
  /// transports across them); empty leaves UCX to choose (an RDMA cluster).
  std::string ucx_tls = "tcp";
  uint32_t join_timeout_s = 120;  ///< `tokenmill node --join-timeout` in every pod
  /// The pods are separate hosts: without TLS in the manifest, rendering is refused unless
  /// this says plaintext between pods is wanted (the in-cluster manifest then says
  /// `security: {insecure: true}`).
  bool insecure = false;
};

/// Nodes with the same actors, run by one StatefulSet.
struct k8s_group {
  std::string role;           ///< "head", "prefill", "decode" or "worker" (+ "-2", ...)
  std::string name;           ///< StatefulSet and headless Service name: "<prefix>-<role>"
  std::vector<size_t> nodes;  ///< indices into manifest::nodes; pod k runs nodes[k]
  bool frontend = false;      ///< runs the frontend's node (one node)
  bool supervisor = false;    ///< runs the supervisor
  uint16_t port = 0;          ///< control port of its pods
  uint16_t http_port = 0;     ///< /health (and /metrics) port of its pods
  uint32_t cpus = 1;          ///< CPU request
  uint32_t gpus = 0;          ///< nvidia.com/gpu request and limit
};

/// One file of the rendering.
struct k8s_file {
  std::string name;  ///< file name, no directory
  std::string text;  ///< YAML: one or more documents
};

struct k8s_rendering {
  std::string prefix;
  std::vector<k8s_group> groups;
  /// Pod (= in-cluster node) name of every manifest node, by index.
  std::vector<std::string> pod_names;
  /// The manifest the pods read: the ConfigMap's `cluster.yaml`.
  std::string manifest_text;
  /// configmap.yaml, one file per group (Service, StatefulSet, PodDisruptionBudget),
  /// frontend-service.yaml.
  std::vector<k8s_file> files;
  /// With security.tls or security.secret_file: the Secret every pod mounts read-only at
  /// k8s_security_dir (the in-cluster manifest's paths point there); empty otherwise.
  /// `render` does not write it (it would put private keys into the output folder).
  std::string security_secret;
  /// The Secret's keys (file names under k8s_security_dir) and the local files they come
  /// from (the manifest's paths, {node} = each pod's name), in a stable order: the CA, each
  /// pod's certificate and key, the cluster secret.
  std::vector<std::pair<std::string, std::string>> security_files;
};

/// The `kubectl create secret generic` command that makes `r.security_secret` from the
/// local files (`namespace_name` as given to render; empty: none); empty without one.
std::string k8s_secret_command(const k8s_rendering& r, const std::string& namespace_name);

/// Where the pods find the manifest (the ConfigMap's mount).
inline constexpr const char* k8s_manifest_path = "/etc/tokenmill/cluster.yaml";
/// Where the pods find the certificates, keys and cluster secret (the Secret's mount).
inline constexpr const char* k8s_security_dir = "/etc/tokenmill/security";

/// A DNS-1123 label made of `s`: lower case, '_' and '.' become '-', no leading or trailing
/// '-'. Empty when `s` has any other character outside [A-Za-z0-9-] or nothing is left.
std::string k8s_label(const std::string& s);

/// Renders `m`, parsed from `manifest_text` (the file's text: the in-cluster manifest is
/// that text with the nodes, frontend and model path rewritten, so every other setting
/// carries over). Errors (errc::invalid_request) name the option or the manifest field at
/// fault: an unusable prefix or cluster name, names too long for Kubernetes, a bad service
/// type or memory quantity, an image missing.
result<k8s_rendering> render_k8s(const manifest& m, const std::string& manifest_text,
                                 const k8s_options& opts);

}  // namespace tokenmill
