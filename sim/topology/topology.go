// Package topology builds the simulator's network out of network
// namespaces: a LAN (a bridge in a namespace of its own) and hosts, each a
// named namespace whose adapters are veth pairs plugged into a LAN. The
// session host can have a second adapter on a second LAN (the multi-adapter
// case). Everything is made through netlink; hosts are named namespaces so
// that `ip netns exec NAME` runs programs in them.
//
// Deleting a namespace deletes its veth ends, and the peers with them, so
// Close only has to delete namespaces; CleanupStale does the same for runs
// that were killed before they could.
package topology

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/ipvirt/ipvirt/internal/pool"
)

// Prefix starts every namespace this package creates; the creating pid
// follows, so CleanupStale can tell a dead run's leftovers from a live one's.
const Prefix = "ipvsim"

// Spec is the network to build.
type Spec struct {
	// LANs are the subnets of the bridges, in order: the first is the main
	// LAN every host is on; a second one only carries the session host's
	// second adapter. Default: 10.77.0.0/24.
	LANs []netip.Prefix
	// Hosts are the hosts to make, in order; a host's adapter i is on LAN i.
	Hosts []HostSpec
}

// HostSpec is one host: its name and, per adapter, its host number in the
// LAN's subnet (2 gives 10.77.0.2).
type HostSpec struct {
	Name     string
	Adapters []int
}

// Net is a built network.
type Net struct {
	id    string
	lan   *Host // holds the bridges
	hosts map[string]*Host
	order []*Host
	lans  []netip.Prefix
}

// Host is one namespace.
type Host struct {
	Name     string // the host's name in the Spec
	NS       string // the named namespace (`ip netns exec NS ...`)
	Adapters []Adapter
	ns       netns.NsHandle
	nl       *netlink.Handle
}

// Adapter is one of a host's interfaces: eth0, eth1...
type Adapter struct {
	Name   string
	Index  int
	MAC    net.HardwareAddr
	Prefix netip.Prefix // its address and the LAN's length
}

var seq int

// Build makes the network. On error everything made so far is removed.
func Build(spec Spec) (n *Net, err error) {
	if len(spec.LANs) == 0 {
		spec.LANs = []netip.Prefix{netip.MustParsePrefix("10.77.0.0/24")}
	}
	seq++
	n = &Net{id: fmt.Sprintf("%s%d-%d", Prefix, os.Getpid(), seq), hosts: map[string]*Host{}, lans: spec.LANs}
	defer func() {
		if err != nil {
			n.Close()
			n = nil
		}
	}()
	if n.lan, err = newHost("lan", n.id+"-lan"); err != nil {
		return n, err
	}
	var bridges []netlink.Link
	for i := range spec.LANs {
		name := fmt.Sprintf("br%d", i)
		if err := n.lan.nl.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
			return n, fmt.Errorf("topology: bridge %s: %w", name, err)
		}
		br, err := n.lan.nl.LinkByName(name)
		if err == nil {
			err = n.lan.nl.LinkSetUp(br)
		}
		if err != nil {
			return n, fmt.Errorf("topology: bridge %s: %w", name, err)
		}
		bridges = append(bridges, br)
	}
	for hi, hs := range spec.Hosts {
		if _, dup := n.hosts[hs.Name]; dup || hs.Name == "lan" {
			return n, fmt.Errorf("topology: host %q twice (or reserved)", hs.Name)
		}
		if len(hs.Adapters) > len(spec.LANs) {
			return n, fmt.Errorf("topology: host %s: %d adapters but %d LANs", hs.Name, len(hs.Adapters), len(spec.LANs))
		}
		h, err := newHost(hs.Name, n.id+"-"+hs.Name)
		if err != nil {
			return n, err
		}
		n.hosts[hs.Name] = h
		n.order = append(n.order, h)
		for ai, num := range hs.Adapters {
			a, err := n.plug(h, bridges[ai], spec.LANs[ai], fmt.Sprintf("eth%d", ai), fmt.Sprintf("h%dp%d", hi, ai), num)
			if err != nil {
				return n, err
			}
			h.Adapters = append(h.Adapters, a)
		}
	}
	return n, nil
}

// plug adds a veth pair: port on the bridge, name (with address number num
// of lan) in h.
func (n *Net) plug(h *Host, br netlink.Link, lan netip.Prefix, name, port string, num int) (Adapter, error) {
	addr, err := nthAddr(lan, num)
	if err != nil {
		return Adapter{}, fmt.Errorf("topology: %s %s: %w", h.Name, name, err)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port}, PeerName: name, PeerNamespace: netlink.NsFd(int(h.ns))}
	if err := n.lan.nl.LinkAdd(veth); err != nil {
		return Adapter{}, fmt.Errorf("topology: veth %s-%s: %w", port, name, err)
	}
	p, err := n.lan.nl.LinkByName(port)
	if err == nil {
		err = n.lan.nl.LinkSetMaster(p, br)
	}
	if err == nil {
		err = n.lan.nl.LinkSetUp(p)
	}
	if err != nil {
		return Adapter{}, fmt.Errorf("topology: port %s: %w", port, err)
	}
	l, err := h.nl.LinkByName(name)
	if err != nil {
		return Adapter{}, fmt.Errorf("topology: %s %s: %w", h.Name, name, err)
	}
	pfx := netip.PrefixFrom(addr, lan.Bits())
	ipn := &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(lan.Bits(), 32)}
	if err := h.nl.AddrAdd(l, &netlink.Addr{IPNet: ipn}); err != nil {
		return Adapter{}, fmt.Errorf("topology: %s %s address %s: %w", h.Name, name, pfx, err)
	}
	if err := h.nl.LinkSetUp(l); err != nil {
		return Adapter{}, fmt.Errorf("topology: %s %s up: %w", h.Name, name, err)
	}
	if l, err = h.nl.LinkByName(name); err != nil { // refresh index and MAC
		return Adapter{}, err
	}
	return Adapter{Name: name, Index: l.Attrs().Index, MAC: l.Attrs().HardwareAddr, Prefix: pfx}, nil
}

func nthAddr(lan netip.Prefix, num int) (netip.Addr, error) {
	if !lan.Addr().Is4() || num <= 0 || num >= 1<<(32-lan.Bits())-1 {
		return netip.Addr{}, fmt.Errorf("host number %d does not fit %s", num, lan)
	}
	return pool.FromV4(pool.V4(lan.Masked().Addr()) + uint32(num)), nil
}

// Host returns a host by name; "lan" is the namespace of the bridges.
func (n *Net) Host(name string) (*Host, bool) {
	if name == "lan" {
		return n.lan, true
	}
	h, ok := n.hosts[name]
	return h, ok
}

// LANs are the subnets of the bridges.
func (n *Net) LANs() []netip.Prefix { return slices.Clone(n.lans) }

// Do runs fn on an OS thread inside host's namespace. Sockets fn opens stay
// in that namespace for good, whichever goroutine uses them later.
func (n *Net) Do(host string, fn func() error) error {
	h, ok := n.Host(host)
	if !ok {
		return fmt.Errorf("topology: no host %q", host)
	}
	return h.Do(fn)
}

// Do runs fn with the calling OS thread in h's namespace.
func (h *Host) Do(fn func() error) error {
	if err := In(h.ns, fn); err != nil {
		return fmt.Errorf("topology: in %s: %w", h.NS, err)
	}
	return nil
}

// In runs fn on an OS thread inside ns. Sockets fn opens stay in that
// namespace for good, whichever goroutine uses them later. The thread is
// locked for the duration; if it cannot be put back it dies with its
// goroutine rather than carry the namespace into other work.
func In(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// NewNamed creates the named namespace name (/run/netns/name, usable with
// `ip netns exec`) without moving the caller into it.
func NewNamed(name string) (netns.NsHandle, error) {
	type res struct {
		h   netns.NsHandle
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- res{-1, err}
			return
		}
		defer orig.Close()
		h, err := netns.NewNamed(name) // also moves this thread into it
		if err == nil && netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		ch <- res{h, err}
	}()
	r := <-ch
	if r.err != nil {
		return -1, fmt.Errorf("netns %s: %w", name, r.err)
	}
	return r.h, nil
}

// Close deletes every namespace (and with them every link). Processes still
// running in one keep it alive, unnamed, until they exit: stop them first.
func (n *Net) Close() error {
	var errs []error
	for _, h := range slices.Backward(n.order) {
		errs = append(errs, h.destroy())
	}
	if n.lan != nil {
		errs = append(errs, n.lan.destroy())
	}
	n.order, n.hosts, n.lan = nil, map[string]*Host{}, nil
	return errors.Join(errs...)
}

func newHost(name, nsName string) (*Host, error) {
	h := &Host{Name: name, NS: nsName}
	ns, err := NewNamed(nsName)
	if err != nil {
		return nil, fmt.Errorf("topology: %w", err)
	}
	h.ns = ns
	if h.nl, err = netlink.NewHandleAt(h.ns); err != nil {
		h.destroy()
		return nil, fmt.Errorf("topology: netlink in %s: %w", nsName, err)
	}
	lo, err := h.nl.LinkByName("lo")
	if err == nil {
		err = h.nl.LinkSetUp(lo)
	}
	if err != nil {
		h.destroy()
		return nil, fmt.Errorf("topology: %s lo: %w", nsName, err)
	}
	return h, nil
}

func (h *Host) destroy() error {
	if h.nl != nil {
		h.nl.Close()
		h.nl = nil
	}
	h.ns.Close()
	if err := netns.DeleteNamed(h.NS); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("topology: delete netns %s: %w", h.NS, err)
	}
	return nil
}

// CleanupStale deletes namespaces left by runs whose process is gone (a
// killed simulator), so that a run after a killed one starts clean. It
// returns the names it deleted.
func CleanupStale() ([]string, error) {
	ents, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("topology: %w", err)
	}
	var gone []string
	var errs []error
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), Prefix)
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(strings.SplitN(rest, "-", 2)[0])
		if err != nil || pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue // not ours, or its run is still going
		}
		if err := netns.DeleteNamed(e.Name()); err != nil {
			errs = append(errs, fmt.Errorf("topology: delete stale netns %s: %w", e.Name(), err))
			continue
		}
		gone = append(gone, e.Name())
	}
	return gone, errors.Join(errs...)
}
