#!/bin/sh
# Runs the load benchmarks. Each prints its figures beside the baseline it
# measured in the same run (see README.md, Performance, for what each
# measures). Benchmarks that need root or packages report why they were
# skipped. LOAD=1 adds the realistic load run (bench/sessionload), which
# takes about five minutes on 2 cores at full scale.
set -u
cd "$(dirname "$0")/.."
export IPVIRT_BIN="${IPVIRT_BIN:-$PWD/bin}"
status=0
for b in alloc preloadconnect hotpath bpfconnect peers dhcpstorm farm; do
	[ -d "bench/$b" ] || continue
	echo "== bench/$b"
	go run "./bench/$b" || status=1
	echo
done
if [ "${LOAD:-0}" = 1 ]; then
	echo "== bench/sessionload"
	go run ./bench/sessionload || status=1
else
	echo "== bench/sessionload: not run (about five minutes at full scale; LOAD=1 make bench runs it)"
fi
exit $status
