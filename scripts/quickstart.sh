#!/usr/bin/env bash
# The README's quick start: builds manifold and publishes the two-architecture
# test image (two streamLayeredImage-style scripts) to an OCI image layout
# directory, ./out, then lists what was written. No registry needed.
#
# On Debian it installs what the build needs when missing (libisal-dev for the
# gzip encoder, python3 for the test streams); elsewhere install Intel ISA-L
# and Python 3 yourself, or use `nix develop`.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -e /usr/include/isa-l/igzip_lib.h ] || need+=(libisal-dev)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if ((${#need[@]})) && command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${need[*]}" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi

cargo build --quiet
out=${1:-./out}
./target/debug/manifold publish --repo "oci:$out" --tag latest \
  testdata/stream-amd64 testdata/stream-arm64
echo "index.json of $out:" >&2
python3 -m json.tool "$out/index.json" >&2
echo "what latest points at (manifold inspect oci:$out:latest):" >&2
./target/debug/manifold inspect "oci:$out:latest" >&2
