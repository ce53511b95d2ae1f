#!/bin/sh
# Installs the Debian packages ipvirt's build, tests and demo need, if any
# is missing. Runs apt-get as root, or through sudo -n; without either it
# names the missing packages and fails, so nothing is silently assumed.
set -eu

# Build: C compiler for libipvirt.so, the simulator's C client and static test
# binaries; eBPF toolchain (clang, llvm-strip, libbpf headers) for `make generate`,
# bpftool for inspecting attached programs.
# Tests and simulator: real peers (curl, netcat, python3, socat), namespaces
# (iproute2), the DHCP servers ipvirt must interoperate with, sshd (with
# PAM's pam_exec) for logins registered by PAM, etcd (etcd-server) for the
# farm pool (source: etcd), promtool (prometheus) for the alert rules' unit
# tests, and strace, which counts the system calls of libipvirt.so's hot path.
# The Debian package (make deb, deploy/deb_test.go): strip and objdump
# (binutils), and systemd-analyze (systemd) to verify the unit; dpkg-deb
# comes with dpkg.
# make bench: nftables, for the SNAT-by-uid peer (bench/peers), and valgrind,
# whose callgrind counts libipvirt.so's instructions per call (bench/hotpath).
PACKAGES="${IPVIRT_PACKAGES:-gcc libc6-dev make iproute2 util-linux procps python3 curl netcat-openbsd socat
	kea-dhcp4-server dnsmasq-base isc-dhcp-server openssh-server etcd-server clang llvm libbpf-dev bpftool prometheus
	binutils systemd strace nftables valgrind}"

missing=""
for p in $PACKAGES; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" = 0 ]; then
	run=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
	run="sudo -n"
else
	echo "ipvirt: missing Debian packages:$missing" >&2
	echo "ipvirt: install them with: sudo apt-get install -y$missing" >&2
	exit 1
fi
echo "ipvirt: installing Debian packages:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
# The DHCP servers and sshd are test peers, run by the tests themselves:
# keep their packages from starting system services on install (policy-rc.d,
# see invoke-rc.d(8)), unless the host already has a policy.
if [ ! -e /usr/sbin/policy-rc.d ]; then
	printf '#!/bin/sh\nexit 101\n' | $run tee /usr/sbin/policy-rc.d >/dev/null
	$run chmod +x /usr/sbin/policy-rc.d
	trap '$run rm -f /usr/sbin/policy-rc.d' EXIT
fi
# A fresh machine may have empty package lists; update only when needed.
$run apt-get install -y --no-install-recommends $missing >/dev/null 2>&1 || {
	$run apt-get update -qq >/dev/null
	$run apt-get install -y --no-install-recommends $missing >/dev/null
}
