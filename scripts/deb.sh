#!/bin/bash
# Builds the Debian package from binaries already built:
#
#   scripts/deb.sh [BINDIR [OUTDIR]]
#   scripts/deb.sh --version      the version it would give the package
#
# BINDIR holds ipvirtd, ipvirtctl and libipvirt.so (default bin/, what
# `make build` writes); ipvirt_<version>_<arch>.deb is written to OUTDIR
# (default BINDIR) and its path printed on stdout. Needs dpkg-deb (dpkg),
# strip and objdump (binutils), and git for the version; no dpkg-dev, no
# fakeroot (--root-owner-group makes every file root's).
#
#   DEB_VERSION      the package version; default from git: the tag vX.Y.Z
#                    as X.Y.Z, a commit after it as X.Y.Z+git<date>.<hash>,
#                    no tag as 0.0~git<date>.<hash> (<date>: the commit's,
#                    UTC, to the second, so later commits sort later);
#                    +dirty when tracked files differ from the commit
#   DEB_MAINTAINER   the Maintainer field
#   SOURCE_DATE_EPOCH  file and archive times (default: the commit's)
#   DEB_COMPRESSION  dpkg-deb -Z: xz (default), gzip or none (faster, for
#                    tests)
#
# What goes where is README.md's "Debian package"; deploy/debian holds the
# maintainer scripts and the copyright file, deploy/ the rest. The unit is
# deploy/ipvirtd.service with /usr/local/ made /usr/.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)

die() {
	echo "deb.sh: $*" >&2
	exit 1
}

git_() { git -C "$src" "$@"; }

version() {
	if [ -n "${DEB_VERSION:-}" ]; then
		echo "$DEB_VERSION"
		return
	fi
	if ! git_ rev-parse --verify -q HEAD >/dev/null 2>&1; then
		echo "0.0~dev" # not a git checkout
		return
	fi
	local date hash desc tag n v
	date=$(TZ=UTC git_ log -1 --format=%cd --date=format-local:%Y%m%d%H%M%S)
	hash=$(git_ rev-parse --short=7 HEAD)
	v="0.0~git$date.$hash"
	if desc=$(git_ describe --tags --long --match 'v[0-9]*' 2>/dev/null); then
		# vX.Y.Z-N-gHASH; a tag's own hyphens (v1.0-rc1) become ~, which
		# sorts before the release.
		n=${desc%-g*}
		tag=${n%-*}
		n=${n##*-}
		tag=${tag#v}
		tag=${tag//-/\~}
		if [ "$n" = 0 ]; then
			v=$tag
		else
			v="$tag+git$date.$hash"
		fi
	fi
	git_ diff --quiet HEAD -- 2>/dev/null || v="$v+dirty"
	echo "$v"
}

if [ "${1:-}" = --version ]; then
	version
	exit 0
fi

bindir=$(cd "${1:-$src/bin}" && pwd)
outdir=${2:-$bindir}
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)

for tool in dpkg-deb dpkg strip objdump; do
	command -v "$tool" >/dev/null || die "$tool not found (Debian packages dpkg, binutils)"
done
for f in ipvirtd ipvirtctl libipvirt.so; do
	[ -f "$bindir/$f" ] || die "$bindir/$f missing: run make build"
done

ver=$(version)
dpkg --validate-version "$ver" 2>/dev/null || die "version $ver is not a valid Debian version (set DEB_VERSION)"
arch=$(dpkg --print-architecture)
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH=$(git_ log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root
mkdir -p "$root/DEBIAN"

# Executables 0755; everything else, the preload library too (Debian
# policy 8.1), 0644.
install -D -m 0755 "$bindir/ipvirtd" "$root/usr/sbin/ipvirtd"
install -D -m 0755 "$bindir/ipvirtctl" "$root/usr/bin/ipvirtctl"
install -D -m 0644 "$bindir/libipvirt.so" "$root/usr/lib/ipvirt/libipvirt.so"
strip --strip-unneeded "$root/usr/sbin/ipvirtd" "$root/usr/bin/ipvirtctl" "$root/usr/lib/ipvirt/libipvirt.so"
install -d -m 0755 "$root/usr/lib/systemd/system"
sed 's#/usr/local/#/usr/#g' "$src/deploy/ipvirtd.service" >"$root/usr/lib/systemd/system/ipvirtd.service"
chmod 0644 "$root/usr/lib/systemd/system/ipvirtd.service"
install -D -m 0644 "$src/deploy/ipvirt.yaml" "$root/etc/ipvirt/ipvirt.yaml"
install -D -m 0644 "$src/deploy/pam-configs/ipvirt" "$root/usr/share/pam-configs/ipvirt"
install -D -m 0644 "$src/README.md" "$root/usr/share/doc/ipvirt/README.md"
install -D -m 0644 "$src/deploy/prometheus/ipvirt-rules.yml" "$root/usr/share/ipvirt/prometheus/ipvirt-rules.yml"
install -D -m 0644 "$src/deploy/grafana/ipvirt-dashboard.json" "$root/usr/share/ipvirt/grafana/ipvirt-dashboard.json"
{
	cat "$src/deploy/debian/copyright"
	# The modules linked in, as the binaries' build information names them.
	if command -v go >/dev/null; then
		echo
		echo "Files: usr/sbin/ipvirtd usr/bin/ipvirtctl"
		echo "Copyright: the authors of each Go module below"
		echo "License: various"
		echo " Each module's own, in the LICENSE file of the version linked:"
		go version -m "$root/usr/sbin/ipvirtd" "$root/usr/bin/ipvirtctl" |
			awk '$1 == "dep" { print "  " $2 " " $3 }' | sort -u
	fi
} >"$root/usr/share/doc/ipvirt/copyright"
chmod 0644 "$root/usr/share/doc/ipvirt/copyright"

for s in postinst prerm postrm; do
	install -m 0755 "$src/deploy/debian/$s" "$root/DEBIAN/$s"
done
echo /etc/ipvirt/ipvirt.yaml >"$root/DEBIAN/conffiles"
chmod 0644 "$root/DEBIAN/conffiles"

# The oldest C library the three ELF files accept: the highest GLIBC_
# symbol version any of them needs.
glibc=$(objdump -T "$root/usr/sbin/ipvirtd" "$root/usr/bin/ipvirtctl" "$root/usr/lib/ipvirt/libipvirt.so" |
	grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
[ -n "$glibc" ] || die "no GLIBC_ symbol version found in the binaries"
depends="libc6 (>= $glibc)"

# md5sums: every file but the conffiles, which dpkg tracks itself.
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort |
	grep -vxF -f <(sed 's#^/##' DEBIAN/conffiles) | xargs -d '\n' md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums"

size=$(du -s -k --apparent-size --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: ipvirt
Version: $ver
Architecture: $arch
Maintainer: ${DEB_MAINTAINER:-ipvirt maintainers <maintainers@ipvirt.invalid>}
Installed-Size: $size
Depends: $depends
Suggests: libpam-runtime
Section: net
Priority: optional
Homepage: https://github.com/ipvirt/ipvirt
Description: per-session and per-program virtual IPs on Linux
 On a shared host (a remote-desktop or terminal server, a jump host, a
 multi-user build box) every session leaves through the same source IP.
 ipvirt gives each login session, or each chosen program in a session, its
 own virtual IP, from a DHCP server or a static pool, without changing the
 programs: the daemon ipvirtd hands the addresses out, and an LD_PRELOAD
 library or cgroup eBPF programs make programs use them.
 .
 This package installs ipvirtd with its systemd unit (neither enabled nor
 started: edit /etc/ipvirt/ipvirt.yaml first), the client ipvirtctl, the
 preload library libipvirt.so (nothing preloads it until configured), a
 pam-auth-update profile (off until enabled), Prometheus alert rules and a
 Grafana dashboard.
EOF
chmod 0644 "$root/DEBIAN/control"

find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
deb="$outdir/ipvirt_${ver}_${arch}.deb"
dpkg-deb --root-owner-group -Z"${DEB_COMPRESSION:-xz}" --build "$root" "$deb" >/dev/null
echo "$deb"
