#!/usr/bin/env bash
# Quick check of the load bench: 2 s per target, exit 1 unless all answered with zero errors.
#   bash benches/load/smoke.sh [RELAY_EDGE_BINARY]
exec env SMOKE=1 bash "$(dirname "$0")/run.sh" "$@"
