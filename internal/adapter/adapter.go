// Package adapter finds the network adapter VIPs live on, checks the
// configuration against it (the static pool must lie in its subnet, per-
// session mode needs a single-adapter host) and installs granted VIPs on it.
package adapter

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
)

// Adapter is the network interface that carries the VIPs.
type Adapter struct {
	Name     string
	Index    int
	MAC      net.HardwareAddr
	Loopback bool
	// Addr is the adapter's own (primary) IPv4 address with its prefix: the
	// machine IP (MIP) and the subnet VIPs must lie in.
	Addr netip.Prefix
}

// MIP is the machine IP: the adapter's own address.
func (a Adapter) MIP() netip.Addr { return a.Addr.Addr() }

// Resolve finds the adapter a config names: by interface name, by MAC
// address (the AdapterAddress registry value of Windows RD IP
// Virtualization), or by subnet (the adapter holding an IPv4 address in it,
// as the Windows group policy does).
func Resolve(spec string) (Adapter, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return Adapter{}, fmt.Errorf("adapter: list links: %w", err)
	}
	if mac, err := net.ParseMAC(spec); err == nil {
		for _, l := range links {
			if slices.Equal(l.Attrs().HardwareAddr, mac) && l.Attrs().MasterIndex == 0 {
				return fromLink(l, spec)
			}
		}
		return Adapter{}, fmt.Errorf("adapter: no interface has MAC address %s (have: %s)", mac, describe(links))
	}
	if subnet, err := netip.ParsePrefix(spec); err == nil {
		subnet = subnet.Masked()
		for _, l := range links {
			for _, a := range v4Addrs(l) {
				if subnet.Contains(a.Addr()) {
					return fromLink(l, spec)
				}
			}
		}
		return Adapter{}, fmt.Errorf("adapter: no interface has an IPv4 address in %s (have: %s)", subnet, describe(links))
	}
	for _, l := range links {
		if l.Attrs().Name == spec {
			return fromLink(l, spec)
		}
	}
	return Adapter{}, fmt.Errorf("adapter: no interface named %q (have: %s); name it by interface name, MAC address or subnet", spec, describe(links))
}

func fromLink(l netlink.Link, spec string) (Adapter, error) {
	attrs := l.Attrs()
	a := Adapter{Name: attrs.Name, Index: attrs.Index, MAC: attrs.HardwareAddr,
		Loopback: attrs.Flags&net.FlagLoopback != 0}
	addrs := v4Addrs(l)
	if len(addrs) == 0 {
		return Adapter{}, fmt.Errorf("adapter: %s (%q) has no IPv4 address", attrs.Name, spec)
	}
	a.Addr = addrs[0]
	if subnet, err := netip.ParsePrefix(spec); err == nil {
		// Named by subnet: the address in that subnet is the one meant.
		for _, p := range addrs {
			if subnet.Masked().Contains(p.Addr()) {
				a.Addr = p
				break
			}
		}
	}
	return a, nil
}

// v4Addrs lists a link's IPv4 addresses, primaries first as the kernel
// orders them, skipping VIPs ipvirt itself installed.
func v4Addrs(l netlink.Link) []netip.Prefix {
	list, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return nil
	}
	var out []netip.Prefix
	for _, a := range list {
		if a.Label == Label(l.Attrs().Name) {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok {
			continue
		}
		bits, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip, bits))
	}
	return out
}

func describe(links []netlink.Link) string {
	var parts []string
	for _, l := range links {
		p := l.Attrs().Name
		if mac := l.Attrs().HardwareAddr; len(mac) > 0 {
			p += " " + mac.String()
		}
		for _, a := range v4Addrs(l) {
			p += " " + a.String()
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, ", ")
}

// ValidatePool checks the static pool against the adapter: inside its
// subnet, and not the adapter's own address. A loopback adapter's subnet is
// 127.0.0.0/8, where every address is local: pools there need no installing.
func ValidatePool(start, end netip.Addr, a Adapter) error {
	sub := a.Addr.Masked()
	if !sub.Contains(start) || !sub.Contains(end) {
		return fmt.Errorf("static_pool: %s-%s is not inside %s's subnet %s", start, end, a.Name, sub)
	}
	if mip := a.MIP(); !mip.Less(start) && !end.Less(mip) {
		return fmt.Errorf("static_pool: %s-%s contains %s, the address of adapter %s itself", start, end, mip, a.Name)
	}
	return nil
}

// Candidate is an adapter that counts for the single-adapter rule, or one
// that does not and why.
type Candidate struct {
	Name     string
	Eligible bool
	Why      string
}

// Candidates classifies every interface of the host (the current network
// namespace) for the per-session single-adapter rule:
//
//   - loopback never counts, even when it is the configured adapter (a
//     127/8 pool is the development and demo topology: the host's one real
//     NIC is still its only adapter);
//   - otherwise the configured adapter always counts;
//   - interfaces that are down or hold no global IPv4 address do not;
//   - a veth counts only when its peer is in another network namespace (it
//     is this host's uplink, as in a container); a veth whose peer is local
//     is plumbing for containers or VMs;
//   - a bridge counts only if it has a port that counts or is physical
//     (a VM host's br0 over eth0), not an internal one (docker0, virbr0);
//   - other virtual kinds (dummy, ifb, tun/tap, vxlan, wireguard, macvlan,
//     ipvlan, tunnels, bonds' and bridges' ports, ...) do not;
//   - anything else (a physical or paravirtual NIC) counts.
func Candidates(configured Adapter) ([]Candidate, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("adapter: list links: %w", err)
	}
	var out []Candidate
	for _, l := range links {
		c := Candidate{Name: l.Attrs().Name}
		c.Eligible, c.Why = classify(l, configured, links)
		out = append(out, c)
	}
	return out, nil
}

func classify(l netlink.Link, configured Adapter, links []netlink.Link) (bool, string) {
	attrs := l.Attrs()
	switch {
	case attrs.Flags&net.FlagLoopback != 0:
		return false, "loopback"
	case attrs.Index == configured.Index:
		return true, "the configured adapter"
	case attrs.MasterIndex != 0:
		return false, "port of a bridge or bond"
	case attrs.Flags&net.FlagUp == 0:
		return false, "down"
	case !hasGlobalV4(l):
		return false, "no global IPv4 address"
	}
	switch kind := l.Type(); kind {
	case "device":
		return true, "network adapter"
	case "veth":
		if attrs.NetNsID >= 0 {
			return true, "veth whose peer is in another network namespace (an uplink)"
		}
		return false, "veth with a local peer"
	case "bridge":
		for _, port := range links {
			if port.Attrs().MasterIndex != attrs.Index {
				continue
			}
			// Only a physical port makes it an uplink: docker0's ports are
			// veths whose peers sit in containers.
			if isPhysical(port) {
				return true, "bridge over physical port " + port.Attrs().Name
			}
		}
		return false, "bridge with no physical port"
	default:
		return false, "virtual device (" + kind + ")"
	}
}

func hasGlobalV4(l netlink.Link) bool {
	list, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return false
	}
	for _, a := range list {
		if a.Scope == int(netlink.SCOPE_UNIVERSE) && a.Label != Label(l.Attrs().Name) {
			return true
		}
	}
	return false
}

// isPhysical reports whether a link is backed by a device (PCI, virtio,
// USB): physical and paravirtual NICs have /sys/class/net/NAME/device.
func isPhysical(l netlink.Link) bool {
	if l.Type() != "device" {
		return false
	}
	_, err := os.Stat("/sys/class/net/" + l.Attrs().Name + "/device")
	return err == nil
}

// ErrMultiAdapter is returned (wrapped) when per-session mode is configured
// on a host with more than one eligible adapter.
var ErrMultiAdapter = errors.New("per-session mode needs a host with a single network adapter")

// CheckPerSession refuses per-session mode when the host has more than one
// eligible adapter, naming them. Windows does not support per-session IP
// virtualization with several adapters: which adapter a session's traffic
// leaves by would decide whether it is virtualized. Per-program mode works.
func CheckPerSession(configured Adapter) error {
	cands, err := Candidates(configured)
	if err != nil {
		return err
	}
	var eligible []string
	for _, c := range cands {
		if c.Eligible {
			eligible = append(eligible, c.Name)
		}
	}
	if len(eligible) > 1 {
		return fmt.Errorf("%w: this host has %d: %s; use mode: per-program, or remove the extra adapters",
			ErrMultiAdapter, len(eligible), strings.Join(eligible, ", "))
	}
	return nil
}
