#!/bin/sh
# Runs every fuzz target (`func FuzzXxx(f *testing.F)` in a _test.go file)
# for FUZZTIME each, one after the other, and prints one summary line per
# target; exits non-zero if any failed. With RAPID_CHECKS set it then runs
# the allocator's rapid state machine (internal/alloc/model_test.go) for
# that many sequences.
#
#   scripts/fuzz.sh [FUZZTIME]     default 30s (make fuzz); make test uses 2s,
#                                  make fuzz-long 10m and RAPID_CHECKS=10000
#   FUZZ=regexp                    only targets whose package or name match
#   FUZZMINTIME=1000x              -fuzzminimizetime: the fuzzer minimizes
#                                  every new interesting input too, and a
#                                  time limit there (60s by default) stalls
#                                  targets with large inputs (the lease file)
#
# A target that fails writes its input to the package's testdata/fuzz: fix
# the code and commit that file with the fix, as a regression test (every
# `go test` runs it).
set -eu
cd "$(dirname "$0")/.."
t=${1:-${FUZZTIME:-30s}}
min=${FUZZMINTIME:-1000x}
only=${FUZZ:-.}
cgo=$(go env CGO_ENABLED)
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
summary=$logs/summary
failed=0

# Targets, found by reading the test files: `go test -list` would build and
# run every package's tests first.
targets=$(grep -rl --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*(f \*testing.F)' . |
	grep -v '/testdata/' | sort | while read -r file; do
	for name in $(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(f \*testing\.F).*/\1/p' "$file"); do
		tag=-
		grep -q '^//go:build cgo' "$file" && tag=cgo
		echo "./$(dirname "${file#./}") $name $tag"
	done
done)

start=$(date +%s)
n=0
echo "$targets" | {
	while read -r pkg name tag; do
		[ -n "$pkg" ] || continue
		echo "$pkg $name" | grep -Eq -- "$only" || continue
		n=$((n + 1))
		if [ "$tag" = cgo ] && [ "$cgo" != 1 ]; then
			printf 'fuzz: skip %-28s %-36s (needs cgo)\n' "$name" "$pkg" | tee -a "$summary"
			continue
		fi
		log=$logs/$n.log
		echo "fuzz: $pkg $name ($t)"
		t0=$(date +%s)
		fuzz() { go test -run '^$' -fuzz "^$name\$" -fuzztime "$t" -fuzzminimizetime "$min" "$pkg" >"$log" 2>&1; }
		if fuzz; then
			verdict=ok
		elif ! grep -q 'Failing input written' "$log" && grep -q 'context deadline exceeded' "$log" && fuzz; then
			# Go's fuzzing engine sometimes reports its own -fuzztime
			# deadline as a failure, with no input found (a worker still
			# in a call when time runs out, short runs especially). An
			# input that fails is always written out: only such runs
			# are tried again, once.
			verdict=ok
		else
			verdict=FAIL
			failed=$((failed + 1))
			cat "$log"
		fi
		stats=$(sed -n 's/.*execs: \([0-9]*\) .*new interesting: \([0-9]*\) (total: \([0-9]*\)).*/execs=\1 new=\2 corpus=\3/p' "$log" | tail -n 1)
		printf 'fuzz: %-4s %-28s %-36s %4ss %s\n' "$verdict" "$name" "$pkg" "$(($(date +%s) - t0))" "${stats:-no fuzzing}" |
			tee -a "$summary"
	done

	if [ -n "${RAPID_CHECKS:-}" ]; then
		log=$logs/rapid.log
		echo "rapid: ./internal/alloc TestManagerStateMachine (-rapid.checks=$RAPID_CHECKS)"
		t0=$(date +%s)
		if go test -count=1 -timeout 0 -run '^TestManagerStateMachine$' ./internal/alloc -args -rapid.checks="$RAPID_CHECKS" >"$log" 2>&1; then
			verdict=ok
		else
			verdict=FAIL
			failed=$((failed + 1))
			cat "$log"
		fi
		printf 'rapid: %-4s %-27s %-36s %4ss checks=%s\n' "$verdict" TestManagerStateMachine ./internal/alloc \
			"$(($(date +%s) - t0))" "$RAPID_CHECKS" | tee -a "$summary"
	fi

	echo
	echo "fuzz summary ($t per target, $(($(date +%s) - start))s in all):"
	cat "$summary" 2>/dev/null || echo "fuzz: no target matches $only"
	if [ "$failed" -gt 0 ]; then
		echo "fuzz: $failed failed" >&2
		exit 1
	fi
}
