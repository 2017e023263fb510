# shellcheck shell=bash
# Shared helpers for scripts/setup, scripts/gen and scripts/lint. Source it, don't run it:
#   source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib/common.sh"
# It defines ROOT (the repo root, found from this file's location, so scripts work from any
# cwd and without .git), the tool paths below, and logging helpers. It does not cd.

set -euo pipefail

ROOT="$(cd -- "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/../.." && pwd -P)"
SCRIPTS="$ROOT/scripts"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
NODE_MODULES="$ROOT/node_modules"
# buf: call the platform binary directly (the node_modules/.bin/buf JS shim costs ~0.35 s of Node
# start-up per call); fall back to the shim on other platforms.
BUF_NATIVE="$NODE_MODULES/@bufbuild/buf-linux-x64/bin/buf"
BUF_SHIM="$NODE_MODULES/.bin/buf"
if [[ -x "$BUF_NATIVE" ]]; then BUF="$BUF_NATIVE"; else BUF="$BUF_SHIM"; fi
TSC="$NODE_MODULES/.bin/tsc"
# Breaking-change baseline image, written by `scripts/gen --baseline`.
BASELINE_IMAGE="protos/baseline/genai.binpb"
# The contract with source info (comments), served by server reflection; written by scripts/gen.
DESCRIPTOR_SET="generated/python/genai/descriptor_set.binpb"
# Directories that buf.gen.yaml writes (relative to ROOT, or to `buf generate -o DIR`).
GENERATED_DIRS=(generated/python generated/ts generated/go)

export PYTHONDONTWRITEBYTECODE=1
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1
export npm_config_update_notifier=false
export npm_config_fund=false
export npm_config_audit=false

_SCRIPT_NAME="$(basename -- "$0")"
if [[ -t 2 && -z "${NO_COLOR:-}" ]]; then
  _C_BOLD=$'\033[1m' _C_RED=$'\033[31m' _C_YEL=$'\033[33m' _C_GRN=$'\033[32m' _C_OFF=$'\033[0m'
else
  _C_BOLD="" _C_RED="" _C_YEL="" _C_GRN="" _C_OFF=""
fi

# All log output goes to stderr, so stdout stays usable for real output.
log() { printf '%s[%s]%s %s\n' "$_C_BOLD" "$_SCRIPT_NAME" "$_C_OFF" "$*" >&2; }
ok() { printf '%s[%s] ok:%s %s\n' "$_C_GRN" "$_SCRIPT_NAME" "$_C_OFF" "$*" >&2; }
warn() { printf '%s[%s] warning:%s %s\n' "$_C_YEL" "$_SCRIPT_NAME" "$_C_OFF" "$*" >&2; }
err() { printf '%s[%s] error:%s %s\n' "$_C_RED" "$_SCRIPT_NAME" "$_C_OFF" "$*" >&2; }
die() {
  err "$*"
  exit 1
}

# run CMD ARGS...: log the command (paths shown relative to ROOT), then run it.
run() {
  local shown="$*"
  log "+ ${shown//"$ROOT"\//}"
  "$@"
}

# now_s: seconds since the epoch with sub-second precision (for timing messages).
now_s() { date +%s.%N; }
# elapsed START: seconds since START, one decimal.
elapsed() { awk -v s="$1" -v e="$(now_s)" 'BEGIN { printf "%.1f", e - s }'; }

# file_hash FILE...: one sha256 over the given files' contents.
file_hash() { cat -- "$@" | sha256sum | cut -d' ' -f1; }

# have CMD: is CMD on PATH?
have() { command -v "$1" >/dev/null 2>&1; }

# require_buf: fail clearly when node_modules has no buf.
require_buf() {
  if [[ ! -x "$BUF" ]]; then
    die "buf not found in node_modules (run scripts/setup)"
  fi
}

# has_protos: does protos/ contain any .proto file?
has_protos() {
  [[ -d "$ROOT/protos" ]] && [[ -n "$(find "$ROOT/protos" -name '*.proto' -print -quit)" ]]
}
