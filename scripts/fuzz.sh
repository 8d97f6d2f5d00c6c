#!/usr/bin/env bash
# Builds every fuzz target and runs each from its corpus for SECONDS
# (default 20), without a network (the config target resolves host names).
# Needs cargo-fuzz (installed here, pinned) and, for its address sanitizer on
# a stable toolchain, RUSTC_BOOTSTRAP=1. Runs two targets at a time; exits
# non-zero after the first pair with a crash.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-20}"
# libFuzzer is C++; unshare comes with util-linux.
if ! command -v c++ >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq g++
fi
if ! cargo fuzz --version 2>/dev/null | grep -q '0\.13\.2'; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1
cargo fuzz build
bin="target/x86_64-unknown-linux-gnu/release"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
run() {
  local target="$1"
  mkdir -p "$work/$target"
  # New inputs go to the scratch copy; the committed corpus stays as it is.
  if unshare -n "$bin/$target" "$work/$target" "corpus/$target" \
    -max_total_time="$seconds" -artifact_prefix="$work/$target-" 2>"$work/$target.log"; then
    echo "fuzz: $target: $(grep -oE 'Done [0-9]+ runs in [0-9]+ second' "$work/$target.log")"
  else
    tail -40 "$work/$target.log"
    echo "fuzz: $target failed; the input is in the log above" >&2
    return 1
  fi
}
# Two at a time, one per core: each target still runs SECONDS.
failed=0
for pair in "config head" "keys json_scan" "admin record"; do
  read -r a b <<<"$pair"
  run "$a" & first=$!
  run "$b" & second=$!
  wait "$first" || failed=1
  wait "$second" || failed=1
  [ "$failed" -eq 0 ] || exit 1
done
