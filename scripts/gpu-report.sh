#!/usr/bin/env bash
# A report from a machine with a real GPU in one run (docs/gpu.md).
#
#   scripts/gpu-report.sh prepare    here, with Rust: builds soma and the test binaries that
#                                    need a GPU and need nothing else (no cargo, no source
#                                    paths), strips and compresses them into .gpu/
#   scripts/gpu-report.sh run        there, in the tree's root, with .gpu/ (and .gl/, the
#                                    Vulkan loader's packages, when the machine lacks it):
#                                    writes $RESULTS_DIR/gpu-report.json (default: .)
#
# The report holds: the adapters (`soma devices --json`); each carried test binary's exit
# status, time and summary line; `soma bench --json` (B1 to B3, and B2-64/B3-64); one epoch
# of B2's network on MNIST when ../shared/data/mnist came along (else B2's synthetic set is
# what bench used); and strict mode's digits hash on the GPU against the CPU's, or the
# self-test's refusal.
set -uo pipefail
cd "$(dirname "$0")/.."

# Test binaries that take an adapter and nothing from the build machine's paths.
CARRIED=(soma kernels training embed lecture autotune)

prepare() {
    set -e
    cargo build --release
    rm -rf .gpu && mkdir -p .gpu
    cp target/release/soma .gpu/soma
    # Each test binary's path, from cargo's own listing.
    cargo test --release --no-run --message-format=json 2>/dev/null |
        python3 -c '
import json, sys
want = set(sys.argv[1:])
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        name = m["target"]["name"]
        kind = m["target"]["kind"][0]
        if name in want and (kind == "test" or (kind == "lib" and name == "soma")):
            print(("lib-" if kind == "lib" else "") + name, m["executable"])
' "${CARRIED[@]}" | while read -r name exe; do
        cp "$exe" ".gpu/test-$name"
    done
    strip .gpu/*
    xz -T2 -6 -f .gpu/*
    # The Vulkan loader, for a machine whose image has the driver but not libvulkan1.
    if ! compgen -G ".gl/*.deb" >/dev/null; then
        local lists
        lists=$(mktemp -d)
        mkdir -p .gl "$lists/partial"
        local o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 "-oDir::State::Lists=$lists")
        if ! { apt-get "${o[@]}" update >/dev/null && (cd .gl && apt-get "${o[@]}" download libvulkan1 >/dev/null); }; then
            echo "warning: could not download libvulkan1 into .gl/: the GPU machine must have the Vulkan loader" >&2
        fi
    fi
    du -ch .gpu .gl 2>/dev/null | tail -1 || true
    echo "carried: $(ls .gpu | tr '\n' ' ')"
    echo "on the GPU machine: scripts/gpu-report.sh run   (RESULTS_DIR=\$OUT to bring the report back)"
}

# json_string TEXT: TEXT as a JSON string.
json_string() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\t'/\\t}
    s=${s//$'\r'/}
    s=${s//$'\n'/\\n}
    printf '"%s"' "$s"
}

# json_or_null FILE: FILE's contents when it is non-empty, else null.
json_or_null() {
    if [[ -s $1 ]]; then cat "$1"; else printf null; fi
}

run() {
    local out=${RESULTS_DIR:-.}
    mkdir -p "$out"
    local work
    work=$(mktemp -d)
    for f in .gl/*.deb; do
        [[ -e $f ]] && dpkg -x "$f" / && ldconfig
    done
    if [[ -z ${VK_DRIVER_FILES:-} && -e /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]]; then
        export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    fi
    export SOMA_REQUIRE_GPU=1
    for f in .gpu/*.xz; do
        [[ -e $f ]] && xz -d -f "$f"
    done
    chmod +x .gpu/* 2>/dev/null
    local soma=.gpu/soma
    "$soma" devices --json >"$work/devices.json" 2>"$work/devices.err"

    # The carried tests, one by one, each with a time limit.
    local tests="" first=1
    for t in .gpu/test-*; do
        [[ -x $t ]] || continue
        local name=${t#.gpu/test-} start rc summary
        start=$(date +%s%N)
        timeout 600 "$t" >"$work/$name.log" 2>&1
        rc=$?
        summary=$(grep -E "^test result:" "$work/$name.log" | tail -1)
        local failed
        failed=$(grep -E "^test .* FAILED$" "$work/$name.log" | head -20)
        [[ $first == 1 ]] || tests+=","
        first=0
        tests+="{\"binary\":$(json_string "$name"),\"rc\":$rc,\"ms\":$((($(date +%s%N) - start) / 1000000)),\"result\":$(json_string "$summary"),\"failed\":$(json_string "$failed")}"
    done

    "$soma" bench --json >"$work/bench.json" 2>"$work/bench.err"

    # One epoch of B2's network on MNIST, where the data came along.
    local mnist=null
    if [[ -d ../shared/data/mnist ]]; then
        "$soma" train --data mnist:../shared/data/mnist --layers 784,256,256,10 --epochs 1 \
            --device gpu --json --out "$work/mnist" >"$work/mnist.json" 2>"$work/mnist.err"
        mnist=$(json_or_null "$work/mnist.json")
    fi

    # Strict mode: the digits hash on the GPU and on the CPU, or the refusal.
    "$soma" train --deterministic strict --device gpu --json --out "$work/strict-gpu" \
        >"$work/strict-gpu.json" 2>"$work/strict-gpu.err"
    local strict_rc=$?
    "$soma" train --deterministic strict --device cpu --json --out "$work/strict-cpu" \
        >"$work/strict-cpu.json" 2>"$work/strict-cpu.err"

    {
        printf '{"devices":%s,' "$(json_or_null "$work/devices.json")"
        printf '"tests":[%s],' "$tests"
        printf '"bench":%s,' "$(json_or_null "$work/bench.json")"
        printf '"bench_stderr":%s,' "$(json_string "$(grep -v XDG_RUNTIME_DIR "$work/bench.err" | tail -20)")"
        printf '"mnist_epoch":%s,' "$mnist"
        printf '"strict":{"rc":%s,"gpu":%s,"cpu":%s,"stderr":%s}}\n' "$strict_rc" \
            "$(json_or_null "$work/strict-gpu.json")" "$(json_or_null "$work/strict-cpu.json")" \
            "$(json_string "$(grep -v XDG_RUNTIME_DIR "$work/strict-gpu.err" | tail -5)")"
    } >"$out/gpu-report.json"
    # The failing tests' logs, for reading back.
    for t in "$work"/*.log; do
        grep -q "FAILED\|panicked" "$t" && cp "$t" "$out/"
    done
    echo "wrote $out/gpu-report.json"
}

case ${1:-} in
prepare) prepare ;;
run) run ;;
*)
    echo "usage: scripts/gpu-report.sh prepare|run (see docs/gpu.md)" >&2
    exit 2
    ;;
esac
