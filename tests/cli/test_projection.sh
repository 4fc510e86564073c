#!/usr/bin/env bash
# scripts/decode_projection.py reads what bench-decode-gpu prints (the GPU run's logs
# kept in docs/measurements): this guards that contract on CPU-only CI. The numbers it
# must reproduce are recomputed here from the rows of the same files.
set -u
. "$(dirname "$0")/lib.inc"
P=scripts/decode_projection.py
M=docs/measurements/2026-11-28-h100
cat "$M/bench-decode-1xh100.txt" "$M/allreduce-4xh100.txt" >"$T/decode.txt"

expect_exit "projection on the H100 logs" 0 python3 "$P" "$T/decode.txt" "$M/decode-tp8-1xh100.txt"
expect_out "uses the measured TP8 rank" '^  measured: one TP8/EP8 rank alone on NVIDIA H100'
expect_out "uses the 4-GPU all-reduce (blocking TP communicator)" 'all-reduces added: 2 per layer at 13\.1 us'
expect_out "two and three busiest-GPU experts" 'busiest GPU reads 3 experts, measured layers'
# the 2-expert estimate from the rows: median dense / moe step + 2 all-reduces
want=$(python3 - "$M/decode-tp8-1xh100.txt" <<'PYEOF'
import re, sys
t = open(sys.argv[1]).read()
d = sorted(float(x) for x in re.findall(r"^tp8e2 +\d+ +dense +1 +([\d.]+)", t, re.M))
m = sorted(float(x) for x in re.findall(r"^tp8e2 +\d+ +moe +1 +([\d.]+)", t, re.M))
print(f"dense {d[len(d) // 2] + 26.2:.0f} us, MoE {m[len(m) // 2] + 26.2:.0f} us")
PYEOF
)
expect_out "layer times are the rows' medians plus two all-reduces ($want)" "reads 2 experts, measured layers: $want"
expect_out "TP1 efficiency parsed" 'at batch 1: dense [0-9]+%, MoE [0-9]+% of roofline'

# medians FILE BATCH ADD: "dense D us, MoE M us", the median step_us of the FILE's layer
# rows at BATCH tokens plus ADD (two all-reduces)
medians() {
  python3 - "$@" <<'PYEOF'
import re, sys
t, b, add = open(sys.argv[1]).read(), sys.argv[2], float(sys.argv[3])
med = lambda k: sorted(float(x) for x in re.findall(rf"^\d+ +{k} +{b} +([\d.]+)", t, re.M))
d, m = med("dense"), med("moe")
print(f"dense {d[len(d) // 2] + add:.0f} us, MoE {m[len(m) // 2] + add:.0f} us")
PYEOF
}

# batched decode from "tp8b" rows (the TP8 rank at several sequences a step): per batch,
# the rows' median layer times plus two all-reduces, tokens/s of all sequences
B=docs/measurements/2026-11-29-session9/run4-absorb-mma-ab-tp8-1xh200.txt
{ cat "$M/decode-tp8-1xh100.txt"; sed 's/^/tp8b /' "$B"; } >"$T/tp8b.txt"
expect_exit "projection with batched TP8 rows" 0 python3 "$P" "$T/decode.txt" "$T/tp8b.txt"
want=$(medians "$B" 64 26.2)
expect_out "batch 64 layer times are the rows' medians plus two all-reduces ($want)" "batch 64, measured TP8 rank \(synthetic routing\): $want"
expect_out "every batch in the rows" 'batch 8, measured TP8 rank.* tok/s \([0-9.]+ tok/s per sequence\)'

# rows with graph_us (bench-decode since session 10): the "in CUDA graphs" lines take
# the graph column's medians plus two all-reduces; older rows without it print none
G=docs/measurements/2026-11-29-session10/run2-bench-decode-1xh200.txt
grep -v '^tp8' "$G" >"$T/g1.txt"
grep '^tp8' "$G" >"$T/g8.txt"
expect_exit "projection with graph_us rows" 0 python3 "$P" "$T/g1.txt" "$T/g8.txt"
want=$(python3 - "$T/g8.txt" <<'PYEOF'
import re, sys
t = open(sys.argv[1]).read()
med = lambda v: sorted(v)[len(v) // 2]
rows = lambda k: [float(l.split()[11]) for l in t.splitlines() if re.match(rf"^tp8e2 +\d+ +{k} +1 ", l)]
print(f"dense {med(rows('dense')) + 50:.0f} us, MoE {med(rows('moe')) + 50:.0f} us")
PYEOF
)
expect_out "graph lines are the graph_us medians plus two all-reduces ($want)" "reads 2 experts, measured layers in CUDA graphs: $want"
expect_exit "projection on rows without graph_us" 0 python3 "$P" "$T/decode.txt" "$M/decode-tp8-1xh100.txt"
if grep -q 'in CUDA graphs' "$T/out"; then fail "rows without graph_us gave graph lines"; else
  pass "no graph lines from rows without graph_us"; fi

# speculative decoding from "tp8s" rows (the TP8 rank at 2 tokens a step): the step is
# the rows' medians plus two all-reduces a layer, 61 layers, the head, the MTP module
S=docs/measurements/2026-11-29-session12/run3-bench-b12-tp8e4-1xh200.txt
{ cat "$T/g8.txt"; sed -n '/^layer/,$p' "$S" | sed 's/^/tp8s /'; } >"$T/spec.txt"
expect_exit "projection with two-token TP8 rows" 0 python3 "$P" "$T/g1.txt" "$T/spec.txt"
want=$(medians "$S" 2 50)
expect_out "speculative step from the two-token rows ($want)" "speculative \(MTP drafts\), measured TP8 rank at 2 tokens a step: $want"
expect_out "acceptance rates 70/85/90%" 'draft acceptance 85%: [0-9]+ tok/s \([0-9.]+x the same rank without drafts\)'
expect_exit "no two-token rows: no speculative lines" 0 python3 "$P" "$T/g1.txt" "$T/g8.txt"
if grep -q 'speculative' "$T/out"; then fail "speculative lines without tp8s rows"; else pass "no speculative lines without tp8s rows"; fi

# without the TP8 file: the TP1-scaled estimate only; all-reduce assumed when absent
expect_exit "projection from TP1 rows only" 0 python3 "$P" "$M/bench-decode-1xh100.txt"
expect_out "no all-reduce rows: latency marked assumed" 'all-reduce latency 25\.0 us \(assumed; not measured\)'
printf 'device=x\nnothing here\n' >"$T/empty.txt"
expect_exit "no layer rows: exit 1" 1 python3 "$P" "$T/empty.txt"
expect_out "says what is missing" 'no batch-1 layer rows found'
finish
