#!/usr/bin/env bash
# Copies the shared libraries a tokenmill binary needs into DEST, so that it runs on a
# machine without our Debian packages (the GPU machine: CUDA, but no CAF, UCX, Cap'n Proto,
# Boost...). Left out: the C library and loader (the target's own must be used), and the
# CUDA driver, runtime and cuBLAS (the target's CUDA install provides them; cuBLAS alone is
# hundreds of MB). Run the binary there with LD_LIBRARY_PATH=DEST.
#   scripts/collect-libs.sh BINARY DEST
set -euo pipefail
if [[ $# -ne 2 || ! -x "$1" ]]; then
  echo "usage: $0 BINARY DEST (BINARY must be an executable)" >&2
  exit 2
fi
bin="$1"
dest="$2"
mkdir -p "$dest"
skip='^(libc|libm|libpthread|libdl|librt|libresolv|ld-linux-x86-64|linux-vdso|libcuda|libcudart|libcublas|libcublasLt|libnvidia-.*)\.so'
count=0
bytes=0
while read -r name path; do
  [[ -n "$path" && -f "$path" ]] || continue
  if [[ "$name" =~ $skip ]]; then continue; fi
  cp -L "$path" "$dest/$name"
  count=$((count + 1))
  bytes=$((bytes + $(stat -c %s "$dest/$name")))
done < <(ldd "$bin" | awk '/=>/ {print $1, $3}')
echo "collect-libs: $count libraries, $((bytes / 1024 / 1024)) MiB in $dest"
