#!/usr/bin/env bash
# dsr1-shard and the directories it is given: --out never loses a file it cannot prove is
# its own (name pattern AND dsr1 content), never equals the checkpoint, refuses a
# concurrent run; wrong CKPT arguments and repeated options get specific messages.
set -u
. "$(dirname "$0")/lib.inc"
D=$BIN/dsr1-shard
expect_exit "synth tiny" 0 "$BIN/dsr1-synth" --preset tiny --out "$T/tiny" --quiet
listing() { (cd "$1" && ls -A | sort && cat -- * 2>/dev/null | xxh128sum); }

# --- foreign files under names the run would write: refused, nothing changed ---------
for f in manifest.json XXH128SUMS model-pp00-tp01-of-pp01-tp02.safetensors; do
  rm -rf "$T/o"; mkdir -p "$T/o"; echo "precious $f" >"$T/o/$f"; echo notes >"$T/o/notes.txt"
  before=$(listing "$T/o")
  expect_exit "foreign $f: refused" 2 "$D" run "$T/tiny" --out "$T/o" --tp 2 --quiet
  expect_err "foreign $f: named" "o/$f is not a dsr1-shard file and this run would overwrite it"
  [ "$(listing "$T/o")" = "$before" ] && pass "foreign $f: directory unchanged" ||
    fail "foreign $f: directory changed: $(ls -A "$T/o")"
done
# a checksum list of other files is foreign too, even in a directory of real shards
rm -rf "$T/o"; mkdir -p "$T/o"; printf '%032d  data.bin\n' 0 >"$T/o/XXH128SUMS"
expect_exit "XXH128SUMS of other files: refused" 2 "$D" run "$T/tiny" --out "$T/o" --tp 2 --quiet

# --- unrelated files, and lookalikes of other plans' names, are left alone -----------
rm -rf "$T/o"; mkdir -p "$T/o"
echo notes >"$T/o/notes.txt"
echo user >"$T/o/model-pp00-tp00-of-pp01-tp04.safetensors"          # other plan's name, not dsr1
echo user >"$T/o/model-pp00-tp00-of-pp01-tp04.safetensors.tmp.keep" # not a pid suffix
echo user >"$T/o/model-pp+1-tp00-of-pp01-tp02.safetensors"          # not digits
cp "$T/tiny/config.json" "$T/o/config.json"
expect_exit "run next to unrelated files" 0 "$D" run "$T/tiny" --out "$T/o" --tp 2 --quiet
for f in notes.txt model-pp00-tp00-of-pp01-tp04.safetensors model-pp00-tp00-of-pp01-tp04.safetensors.tmp.keep \
         model-pp+1-tp00-of-pp01-tp02.safetensors config.json; do
  [ -f "$T/o/$f" ] && pass "kept unrelated $f" || fail "deleted unrelated $f"
done
(cd "$T/o" && xxh128sum -c --quiet XXH128SUMS) && pass "output checks" || fail "XXH128SUMS check"
# a rerun with another plan removes the previous (provably dsr1) shards, manifest and sums
expect_exit "rerun tp1 over tp2" 0 "$D" run "$T/tiny" --out "$T/o" --tp 1 --quiet
[ ! -e "$T/o/model-pp00-tp00-of-pp01-tp02.safetensors" ] && pass "previous plan's dsr1 shard removed" ||
  fail "previous plan's shard left"
[ -f "$T/o/notes.txt" ] && [ -f "$T/o/model-pp00-tp00-of-pp01-tp04.safetensors" ] && pass "unrelated files survive a rerun" ||
  fail "rerun deleted unrelated files"
# a dead run's temp file (pid suffix, no such process) is removed
echo partial >"$T/o/model-pp00-tp00-of-pp01-tp01.safetensors.tmp.2147483646"
expect_exit "rerun with a stale temp" 0 "$D" run "$T/tiny" --out "$T/o" --tp 1 --quiet
[ ! -e "$T/o/model-pp00-tp00-of-pp01-tp01.safetensors.tmp.2147483646" ] && pass "stale temp removed" ||
  fail "stale temp left"

# --- --out equal to the checkpoint: refused, source intact; inside it: fine ------------
cp -r "$T/tiny" "$T/ck"
before=$(listing "$T/ck")
expect_exit "--out = CKPT refused" 2 "$D" run "$T/ck" --out "$T/ck" --tp 2 --quiet
expect_err "says why" "is the checkpoint directory"
expect_exit "--out = CKPT via ./ refused" 2 "$D" run "$T/ck" --out "$T/ck/sub/.." --tp 2 --quiet
rmdir "$T/ck/sub" 2>/dev/null
[ "$(listing "$T/ck")" = "$before" ] && pass "checkpoint unchanged" || fail "checkpoint changed: $(ls -A "$T/ck")"
expect_exit "--out inside CKPT" 0 "$D" run "$T/ck" --out "$T/ck/shards" --tp 2 --quiet
expect_exit "checkpoint still valid" 0 "$BIN/dsr1-inspect" "$T/ck" --quiet

# --- a concurrent run into the same directory is refused ------------------------------
DSR1_SHARD_TEST_STALL_BATCHES=2 "$D" run "$T/tiny" --out "$T/c" --tp 2 --batch 64KiB --quiet 2>"$T/stall.err" &
pid=$!
for _ in $(seq 1 400); do grep -q "test stall" "$T/stall.err" && break; sleep 0.05; done
expect_exit "concurrent run refused" 2 "$D" run "$T/tiny" --out "$T/c" --tp 2 --quiet
expect_err "names the other run" "another dsr1-shard \(pid $pid\) is writing into"
ls "$T/c" | grep -q '\.tmp\.' && pass "the first run's temp files survive" || fail "temp files deleted"
kill -9 $pid; wait $pid 2>/dev/null
expect_exit "after it died: resume works" 0 "$D" run "$T/tiny" --out "$T/c" --tp 2 --quiet --resume
ls "$T/c" | grep -q '\.tmp\.' && fail "dead run's temp files left" || pass "dead run's temp files removed"

# --- wrong CKPT arguments ------------------------------------------------------------
expect_exit "CKPT is a file" 2 "$D" plan "$T/tiny/config.json"
expect_err "says not a directory" "config.json is not a directory"
mkdir -p "$T/empty"
expect_exit "CKPT empty dir" 2 "$D" plan "$T/empty"
expect_err "says not a checkpoint" "is not a checkpoint directory: no config.json"
expect_exit "CKPT is a shard dir" 2 "$D" plan "$T/c"
expect_err "recognizes a shard dir" "looks like a dsr1-shard output directory"
expect_exit "unwritable --out parent" 3 "$D" run "$T/tiny" --out "$T/tiny/config.json/x" --tp 2 --quiet
expect_err "names the directory once" "cannot create output directory .*: Not a directory$"
grep -q "rerun with --resume" "$T/err" && fail "mkdir failure suggests --resume" || pass "no --resume hint for mkdir"

cp "$T/tiny/config.json" "$T/empty/"
expect_exit "CKPT without index" 2 "$D" plan "$T/empty"
expect_err "says which file is missing" "no model.safetensors.index.json"

# --- repeated options ----------------------------------------------------------------
expect_exit "--tp twice" 2 "$D" plan "$T/tiny" --tp 2 --tp 4
expect_err "names both values" "tp given twice \(2 and 4\)"
expect_exit "--out twice" 2 "$D" run "$T/tiny" --out "$T/x1" --out "$T/x2" --tp 2
[ ! -e "$T/x1" ] && [ ! -e "$T/x2" ] && pass "nothing created" || fail "created an output dir"
expect_exit "repeated flag is harmless" 0 "$D" plan "$T/tiny" --tp 2 --mtp --mtp
finish
