#!/usr/bin/env bash
# Runs Manta's cargo-fuzz targets for a fixed time each (nightly toolchain,
# cargo-fuzz: `cargo install cargo-fuzz --locked`). From the repository root:
#
#   fuzz/run.sh SECONDS [TARGET...]     # every target if none is named
#
# Builds once (`cargo +nightly fuzz build`, AddressSanitizer, release with
# debug assertions), then runs each target's binary on its corpus
# (fuzz/corpus/TARGET, grown as it finds inputs) seeded by fuzz/seeds/TARGET,
# FUZZ_JOBS targets at a time (default 1). Logs go to fuzz/logs/TARGET.log,
# crashes to fuzz/artifacts/TARGET/. A different target directory:
# CARGO_TARGET_DIR=... (default fuzz/target). Known findings (KNOWN in
# src/fuzzing.rs) are let through unless MANTA_FUZZ_STRICT=1.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:?usage: fuzz/run.sh SECONDS [TARGET...]}"
shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(ls fuzz_targets | sed 's/\.rs$//')
fi
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
cargo +nightly fuzz build --target-dir "$target_dir"
bin="$target_dir/$(rustc -vV | sed -n 's/^host: //p')/release"
mkdir -p logs
run_one() {
  t="$1"
  mkdir -p "corpus/$t" "artifacts/$t"
  # Frames go up to a 64 KiB chunk and its header.
  max_len=4096
  case "$t" in frame) max_len=66000 ;; large_message | gossip) max_len=16384 ;; esac
  "$bin/$t" "corpus/$t" "seeds/$t" -max_total_time="$secs" -max_len="$max_len" \
    -timeout=20 -rss_limit_mb=4096 -malloc_limit_mb=512 -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" >"logs/$t.log" 2>&1 || echo "$t: FAILED (fuzz/logs/$t.log)"
  echo "$t: $(grep -E '^stat::number_of_executed_units' "logs/$t.log" | awk '{print $2}') inputs, $(grep -cE '^#[0-9]+.*(NEW|REDUCE)' "logs/$t.log" || true) corpus additions, $(ls "corpus/$t" | wc -l) in corpus"
}
export -f run_one
export secs bin
printf '%s\n' "${targets[@]}" | xargs -P "${FUZZ_JOBS:-1}" -I{} bash -c 'run_one {}'
