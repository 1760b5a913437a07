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
"$scratch/run_matrix.sh" "$@"
base="${BENCH_DIR:-${TMPDIR:-/tmp}/tessera-bench}/fuse"
"${PYTHON:-$base/venv/bin/python}" "$scratch/summarize.py" --vs rclone "$base/results/last-run.jsonl"
# The kit times reads through the mounts only: add the direct ranged GETs of the same offsets.
case "${SCENARIOS:-random}" in *random*)
    . "$scratch/env.sh"; "$repo/.venv/bin/python" "$here/direct_random.py" "$base/results/last-run.jsonl" ;;
esac
