#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs every check and test.
#
#   ./scripts/test.sh
#
# Installs (Debian): slapd and ldap-utils for the directory tests, postgresql for the store
# tests, npm for the buf CLI (installed locally under .tools/), busybox for the charts' init
# scripts, chromium and chromium-driver for the browser sign-in test, samba and iproute2 for the
# Active Directory tests (a real Samba DC on a loopback address of its own), dpkg-dev, adduser
# and systemd for the agent's Debian package test (built, installed, its unit verified and run
# under a private systemd); the chart tests' Python packages (the real Helm engine, kubernetes-validate) go in a
# virtualenv under .tools/. Needs root or sudo for apt-get. Then: buf lint, cargo fmt --check,
# cargo clippy -D warnings, cargo build + cargo test --workspace, the agent's Debian package, the Helm chart
# tests.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

packages=(slapd ldap-utils postgresql busybox chromium chromium-driver samba iproute2 dpkg-dev adduser systemd)
command -v npm >/dev/null 2>&1 || packages+=(npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

if [ ! -x .tools/node_modules/.bin/buf ]; then
  echo "==> installing the buf CLI (npm @bufbuild/buf) under .tools/"
  npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf
fi

echo "==> buf lint"
.tools/node_modules/.bin/buf lint

# A fresh CI clone gains nothing from incremental compilation, and it costs disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"; fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> cargo build (the service binaries and every test, with the test build's features)"
cargo build --workspace --all-targets --locked

echo "==> cargo test"
PASSAGE_BIN_DIR="$PWD/target/debug" cargo test --workspace --locked

echo "==> the agent's Debian package (packaging/tests)"
as_root packaging/tests/test_deb.sh "$PWD/target/debug/passage-agent"

echo "==> Helm chart tests (charts/tests)"
if [ ! -x .tools/chartenv/bin/python ]; then
  python3 -m venv .tools/chartenv
fi
.tools/chartenv/bin/pip install --quiet --disable-pip-version-check -r charts/tests/requirements.txt
# The end-to-end chart test starts the binaries the cargo tests built.
PASSAGE_BIN_DIR=target/debug .tools/chartenv/bin/python -m pytest charts/tests -q
