package dhcp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/testenv"
	"github.com/ipvirt/ipvirt/sim/topology"
)

// lab is a LAN in network namespaces: a hub namespace holding a bridge,
// and hosts (one namespace each) plugged into it by veth pairs. Small and
// local on purpose; sim/topology is the general tool.
type lab struct {
	t   *testing.T
	id  string
	hub *host
	br  netlink.Link
	n   int
}

// host is one namespace with eth0 on the lab's bridge.
type host struct {
	name string // named netns, usable with `ip netns exec`
	ns   netns.NsHandle
	nl   *netlink.Handle
	eth0 netlink.Link
	addr netip.Prefix
}

var labSeq atomic.Int32

const labPrefix = "ipvt"

func newLab(t *testing.T) *lab {
	t.Helper()
	testenv.RequireRoot(t)
	sweepStaleNamespaces()
	l := &lab{t: t, id: fmt.Sprintf("%s%d-%d", labPrefix, os.Getpid(), labSeq.Add(1))}
	hub, err := newHost(l.id + "-hub")
	if err != nil {
		t.Fatal(err)
	}
	l.hub = hub
	t.Cleanup(hub.destroy)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := hub.nl.LinkAdd(br); err != nil {
		t.Fatalf("lab: bridge: %v", err)
	}
	if l.br, err = hub.nl.LinkByName("br0"); err != nil {
		t.Fatal(err)
	}
	if err := hub.nl.LinkSetUp(l.br); err != nil {
		t.Fatal(err)
	}
	return l
}

// sweepStaleNamespaces deletes lab namespaces of test processes that died
// without cleaning up (killed by a timeout).
func sweepStaleNamespaces() {
	ents, _ := os.ReadDir("/var/run/netns")
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), labPrefix)
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(strings.SplitN(rest, "-", 2)[0])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == nil {
			continue // still running
		}
		_ = netns.DeleteNamed(e.Name())
	}
}

func newHost(name string) (*host, error) {
	h := &host{name: name}
	ns, err := topology.NewNamed(name)
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	h.ns = ns
	if h.nl, err = netlink.NewHandleAt(h.ns); err != nil {
		h.destroy()
		return nil, err
	}
	lo, err := h.nl.LinkByName("lo")
	if err == nil {
		err = h.nl.LinkSetUp(lo)
	}
	if err != nil {
		h.destroy()
		return nil, fmt.Errorf("lab: %s lo: %w", name, err)
	}
	return h, nil
}

func (h *host) destroy() {
	if h.nl != nil {
		h.nl.Close()
	}
	h.ns.Close()
	_ = netns.DeleteNamed(h.name)
}

// host adds a namespace whose eth0 has addr and sits on the bridge.
func (l *lab) host(addr string) *host {
	l.t.Helper()
	l.n++
	h, err := newHost(fmt.Sprintf("%s-%d", l.id, l.n))
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(h.destroy)
	port := fmt.Sprintf("p%d-%d", os.Getpid()%100000, l.n) // unique inside the hub only
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(h.ns))}
	if err := l.hub.nl.LinkAdd(veth); err != nil {
		l.t.Fatalf("lab: veth %s: %v", port, err)
	}
	p, err := l.hub.nl.LinkByName(port)
	if err != nil {
		l.t.Fatal(err)
	}
	if err := l.hub.nl.LinkSetMaster(p, l.br); err != nil {
		l.t.Fatal(err)
	}
	if err := l.hub.nl.LinkSetUp(p); err != nil {
		l.t.Fatal(err)
	}
	if h.eth0, err = h.nl.LinkByName("eth0"); err != nil {
		l.t.Fatal(err)
	}
	if addr != "" {
		h.addr = netip.MustParsePrefix(addr)
		if err := h.nl.AddrAdd(h.eth0, &netlink.Addr{IPNet: prefixNet(h.addr)}); err != nil {
			l.t.Fatalf("lab: address %s: %v", addr, err)
		}
	}
	if err := h.nl.LinkSetUp(h.eth0); err != nil {
		l.t.Fatal(err)
	}
	if h.eth0, err = h.nl.LinkByName("eth0"); err != nil { // refresh: index, MAC, state
		l.t.Fatal(err)
	}
	return h
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}
}

// do runs fn on an OS thread inside h's namespace. Sockets fn opens stay
// in that namespace for good, whichever goroutine uses them later.
func (h *host) do(fn func() error) error { return topology.In(h.ns, fn) }

func (h *host) iface() Interface {
	a := h.eth0.Attrs()
	return Interface{Name: a.Name, Index: a.Index, MAC: a.HardwareAddr, Prefix: h.addr}
}

// manage plays the manager's part for ev: the VIP goes on eth0 when a
// lease is granted and comes off when it is lost. Without it no server
// could unicast a renewal answer to the VIP.
func (h *host) manage(t *testing.T, ev *recorder) {
	ev.onRenewed = func(l lease.Lease) { h.addVIP(t, l) }
	ev.onLost = func(_ lease.Holder, a netip.Addr) { h.delVIP(a) }
}

func (h *host) addVIP(t *testing.T, l lease.Lease) {
	err := h.nl.AddrAdd(h.eth0, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(l.Addr, l.Subnet.Bits()))})
	if err != nil && !errors.Is(err, syscall.EEXIST) {
		t.Errorf("add VIP %s: %v", l.Addr, err)
	}
}

func (h *host) delVIP(a netip.Addr) {
	addrs, _ := h.nl.AddrList(h.eth0, netlink.FAMILY_V4)
	for _, x := range addrs {
		if ip, ok := netip.AddrFromSlice(x.IP.To4()); ok && ip == a {
			_ = h.nl.AddrDel(h.eth0, &x)
		}
	}
}

// command runs a program inside h's namespace as a child process, killed
// at test end.
func (h *host) command(t *testing.T, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.name, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	return cmd
}

// startProcess starts cmd and stops it (SIGTERM, then SIGKILL) at test end.
func startProcess(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
}

// lanSource starts a broadcast-mode source on h's eth0.
func lanSource(t *testing.T, h *host, cfg Config, hostID string, ev *recorder) *Source {
	t.Helper()
	var s *Source
	err := h.do(func() (err error) {
		s, err = New(cfg, h.iface(), []byte(hostID), ev, testLogger(t))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// acquireManaged acquires and, like the manager, configures the VIP.
func acquireManaged(t *testing.T, s *Source, h *host, hd lease.Holder) lease.Lease {
	t.Helper()
	l := acquire(t, s, hd)
	h.addVIP(t, l)
	return l
}
