#!/usr/bin/env bash
# Installs the Debian 12 packages moectl builds and tests against. Idempotent: packages
# already present are skipped, so a second run costs one dpkg query. Run as root (or
# with sudo available). Set MOE_SKIP_APT=1 to skip entirely (e.g. on a prepared machine).
set -euo pipefail
[ "${MOE_SKIP_APT:-0}" = 1 ] && exit 0

PKGS=(
  build-essential cmake ninja-build ccache pkg-config
  libcli11-dev nlohmann-json3-dev libspdlog-dev libfmt-dev
  libgtest-dev libgmock-dev
  libopenblas-dev libpcre2-dev libutf8proc-dev zlib1g-dev
  libopenmpi-dev openmpi-bin patchelf
  libsentencepiece-dev sentencepiece
  python3 python3-numpy python3-torch
  clang-format clang-tidy
)
# Node.js (for the tokenizer reference tests) may come from elsewhere with its own npm;
# Debian's npm conflicts with such installs, so only ask apt when there is no npm at all.
command -v npm >/dev/null 2>&1 || PKGS+=(nodejs npm)
# The fuzz target needs clang's libFuzzer runtime; only with MOE_FUZZ=1 (not part of CI).
[ "${MOE_FUZZ:-0}" = 1 ] && PKGS+=(clang libclang-rt-14-dev)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing: ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
