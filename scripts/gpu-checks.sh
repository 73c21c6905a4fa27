#!/usr/bin/env bash
# The checks that need an NVIDIA GPU (docs/benchmarks.md §4): `devheal gpu-check` at three sizes
# (three runs each, for medians) and its two ways of not passing, `devheal agent --once`, the NVML
# test (crates/agent/tests/nvml_gpu.rs) and the reset path's test (crates/agent/tests/reset_gpu.rs:
# NVML's process listing, a held GPU refused, a dry run answered by the running agent, the whole
# reset path with the reset command replaced by `true`). No GPU is ever reset.
#
#   scripts/gpu-checks.sh pack DIR   build here (release devheal, the two test binaries), strip
#                                    them and put them with this script in DIR, to carry to a
#                                    GPU machine that has no Rust
#   scripts/gpu-checks.sh run [DIR]  run the checks with DIR's binaries (default: the directory
#                                    this script is in); the log and agent --once's object go to
#                                    $OUT (default ./gpu-checks-out)
#
# Exit status: 0 when every check passed.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)

pack() {
    local dir=$1
    mkdir -p "$dir"
    (cd "$root" && cargo build --release --locked -p devheal) || return 1
    local exes
    exes=$(cd "$root" && cargo test --locked -p devheal-agent --test nvml_gpu --test reset_gpu --no-run \
        --message-format=json 2>/dev/null | grep -o '"executable":"[^"]*"' | cut -d'"' -f4) || return 1
    local stage
    stage=$(mktemp -d)
    strip -o "$stage/devheal" "${CARGO_TARGET_DIR:-$root/target}/release/devheal" || return 1
    for exe in $exes; do
        local name
        name=$(basename "$exe")
        strip -o "$stage/${name%%-*}" "$exe" || return 1
    done
    tar czf "$dir/gpu.tgz" -C "$stage" devheal nvml_gpu reset_gpu || return 1
    rm -rf "$stage"
    cp "$0" "$dir/gpu-checks.sh"
    ls -la "$dir"
}

run() {
    local dir=${1:-$(cd "$(dirname "$0")" && pwd)}
    local bins
    bins=$(mktemp -d)
    tar xzf "$dir/gpu.tgz" -C "$bins" || { echo "no $dir/gpu.tgz: run '$0 pack $dir' first" >&2; return 2; }
    export DEVHEAL_BIN=$bins/devheal
    local out=${OUT:-./gpu-checks-out}
    mkdir -p "$out"
    local failed=0
    ms() { echo $(($(date +%s%N) / 1000000)); }
    expect() { # expect WANT GOT WHAT
        if [ "$1" != "$2" ]; then
            echo "FAILED: $3: exit $2, expected $1"
            failed=1
        fi
    }

    echo "== machine"
    uname -r
    nvidia-smi --query-gpu=name,pci.bus_id,uuid,driver_version,memory.total,ecc.mode.current --format=csv
    local pci
    pci=$(nvidia-smi --query-gpu=pci.bus_id --format=csv,noheader | head -1 | tr A-F a-f | sed -E 's/^0000([0-9a-f]{4}:)/\1/')
    [ -n "$pci" ] || { echo "FAILED: nvidia-smi names no GPU"; return 1; }

    echo "== gpu-check on $pci"
    local m s rc
    for m in 256 256 256 1024 1024 1024 4096 4096 4096; do
        s=$(ms)
        timeout 120 "$DEVHEAL_BIN" gpu-check --pci "$pci" --memory-mib "$m"
        rc=$?
        echo "memory-mib=$m exit=$rc wall_ms=$(($(ms) - s))"
        expect 0 "$rc" "gpu-check --memory-mib $m"
    done
    echo "== gpu-check on a bus with no GPU (the device is not there: failed, 1)"
    timeout 60 "$DEVHEAL_BIN" gpu-check --pci 0000:ff:1f.0
    expect 1 $? "gpu-check on a bus with no GPU"
    echo "== gpu-check without the CUDA library (cannot run here: 2)"
    timeout 60 "$DEVHEAL_BIN" gpu-check --pci "$pci" --cuda-library /nonexistent/libcuda.so.1
    expect 2 $? "gpu-check without the CUDA library"

    echo "== agent --once"
    s=$(ms)
    timeout 60 "$DEVHEAL_BIN" agent --once --node gpu-checks >"$out/once.json"
    rc=$?
    echo "exit=$rc wall_ms=$(($(ms) - s))"
    expect 0 "$rc" "agent --once"
    grep -E '"(id|pciAddress|health)"|"name": "nvml"' "$out/once.json"

    echo "== nvml_gpu"
    timeout 120 "$bins/nvml_gpu" --ignored --nocapture --test-threads=1
    expect 0 $? "the NVML test"
    echo "== reset_gpu"
    timeout 240 "$bins/reset_gpu" --ignored --nocapture --test-threads=1
    expect 0 $? "the reset path's test"

    echo "== after: no process left on the GPU"
    nvidia-smi --query-compute-apps=pid,name --format=csv
    rm -rf "$bins"
    if [ "$failed" = 0 ]; then echo "== gpu checks passed"; else echo "== gpu checks FAILED"; fi
    return "$failed"
}

case "${1:-}" in
pack) pack "${2:?pack needs a directory}" ;;
run) run "${2:-}" ;;
*)
    echo "usage: $0 pack DIR | run [DIR]" >&2
    exit 2
    ;;
esac
