#!/usr/bin/env bash
# Replays hostile uses of the soma command and checks each ends cleanly: an error on one
# line (exit 1, no panic), the files it was pointed at intact, and nothing left behind.
# Every case works inside one fresh temporary directory; the device node that stands in for
# a full disk is made there with mknod (as root; skipped otherwise), and no system path is
# ever written. Cases are numbered as in docs/reliability.md.
#
#   scripts/hostile.sh [path/to/soma]     (default: target/release/soma, built if missing)
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
SOMA=${1:-$REPO/target/release/soma}
if [[ ! -x $SOMA ]]; then
    cargo build --release --quiet || exit 1
fi
SOMA=$(cd "$(dirname "$SOMA")" && pwd)/$(basename "$SOMA")

T=$(mktemp -d "${TMPDIR:-/tmp}/soma-hostile.XXXXXX")
trap 'kill -9 $(jobs -p) 2>/dev/null; rm -rf -- "$T"' EXIT
cd "$T" || exit 1
cp "$REPO/data/iris.csv" iris.csv

failures=0
pass() { echo "PASS $*"; }
fail() {
    echo "FAIL $*"
    failures=$((failures + 1))
}
soma() { "$SOMA" "$@"; }
# The stderr lines that are soma's own (Mesa's EGL complains about XDG_RUNTIME_DIR when the
# GL backend is probed without a desktop session).
own_lines() { grep -v XDG_RUNTIME_DIR "$1" | grep -c . ; }

# expect_error CASE NEEDLE COMMAND...: exit 1, one stderr line starting with "error:" and
# holding NEEDLE, no panic.
expect_error() {
    local case=$1 needle=$2
    shift 2
    "$@" >out.txt 2>err.txt
    local rc=$?
    if [[ $rc -ne 1 ]] || grep -q panicked err.txt || [[ $(own_lines err.txt) -ne 1 ]] ||
        ! grep -v XDG_RUNTIME_DIR err.txt | grep -q "^error: .*$needle"; then
        fail "$case: $* -> rc $rc: $(cat err.txt)"
        return 1
    fi
    pass "$case: $(grep -v XDG_RUNTIME_DIR err.txt)"
}
# no_dir CASE NAME: neither NAME nor NAME.partial exists.
no_dir() {
    if [[ -e $2 || -e $2.partial ]]; then
        fail "$1: left $2 or $2.partial behind"
    else
        pass "$1: nothing left behind"
    fi
}
wait_for() { # wait_for FILE: up to 60 s
    local i
    for ((i = 0; i < 600; i++)); do
        [[ -e $1 ]] && return 0
        sleep 0.1
    done
    return 1
}
sum() { cksum <"$1"; }

soma train --device cpu --data iris --epochs 30 --out model >/dev/null 2>&1 ||
    fail "setup: training the model"
CKPT_SUM=$(sum model/checkpoint.safetensors)
predict() { soma predict --device cpu --model model --input iris.csv --drop-column target "$@"; }

# 1. predict --output destroys nothing that is not an output.
if [[ $(id -u) -eq 0 ]]; then
    mknod full c 1 7
    predict --output full >/dev/null 2>err.txt
    if [[ -c full ]]; then pass "1: a character device stays one"; else fail "1: the device node was replaced"; fi
    predict >full 2>err.txt
    rc=$?
    if [[ $rc -eq 1 ]] && grep -q "^error:" err.txt && ! grep -q panicked err.txt; then
        pass "9: predict > a full device: $(grep '^error' err.txt)"
    else
        fail "9: predict > a full device: rc $rc: $(cat err.txt)"
    fi
    rm -f full
else
    echo "SKIPPED 1/9: the full-device cases need root (mknod)"
fi
mkfifo pipe
cat pipe >from-pipe.txt &
reader=$!
predict --output pipe 2>err.txt
wait $reader
if [[ -p pipe && -s from-pipe.txt ]]; then pass "1: a FIFO is written through"; else fail "1: FIFO"; fi
echo "keep" >target.txt
ln -s target.txt link.csv
predict --output link.csv 2>err.txt
if [[ -L link.csv && $(head -c 4 target.txt) != keep ]]; then
    pass "1: a symlink stays and its target is written"
else
    fail "1: symlink"
fi
ln -s missing.csv dangling.csv
expect_error 1 "symlink" predict --output dangling.csv
[[ -L dangling.csv && ! -e missing.csv ]] || fail "1: the dangling symlink changed"
expect_error 1 "model" predict --output model/checkpoint.safetensors
expect_error 1 "run directory" predict --output model/predictions.csv
[[ $(sum model/checkpoint.safetensors) == "$CKPT_SUM" && ! -e model/predictions.csv ]] ||
    fail "1: the model changed"
cp iris.csv input.csv
IN_SUM=$(sum input.csv)
expect_error 1 "input.csv" soma predict --device cpu --model model --input input.csv \
    --drop-column target --output input.csv
[[ $(sum input.csv) == "$IN_SUM" ]] || fail "1: the input changed"
predict --output - >stdout.csv 2>err.txt && [[ -s stdout.csv ]] && pass "1: - is standard output"

# 2. A run directory is locked while it trains.
"$SOMA" train --device cpu --data digits --epochs 100000 --out live >/dev/null 2>&1 &
trainer=$!
wait_for live.partial/checkpoint.safetensors || fail "2: the run did not start"
expect_error 2 "in use.*PID $trainer" soma train --device cpu --resume live.partial
expect_error 2 "in use.*PID $trainer" soma train --device cpu --epochs 1 --out live
{ kill -9 $trainer; wait $trainer; } 2>/dev/null
done_epochs=$(wc -l <live.partial/metrics.jsonl)
if soma train --device cpu --resume live.partial --epochs $((done_epochs + 1)) >/dev/null 2>err.txt &&
    [[ -d live && ! -e live.partial ]]; then
    pass "2: a killed run's lock does not block its resume"
else
    fail "2: resume after kill: $(cat err.txt)"
fi

# 3. A killed in-place extension keeps the finished model.
"$SOMA" train --device cpu --resume model --epochs 100000 >/dev/null 2>&1 &
ext=$!
wait_for model.partial/checkpoint.safetensors
sleep 0.5
{ kill -9 $ext; wait $ext; } 2>/dev/null
if [[ $(sum model/checkpoint.safetensors) == "$CKPT_SUM" && $(wc -l <model/metrics.jsonl) -eq 30 ]]; then
    pass "3: the finished model is intact after a killed extension"
else
    fail "3: the finished model changed"
fi
rm -rf model.partial

# 4. A run killed before its first checkpoint can be resumed.
mkdir early.partial
cp model/config.json early.partial/
echo torn >early.partial/.checkpoint.safetensors.tmp-1-0
if soma train --device cpu --resume early.partial >/dev/null 2>err.txt && [[ -d early ]] &&
    [[ -z $(find early -name '.*.tmp-*') ]]; then
    pass "4: a .partial with only config.json restarts from it"
else
    fail "4: $(cat err.txt)"
fi

# 5. Sizes are checked before anything is allocated.
printf 'a,b,label\n1,2,0\n3,4,1\n5,6,1000000\n1,2,0\n3,4,1\n' >stray.csv
expect_error 5 "--classes" soma train --device cpu --data csv:stray.csv --out s5
no_dir 5 s5
for layers in 64,4294967295,10 64,18446744073709551615,10 64,65000,65000,10; do
    expect_error 5 "" soma train --device cpu --layers $layers --out s5
    no_dir 5 s5
done

# 6. Writes grow with the epochs, not with their square: metrics.jsonl is appended (the file
# the run started is the file it finished with), not rewritten every epoch.
"$SOMA" train --device cpu --data iris --epochs 2000 --schedule constant --out long >/dev/null 2>&1 &
run=$!
wait_for long.partial/metrics.jsonl
first=$(stat -c %i long.partial/metrics.jsonl)
wait $run
if [[ -d long && $(wc -l <long/metrics.jsonl) -eq 2000 && $(stat -c %i long/metrics.jsonl) == "$first" ]]; then
    pass "6: 2000 epochs appended to one metrics.jsonl"
else
    fail "6: metrics.jsonl was replaced during the run, or lost lines"
fi

# 7. Options that would be ignored or wrong are refused by name, before any data is read.
while read -r needle args; do
    # shellcheck disable=SC2086
    expect_error 7 "$needle" soma $args --out o7
    no_dir 7 o7
done <<'EOF'
cosine:-1 train --device cpu --schedule cosine:-1
--deterministic train --device cpu --deterministic exact
step:1:0 train --device cpu --schedule step:1:0
--val-fraction train --device cpu --val-fraction NaN
--task train --device cpu --task regression
--stop-after train --device cpu --stop-after 0
not.an.adapter.number train --devices zero
--device.is.cpu train --device cpu --devices 0,0
--overlap train --device cpu --overlap
EOF
expect_error 7 "--lr" soma train --device cpu --resume model --lr 0.5
expect_error 7 "--layers" soma train --device cpu --resume model --layers 64,9,10
expect_error 7 "--epochs 3" soma train --device cpu --resume model --epochs 3
[[ -d model && ! -e model.partial && $(sum model/checkpoint.safetensors) == "$CKPT_SUM" ]] ||
    fail "7: a refused resume changed the model"
# A flag eval does not take is a usage error (clap's, exit 2).
soma eval --model model --lr 3 >out.txt 2>err.txt
rc=$?
if [[ $rc -eq 2 ]] && grep -q "unexpected argument '--lr'" err.txt && ! grep -q panicked err.txt; then
    pass "7: eval --lr: $(head -1 err.txt)"
else
    fail "7: eval --lr: rc $rc $(cat err.txt)"
fi
expect_error 7 "tolerance" soma check --tolerance NaN
expect_error 7 "B9" soma bench --only B9
expect_error 7 "peak" soma bench --peak-gflops=-5
expect_error 7 "no-such-dir" soma bench --only B2 --mnist no-such-dir

# 8. Divergence: an exploding loss is caught, and the message says what was kept.
expect_error 8 "diverged.*no weights were kept" soma train --device cpu --lr 1000 --out d8
no_dir 8 d8
expect_error 8 "diverged at epoch 2.*d9.partial/checkpoint.safetensors (epoch 1" soma \
    train --device cpu --optimizer sgd --lr 0.01 --schedule step:1:100000 --out d9
[[ -f d9.partial/checkpoint.safetensors ]] || fail "8: the last good checkpoint is gone"

# 9. Panics reachable from the command line.
expect_error 9 "sizes" soma bench --device cpu --sizes 0
predict 2>err.txt | head -2 >/dev/null
rc=${PIPESTATUS[0]}
if [[ $rc -eq 0 && $(own_lines err.txt) -eq 0 ]]; then pass "9: predict | head ends quietly"; else fail "9: predict | head: rc $rc $(cat err.txt)"; fi
soma eval --device cpu --model model 2>err.txt | head -1 >/dev/null
rc=${PIPESTATUS[0]}
if [[ $rc -eq 0 && $(own_lines err.txt) -eq 0 ]]; then pass "9: eval | head ends quietly"; else fail "9: eval | head: rc $rc $(cat err.txt)"; fi

# 10. Two default run directories in the same second.
mkdir ten && cd ten || exit 1
"$SOMA" train --device cpu --data iris --epochs 1 >/dev/null 2>&1 &
first=$!
soma train --device cpu --data iris --epochs 1 >/dev/null 2>&1
second=$?
wait $first
first=$?
if [[ $first -eq 0 && $second -eq 0 && $(find runs -mindepth 1 -maxdepth 1 | wc -l) -eq 2 ]]; then
    pass "10: two runs started together get two directories"
else
    fail "10: $first $second $(ls runs)"
fi
cd .. || exit 1

# 11. Ctrl-C finishes the epoch and prints the resume command.
"$SOMA" train --device cpu --data digits --epochs 100000 --out c11 >/dev/null 2>err11.txt &
run=$!
wait_for c11.partial/checkpoint.safetensors
kill -INT $run
wait $run
rc=$?
if [[ $rc -eq 130 ]] && grep -q "soma train --resume c11.partial" err11.txt; then
    pass "11: Ctrl-C: $(grep resume err11.txt)"
else
    fail "11: Ctrl-C: rc $rc $(cat err11.txt)"
fi

# No temporary files anywhere.
leftovers=$(find . -name '.*.tmp-*' -o -name '*.staging' -o -name '*.replaced')
[[ -z $leftovers ]] || fail "temporary files left: $leftovers"

echo "hostile: $failures failure(s)"
[[ $failures -eq 0 ]]
