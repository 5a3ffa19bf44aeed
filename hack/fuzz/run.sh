#!/usr/bin/env bash
# run.sh GO DIR TARGET FUZZTIME: fuzzes one target for FUZZTIME.
#
# Go before 1.27 can end a fuzz run that found nothing with a bare
# "context deadline exceeded" failure at the -fuzztime boundary: a race in
# its fuzzing coordinator (go.dev/issue/75804). Such a failure, with no new
# failing input written under DIR/testdata/fuzz/TARGET, is run once more;
# any other failure, or a second one, fails.
set -uo pipefail
go=$1 dir=$2 target=$3 fuzztime=$4
corpus=$dir/testdata/fuzz/$target
count() { find "$corpus" -type f 2>/dev/null | wc -l; }
for try in 1 2; do
	before=$(count)
	out=$(mktemp)
	"$go" test -run '^$' -fuzz "^$target\$" -fuzztime "$fuzztime" "$dir" 2>&1 | tee "$out"
	status=${PIPESTATUS[0]}
	deadline=$(tail -n 8 "$out" | grep -c '^    context deadline exceeded$')
	rm -f "$out"
	if [ "$status" -eq 0 ]; then
		exit 0
	fi
	if [ "$try" -eq 1 ] && [ "$deadline" -gt 0 ] && [ "$(count)" -eq "$before" ]; then
		echo "fuzz $dir $target: 'context deadline exceeded' with no failing input written (go.dev/issue/75804); running it once more"
		continue
	fi
	exit "$status"
done
