#!/usr/bin/env bash
# Runs the whole test suite. On Debian it first installs what the build and
# the tests need (cmake for Pingora's zlib-ng; curl, openssl, redis-server,
# redis-sentinel and systemd's systemd-analyze for the integration tests;
# python3 and its venv for the Anthropic SDK test; chromium, node and
# playwright-core for the dashboard's browser test; the Codex CLI and
# OpenCode from npm for the agents' tests; prometheus's promtool for the
# alert rules; microsocks and tinyproxy, the real SOCKS5 and CONNECT proxies
# that relays sit behind in the upstream-proxy tests; strace, with which a
# test counts a request's writes), as root or with sudo, and cargo-deb,
# with which a test builds and inspects the .deb.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || need+=(redis-sentinel)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs npm)
command -v microsocks >/dev/null 2>&1 || need+=(microsocks)
command -v tinyproxy >/dev/null 2>&1 || need+=(tinyproxy)
command -v strace >/dev/null 2>&1 || need+=(strace)
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi
# promtool, which checks contrib's alert rules: Debian's prometheus package,
# without its recommends (node-exporter).
if ! command -v promtool >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus
fi

# The version is pinned: the package test relies on its layout and flags.
if ! cargo deb --version 2>/dev/null | grep -q '3\.8\.0'; then
  cargo install cargo-deb --locked --version 3.8.0
fi

# The Anthropic Python SDK, which a test drives through the edge, in a
# virtualenv of its own (pinned: the test checks the exceptions it raises).
# Debian's python3 makes a venv only with python3-venv: tried, then installed.
if ! target/sdk-venv/bin/python3 -c 'import anthropic' >/dev/null 2>&1; then
  rm -rf target/sdk-venv
  if ! python3 -m venv target/sdk-venv >/dev/null 2>&1; then
    rm -rf target/sdk-venv
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv
    python3 -m venv target/sdk-venv
  fi
  target/sdk-venv/bin/pip install -q 'anthropic==2.17.0'
fi

# playwright-core (pinned), with which a test drives Debian's chromium through
# the admin dashboard: 1.57 runs on Debian 12's Node 18 (1.65 needs Node 20).
if ! grep -qs '"version": "1.57.0"' target/browser/node_modules/playwright-core/package.json; then
  npm install --prefix target/browser --no-audit --no-fund --silent playwright-core@1.57.0
fi

# The Codex CLI (pinned; it carries its own binary), which a test drives
# offline through the edge against relays that answer the Responses API.
if ! grep -qs '"version": "0.171.0"' target/codex/node_modules/@openai/codex/package.json; then
  npm install --prefix target/codex --no-audit --no-fund --silent @openai/codex@0.171.0
fi

# OpenCode (pinned; its npm package carries one binary, with the AI SDK's
# Anthropic provider built in, so nothing is fetched when a test runs it),
# which a test drives offline through the edge against Anthropic relays.
if ! grep -qs '"version": "1.18.33"' target/opencode/node_modules/opencode-ai/package.json; then
  npm install --prefix target/opencode --no-audit --no-fund --silent opencode-ai@1.18.33
fi

cargo test --locked "$@"
