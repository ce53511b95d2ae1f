package adapter

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// labelSuffix tags addresses ipvirt adds, so that reconciliation after a
// restart removes only its own and never an administrator's. IPv4 labels
// must start with the interface name and fit in 15 bytes.
const labelSuffix = ":iv"

// Label is the address label ipvirt gives VIPs on an interface, or "" when
// the name is too long to carry one (then only the lease store says which
// addresses are ipvirt's).
func Label(ifname string) string {
	if len(ifname)+len(labelSuffix) > 15 {
		return ""
	}
	return ifname + labelSuffix
}

// Installer adds granted VIPs to the adapter as secondary addresses, so that
// the host answers ARP for them and replies reach the sessions, and removes
// them when released. On a loopback adapter it does nothing: every 127/8
// address is already local.
type Installer struct {
	Adapter Adapter
}

// Needed reports whether VIPs must be added to the adapter at all.
func (in Installer) Needed() bool { return !in.Adapter.Loopback }

// Add installs vip with the given subnet prefix length. A lifetime > 0 makes
// the kernel drop the address by itself when it passes (a DHCP lease's
// expiry), so a VIP never outlives its lease even if the daemon is dead.
func (in Installer) Add(vip netip.Addr, bits int, lifetime time.Duration) error {
	if !in.Needed() {
		return nil
	}
	a := in.addr(vip, bits)
	if lifetime > 0 {
		secs := lifetimeSecs(lifetime)
		a.ValidLft, a.PreferedLft = secs, secs
	}
	link, err := netlink.LinkByIndex(in.Adapter.Index)
	if err != nil {
		return fmt.Errorf("adapter: add %s: %w", vip, err)
	}
	err = netlink.AddrAdd(link, a)
	if errors.Is(err, unix.EEXIST) {
		// Installed already: a renewal refreshing the lifetime. The LAN
		// knows where the address is.
		err = netlink.AddrReplace(link, a)
		if err == nil {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("adapter: add %s/%d to %s: %w", vip, bits, in.Adapter.Name, err)
	}
	// The address is usable now; a failed announcement only leaves stale
	// neighbour caches to expire by themselves, so it does not undo it.
	_ = in.announce(vip)
	return nil
}

// maxLifetime is the longest finite address lifetime: the kernel's field
// is 32 bits of seconds and 0xffffffff means forever (and netlink's is an
// int, 31 bits on 32-bit machines).
const maxLifetime = min(0xfffffffe, math.MaxInt)

// lifetimeSecs is a lease's remaining time as an address lifetime, 1 to
// maxLifetime seconds. The lifetime comes from a lease's expiry (a DHCP
// server's lease time, or the lease file): netlink truncates the value to
// 32 bits, so 2^32+5 seconds used to become 5, and the kernel dropped a
// live VIP after five seconds.
func lifetimeSecs(d time.Duration) int {
	secs := int64(d / time.Second)
	return int(min(max(secs, 1), maxLifetime))
}

// Remove uninstalls vip. An address already gone is not an error.
func (in Installer) Remove(vip netip.Addr, bits int) error {
	if !in.Needed() {
		return nil
	}
	link, err := netlink.LinkByIndex(in.Adapter.Index)
	if err != nil {
		return fmt.Errorf("adapter: remove %s: %w", vip, err)
	}
	if err := netlink.AddrDel(link, in.addr(vip, bits)); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
		return fmt.Errorf("adapter: remove %s from %s: %w", vip, in.Adapter.Name, err)
	}
	return nil
}

func (in Installer) addr(vip netip.Addr, bits int) *netlink.Addr {
	return &netlink.Addr{
		IPNet: &net.IPNet{IP: vip.AsSlice(), Mask: net.CIDRMask(bits, 32)},
		Label: Label(in.Adapter.Name),
		// A VIP in the adapter's subnet becomes a secondary address and adds
		// no route; one outside it must not add a prefix route either.
		Flags: unix.IFA_F_NOPREFIXROUTE,
	}
}

// Installed lists the VIPs ipvirt installed earlier (by label).
func (in Installer) Installed() ([]netip.Prefix, error) {
	if !in.Needed() || Label(in.Adapter.Name) == "" {
		return nil, nil
	}
	link, err := netlink.LinkByIndex(in.Adapter.Index)
	if err != nil {
		return nil, fmt.Errorf("adapter: list %s: %w", in.Adapter.Name, err)
	}
	list, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("adapter: list %s: %w", in.Adapter.Name, err)
	}
	var out []netip.Prefix
	for _, a := range list {
		if a.Label != Label(in.Adapter.Name) {
			continue
		}
		ip, _ := netip.AddrFromSlice(a.IP.To4())
		bits, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip, bits))
	}
	return out, nil
}

// VIP is an address to install: its subnet prefix length and lifetime (0:
// forever).
type VIP struct {
	Addr     netip.Addr
	Bits     int
	Lifetime time.Duration
}

// Reconcile makes the installed VIPs equal want: removes tagged addresses
// with no lease (a crash between a release and its removal) and adds leases
// whose address is missing (a crash between a grant and its install). It
// returns what it changed.
func (in Installer) Reconcile(want []VIP) (added, removed []netip.Addr, err error) {
	if !in.Needed() {
		return nil, nil, nil
	}
	have, err := in.Installed()
	if err != nil {
		return nil, nil, err
	}
	wanted := map[netip.Addr]bool{}
	for _, v := range want {
		wanted[v.Addr] = true
	}
	present := map[netip.Addr]bool{}
	var errs []error
	for _, p := range have {
		present[p.Addr()] = true
		if !wanted[p.Addr()] {
			if err := in.Remove(p.Addr(), p.Bits()); err != nil {
				errs = append(errs, err)
			} else {
				removed = append(removed, p.Addr())
			}
		}
	}
	for _, v := range want {
		if !present[v.Addr] {
			if err := in.Add(v.Addr, v.Bits, v.Lifetime); err != nil {
				errs = append(errs, err)
			} else {
				added = append(added, v.Addr)
			}
		}
	}
	return added, removed, errors.Join(errs...)
}
