#!/usr/bin/env bash
# Assembles an OCI image of tokenmill without a base image and without a registry: one
# layer holding the executable, every shared library it loads (ldd: glibc and its loader
# included), UCX's transport modules (loaded with dlopen) with theirs, glibc's NSS modules
# for host names, and a minimal /etc. Written as an OCI image layout folder and as a tar of
# it, which `podman load -i`, `skopeo copy oci-archive:...` and `ctr images import` take.
#   scripts/oci-image.sh [BINARY] [OUT_DIR] [TAG]
#     BINARY   default build/apps/tokenmill
#     OUT_DIR  default build/oci: OUT_DIR/layout/ and OUT_DIR/tokenmill-oci.tar
#     TAG      default tokenmill:<version from BINARY --version>
# A binary built with CUDA brings its CUDA runtime and cuBLAS (about 600 MB; cuBLAS is not
# in ldd's list, the cuda engine opens it with dlopen); the driver
# (libcuda, libnvidia-*) is left out: a GPU node's container runtime (the NVIDIA container
# toolkit) mounts the host's. Reproducible: fixed mtimes, owners and file order, so the
# same inputs give the same digests.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${1:-$repo/build/apps/tokenmill}"
out="${2:-$repo/build/oci}"
if [[ ! -x "$bin" ]]; then
  echo "oci-image: $bin is not an executable (build first: scripts/build.sh)" >&2
  exit 2
fi
version_line="$("$bin" --version)"   # "tokenmill 0.1.0 (commit abc...)"
version="$(awk '{print $2}' <<<"$version_line")"
commit="$(sed -n 's/.*(commit \(.*\))/\1/p' <<<"$version_line")"
tag="${3:-tokenmill:$version}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root/usr/bin" "$root/usr/lib" "$root/usr/lib64" "$root/etc/tokenmill" "$root/tmp" \
  "$root/models" "$root/proc" "$root/sys" "$root/dev"
chmod 1777 "$root/tmp"
# Merged /usr as in Debian 12: libraries found under /lib land in /usr/lib.
ln -s usr/lib "$root/lib"
ln -s usr/lib64 "$root/lib64"
cp "$bin" "$root/usr/bin/tokenmill"
strip --strip-unneeded "$root/usr/bin/tokenmill" 2>/dev/null || true
ln -s usr/bin "$root/bin"

# A file and what it loads, at the same paths inside the image.
copy_with_deps() {
  local f="$1"
  mkdir -p "$root$(dirname "$f")"
  cp -L "$f" "$root$f"
  while read -r path; do
    [[ -n "$path" && -f "$path" && ! -e "$root$path" ]] || continue
    mkdir -p "$root$(dirname "$path")"
    cp -L "$path" "$root$path"
  done < <(ldd "$f" 2>/dev/null | awk '/=> \// {print $3} /^\s*\/[^ ]+ \(/ {print $1}')
}
copy_with_deps "$bin"
# cuBLAS (with cuBLASLt) is opened with dlopen when a cuda engine starts, so ldd does not
# list it: the one of the runtime's major version, from the runtime's folder.
cudart="$(ldd "$bin" | awk '/libcudart\.so/ {print $3}')"
if [[ -n "$cudart" ]]; then
  major="${cudart##*.so.}"
  copy_with_deps "$(dirname "$cudart")/libcublas.so.${major%%.*}"
fi
# ldd names the loader by the path the binary asks for (/lib64/ld-linux-x86-64.so.2).
interp="$(readelf -l "$bin" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')"
[[ -n "$interp" ]] && copy_with_deps "$interp"
multiarch="$(dirname "$(ldd "$bin" | awk '/libc\.so/ {print $3}')")"
for module in "$multiarch"/ucx/*.so.0 "$multiarch"/libnss_files.so.2 "$multiarch"/libnss_dns.so.2; do
  [[ -f "$module" ]] && copy_with_deps "$module"
done
if [[ -d "$multiarch/ucx" ]]; then  # UCX finds its modules by these names
  for so in "$root$multiarch"/ucx/*.so.0; do ln -sf "$(basename "$so")" "${so%.0}"; done
fi
# The driver comes from the host (see the header).
find "$root" \( -name 'libcuda.so*' -o -name 'libnvidia*' \) -print0 | xargs -0 -r rm -f

cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/usr/bin/tokenmill
nobody:x:65534:65534:nobody:/nonexistent:/usr/bin/tokenmill
EOF
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
printf 'hosts: files dns\npasswd: files\ngroup: files\n' >"$root/etc/nsswitch.conf"
: >"$root/etc/hosts"

layout="$out/layout"
rm -rf "$layout"
mkdir -p "$layout/blobs/sha256"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$root" -cf "$work/layer.tar" .
diff_id="$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
gzip -n -1 -c "$work/layer.tar" >"$work/layer.tar.gz"
layer="$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)"
mv "$work/layer.tar.gz" "$layout/blobs/sha256/$layer"

python3 - "$layout" "$layer" "$diff_id" "$tag" "$version" "$commit" <<'EOF'
import hashlib, json, os, sys
layout, layer, diff_id, tag, version, commit = sys.argv[1:]
def blob(obj):
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return digest, len(data)
labels = {"org.opencontainers.image.title": "tokenmill",
          "org.opencontainers.image.version": version,
          "org.opencontainers.image.revision": commit}
config = {
    "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
    "config": {"Env": ["PATH=/usr/bin:/bin"], "Entrypoint": ["/usr/bin/tokenmill"],
               "Cmd": ["--help"], "WorkingDir": "/", "Labels": labels},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_id]},
    "history": [{"created": "1970-01-01T00:00:00Z",
                 "created_by": "scripts/oci-image.sh: tokenmill and the libraries it loads"}],
}
cfg_digest, cfg_size = blob(config)
layer_size = os.path.getsize(os.path.join(layout, "blobs", "sha256", layer))
manifest = {
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
               "digest": "sha256:" + cfg_digest, "size": cfg_size},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": "sha256:" + layer, "size": layer_size}],
    "annotations": labels,
}
man_digest, man_size = blob(manifest)
index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
         "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": "sha256:" + man_digest, "size": man_size,
                        "platform": {"architecture": "amd64", "os": "linux"},
                        "annotations": {"org.opencontainers.image.ref.name": tag,
                                        "io.containerd.image.name": tag}}]}
with open(os.path.join(layout, "index.json"), "w") as f:
    json.dump(index, f, sort_keys=True, separators=(",", ":"))
with open(os.path.join(layout, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
EOF
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$layout" -cf "$out/tokenmill-oci.tar" .
echo "oci-image: $tag: $(du -h "$out/tokenmill-oci.tar" | cut -f1) in $out/tokenmill-oci.tar" \
  "(layout $layout, $(find "$root" -type f | wc -l) files)"
