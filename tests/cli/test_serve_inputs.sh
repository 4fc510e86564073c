#!/usr/bin/env bash
# dsr1-serve generate --backend cpu on wrong input: token ids outside the vocabulary,
# context overflow, bad sampling values, malformed DSR1_* switches, a manifest given as a
# directory, and
# --logits-out that is atomic (no half-written file, nothing renamed over an old file
# on failure, an unwritable path refused before generating, tokens printed only once
# the files are complete).
set -eu
. "$(dirname "$0")/lib.inc"
set +e
S=$BIN/dsr1-serve
"$BIN/dsr1-synth" --preset tiny --out "$T/ck" --quiet || { fail "synth"; finish; exit; }
"$BIN/dsr1-shard" run "$T/ck" --out "$T/s" --tp 2 --ep 2 --quiet || { fail "shard"; finish; exit; }
M=$T/s/manifest.json
V=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["vocab_size"])' "$T/ck/config.json")
C=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["max_position_embeddings"])' "$T/ck/config.json")
gen() { "$S" generate --manifest "$M" "$@"; }
no_temp() { ! ls -A "$T" | grep -q '^\.l\.npy\.'; }

expect_exit "token id = vocab ($V): exit 2" 2 gen --prompt-ids 1,$V
expect_err "  names id, position and range" "token id $V at position 1 is outside the vocabulary \[0, $V\)"
expect_exit "negative id: exit 2" 2 gen --prompt-ids 1,-1
expect_exit "empty list: exit 2" 2 gen --prompt-ids ""
expect_exit "trailing comma: exit 2" 2 gen --prompt-ids 1,
expect_exit "id above int32: exit 2" 2 gen --prompt-ids 4294967296
# --prompt-ids @FILE: a long prompt does not fit one argument (128 KiB)
printf '3, 4\n5\n' >"$T/ids.txt"
expect_exit "--prompt-ids @FILE (commas, spaces, lines)" 0 gen --prompt-ids @"$T/ids.txt" --max-new-tokens 3
cp "$T/out" "$T/ids.out"
expect_exit "  same prompt as a list" 0 gen --prompt-ids 3,4,5 --max-new-tokens 3
cmp -s "$T/out" "$T/ids.out" && pass "  same tokens from the file and the list" || fail "  file $(cat "$T/ids.out") vs list $(cat "$T/out")"
printf '3 4 x 5' >"$T/ids.bad"
expect_exit "--prompt-ids @FILE with a bad entry: exit 2" 2 gen --prompt-ids @"$T/ids.bad"
expect_err "  names the file and the entry" 'ids.bad: entry 2 is not a token id'
printf '3,,4' >"$T/ids.bad"
expect_exit "--prompt-ids @FILE with an empty entry: exit 2" 2 gen --prompt-ids @"$T/ids.bad"
expect_exit "--prompt-ids @missing: exit 2" 2 gen --prompt-ids @"$T/none.txt"
expect_err "  names the file" 'none.txt: No such file'
expect_exit "--prompt-ids @ with no name: exit 2" 2 gen --prompt-ids @
expect_err "  says so" 'no file name after @'
expect_exit "--prompt-ids @DIRECTORY: exit 2" 2 gen --prompt-ids @"$T"
expect_err "  says why" 'Is a directory'
expect_exit "--max-new-tokens 0: exit 2" 2 gen --prompt-ids 1 --max-new-tokens 0
expect_exit "--max-new-tokens past the flag range: exit 2" 2 gen --prompt-ids 1 --max-new-tokens 1048577
expect_exit "prompt + new tokens past max_position_embeddings ($C): exit 2" 2 gen --prompt-ids 1,2 --max-new-tokens $((C - 1))
expect_err "  names the context" "2 prompt tokens \+ --max-new-tokens $((C - 1)) = $((C + 1)) positions.*max_position_embeddings $C"
for bad in "--top-p 0" "--top-p 2" "--top-p nan" "--temperature -1" "--temperature inf" "--top-k -1" "--seed -1" \
           "--prefill-chunk -1" "--prefill-chunk 2k" "--prefill-chunk 1048577"; do
  # shellcheck disable=SC2086
  expect_exit "$bad: exit 2" 2 gen --prompt-ids 1 $bad
done
expect_err "  --prefill-chunk names its range" 'prefill-chunk: tokens in \[0, 1048576\] \(0 = the whole prompt\), got "1048577"'
# the DSR1_* switches (runtime/envcheck.h): checked before loading anything
expect_exit "DSR1_UPLOAD_THREADS=abc: exit 2" 2 env DSR1_UPLOAD_THREADS=abc "$S" generate --manifest "$M" --prompt-ids 1
expect_err "  names the switch and its range" 'environment DSR1_UPLOAD_THREADS="abc" is not an integer in \[1, 1024\]; unset it'
expect_exit "DSR1_UPLOAD=mmap: exit 2" 2 env DSR1_UPLOAD=mmap "$S" generate --manifest "$M" --prompt-ids 1
expect_err "  lists the values" 'is not one of copy\|pread\|register'
expect_exit "a misspelt switch only warns" 0 env DSR1_UPLOAD_THRADS=4 "$S" generate --manifest "$M" --prompt-ids 1 --max-new-tokens 1
expect_err "  the warning names it" 'warning: environment DSR1_UPLOAD_THRADS is not a switch of any dsr1 program'
expect_exit "DSR1_MLA_FLASH=3: exit 2" 2 env DSR1_MLA_FLASH=3 "$S" generate --manifest "$M" --prompt-ids 1
expect_exit "valid switches pass" 0 env DSR1_MOE_KS=2,4 DSR1_PDL=0 "$S" generate --manifest "$M" --prompt-ids 1 --max-new-tokens 1
expect_exit "--manifest DIR works as DIR/manifest.json" 0 "$S" generate --manifest "$T/s" --prompt-ids 1,2 --max-new-tokens 2
expect_exit "--manifest of a missing file: exit 3" 3 "$S" generate --manifest "$T/s/none.json" --prompt-ids 1

# --logits-out
expect_exit "--logits-out in a missing directory: exit 3 before generating" 3 gen --prompt-ids 1 --logits-out "$T/no/l.npy"
[ -s "$T/out" ] && fail "  tokens printed" || pass "  no tokens on stdout"
expect_err "  names the path" "no/l.npy: cannot create"
expect_exit "--logits-out a directory: exit 2" 2 gen --prompt-ids 1 --logits-out "$T"
expect_exit "--logits-out = --mtp-logits-out: exit 2" 2 gen --prompt-ids 1 --logits-out "$T/x.npy" --mtp-logits-out "$T/x.npy"
echo old > "$T/l.npy"
expect_exit "generation fails (id out of range): exit 2" 2 gen --prompt-ids $V --logits-out "$T/l.npy"
[ "$(cat "$T/l.npy")" = old ] && no_temp && pass "  old file untouched, no temp file left" || fail "  old file replaced or temp left"
expect_exit "good run replaces it" 0 gen --prompt-ids 3,4,5 --max-new-tokens 4 --logits-out "$T/l.npy"
"$PY" -c 'import numpy as np,sys; a=np.load(sys.argv[1]); assert a.shape==(6,int(sys.argv[2])) and a.dtype==np.float32 and np.isfinite(a).all(), a.shape' \
  "$T/l.npy" "$V" && no_temp && pass "  complete [T+N-1, vocab] float32, no temp" || fail "  bad npy"
cp "$T/l.npy" "$T/l.good"
# a file size limit hits while writing: exit 3, no tokens, the previous file intact
(ulimit -f 8; "$S" generate --manifest "$M" --prompt-ids 3,4,5 --max-new-tokens 4 --logits-out "$T/l.npy" >"$T/out" 2>"$T/err")
rc=$?
[ $rc -eq 3 ] && ! [ -s "$T/out" ] && cmp -s "$T/l.npy" "$T/l.good" && no_temp \
  && pass "write fails (ulimit -f): exit 3, no tokens, previous file intact, no temp" \
  || { fail "write failure: rc $rc, out $(head -c 50 "$T/out")"; cat "$T/err"; }
expect_err "  says write failed" "l.npy: write failed"
finish
