#!/usr/bin/env bash
# Tessera's FUSE mount against the anchors (rclone mount, s3fs-fuse) on the same origin, interleaved,
# with the planners' kit: bench/fuse/run.sh [TOOLS...]   (default: rclone s3fs tessera)
# Env passes through to the kit: SCENARIOS, REPS, CACHE_LIMIT_MB, BENCH_DIR, KEEP_ORIGIN.
# Prints the kit's tables and the ratios of every tool to rclone.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
kit_src="${KIT:-$repo/../shared/bench/fuse}"
[ -x "$repo/.venv/bin/tessera" ] || "$repo/scripts/setup" runtime
scratch="${TMPDIR:-/tmp}/tessera-fuse-kit"
rm -rf "$scratch"; cp -r "$kit_src" "$scratch"          # the kit is read-only; run a scratch copy
install -m 0755 "$here/tessera.sh" "$scratch/adapters/tessera.sh"
# Mount the committed code (HEAD), not the working tree, so edits during a long run do not mix in.
mkdir -p "$scratch/tessera"; git -C "$repo" archive HEAD src | tar -x -C "$scratch/tessera"
export BENCH_TESSERA_BIN="$repo/.venv/bin/tessera" BENCH_TESSERA_SRC="$scratch/tessera/src"
[ $# -gt 0 ] || set -- rclone s3fs tessera
base="${BENCH_DIR:-${TMPDIR:-/tmp}/tessera-bench}/fuse"
origin_was_up=""  # the kit stops an origin it started; the direct phase below still needs it
[ -f "$base/pids/moto.pid" ] && kill -0 "$(cat "$base/pids/moto.pid")" 2>/dev/null && origin_was_up=1
KEEP_ORIGIN=1 "$scratch/run_matrix.sh" "$@"
"${PYTHON:-$base/venv/bin/python}" "$scratch/summarize.py" --vs rclone "$base/results/last-run.jsonl"
# The kit times reads through the mounts only: repeat its random reads on fresh Tessera mounts,
# interleaved with direct ranged GETs of the same bytes (the reference, measured in the same moment).
case " $* " in *" tessera "*)
  case "${SCENARIOS:-random}" in *random*)
    . "$scratch/env.sh"
    out="$BASE/results/direct-random.jsonl"; rm -f "$out"
    mnt="$BASE/mnt/tessera-direct"; cache="$BASE/cache/tessera-direct"
    for rep in $(seq 1 "${REPS:-3}"); do
        rm -rf "$cache"; mkdir -p "$cache"
        "$scratch/adapters/tessera.sh" mount "$mnt" "$cache"
        "$repo/.venv/bin/python" "$here/direct_random.py" measure --mnt "$mnt" --rep "$rep" --out "$out" \
            || echo "direct_random rep $rep failed" >&2
        "$scratch/adapters/tessera.sh" umount "$mnt"
    done
    rm -rf "$cache"
    "$repo/.venv/bin/python" "$here/direct_random.py" summary "$out" ;;
  esac ;;
esac
[ -n "$origin_was_up" ] || [ -n "${KEEP_ORIGIN:-}" ] || (cd "$scratch" && ./origin.sh stop)
