#!/bin/sh
# Runs the load benchmarks. Each prints its figures beside the baseline it
# measured in the same run (see bench/README.md for what each measures).
# Benchmarks that need root or packages report why they were skipped.
set -u
cd "$(dirname "$0")/.."
export IPVIRT_BIN="${IPVIRT_BIN:-$PWD/bin}"
status=0
for b in alloc preloadconnect bpfconnect dhcpstorm; do
	[ -d "bench/$b" ] || continue
	echo "== bench/$b"
	go run "./bench/$b" || status=1
	echo
done
exit $status
