#!/usr/bin/env bash
# Adapter for the planners' FUSE kit (../shared/bench/fuse): tessera.sh mount MNT CACHE_DIR | umount MNT.
# run.sh copies the kit to a scratch folder and installs this file there as adapters/tessera.sh.
set -euo pipefail
. "$(dirname "$0")/../setup.sh"; . "$(dirname "$0")/common.sh"
PIDF="$BASE/pids/tessera.pid"
TESSERA="${BENCH_TESSERA_BIN:?set BENCH_TESSERA_BIN to the tessera command}"
case "${1:-}" in
mount)
    MNT="$2"; CACHE="$3"; mkdir -p "$MNT" "$CACHE" "$BASE/logs"
    PYTHONPATH="${BENCH_TESSERA_SRC:-}" AWS_ENDPOINT_URL="$ORIGIN_URL" AWS_REGION=us-east-1 \
    TESSERA_CACHE__METADATA_TTL="${TESSERA_TTL:-5s}" TESSERA_FS__LISTING_TTL="${TESSERA_TTL:-5s}" \
        nohup "$TESSERA" mount "s3://$BUCKET" "$MNT" --cache-dir "$CACHE" --cache-size "${CACHE_LIMIT_MB}MB" \
        > "$BASE/logs/tessera.log" 2>&1 &
    echo $! > "$PIDF"
    wait_mounted "$MNT" "$(cat "$PIDF")"
    ;;
umount) generic_umount "$2" "$PIDF" ;;
*) echo "usage: $0 mount MNT CACHE_DIR | umount MNT" >&2; exit 2 ;;
esac
