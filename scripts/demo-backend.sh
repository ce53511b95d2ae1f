#!/bin/sh
# The backend on its own: ipvirtd on a 127.77.0.0/24 pool in a temporary
# directory, three user sessions getting three VIPs, and an administrator's
# session and a process in no session getting the machine IP, via ipvirtctl.
# Real audit sessions need root; without it POSIX sessions stand in.
set -eu
BIN=${BIN:-$(dirname "$0")/../bin}
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT INT TERM
identity=posix
if [ "$(id -u)" = 0 ] && [ -w /proc/self/loginuid ]; then identity=audit; fi
cat >"$dir/ipvirt.yaml" <<EOC
adapter: lo
source: static
static_pool: {start: 127.77.0.10, end: 127.77.0.250, subnet_mask: 255.255.255.0}
session_identity: $identity
admins: {users: [root], groups: [sudo, wheel]}
state_dir: $dir/state
socket: $dir/ipvirt.sock
http: ""
EOC
"$BIN/ipvirtd" --config "$dir/ipvirt.yaml" 2>"$dir/log" &
pid=$!
export IPVIRT_SOCKET="$dir/ipvirt.sock"
i=0; until "$BIN/ipvirtctl" status >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 200 ] || { cat "$dir/log"; exit 1; }; sleep 0.05; done

echo "ipvirtd runs on a 127.77.0.0/24 pool ($identity sessions)."
echo
for uid in 60001 60002 60003; do
	if [ $identity = audit ]; then
		printf 'user %s logs on:        ' $uid
		setsid sh -c "echo $uid > /proc/self/loginuid; exec '$BIN/ipvirtctl' whoami" | head -1
	else
		printf 'a new session logs on:  '
		setsid "$BIN/ipvirtctl" whoami | head -1
	fi
done
if [ $identity = audit ]; then
	printf 'root (an admin) logs on: '
	setsid sh -c "echo 0 > /proc/self/loginuid; exec '$BIN/ipvirtctl' whoami" | head -1
	if [ "$(cat /proc/self/sessionid)" = 4294967295 ]; then
		printf 'a service (no session):  '
		"$BIN/ipvirtctl" whoami | head -1
	fi
fi
echo
"$BIN/ipvirtctl" sessions
