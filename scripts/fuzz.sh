#!/bin/sh
# Runs every fuzz target for a while each (default 30s): the parsers of
# untrusted input (wire protocol, config, scenario files, DHCP state).
# New crashers land in the package's testdata/fuzz and fail `make test`
# until fixed: commit them with the fix.
set -eu
t=${1:-30s}
cd "$(dirname "$0")/.."
for pkg in $(go list ./...); do
	for f in $(go test -list 'Fuzz.*' "$pkg" 2>/dev/null | grep '^Fuzz' || true); do
		echo "fuzz $pkg $f ($t)"
		go test -run '^$' -fuzz "^$f\$" -fuzztime "$t" "$pkg"
	done
done
