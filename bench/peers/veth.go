package main

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/ipvirt/ipvirt/bench/internal/benchkit"
	"github.com/ipvirt/ipvirt/sim/topology"
)

const (
	vethPlain = "plain connect across the veth (baseline)"
	nftName   = "nftables: snat by meta skuid"
	ruleName  = "ip rule uidrange + route src"
	// vethUID runs the loops of all three, so that only the rule differs.
	vethUID = 60953
	// ruleTable is the routing table ip rule sends vethUID's lookups to.
	ruleTable = 100
)

// client is one client namespace: its own veth into the server's
// namespace, 10.96.K.2/24 on its eth0 (the server is 10.96.K.1), and the
// VIP 10.96.K.100/32 beside it, where ipvirt would label a VIP.
type client struct {
	ns       netns.NsHandle
	nl       *netlink.Handle
	eth0     netlink.Link
	own, vip netip.Addr
	server   netip.Addr
}

// setupVeth builds a server namespace (the listener) and three client
// namespaces, one per variant, so that the nat table (and with it
// conntrack) and the uid rule live only where their variant runs, and
// nothing of them touches the host.
func (b *bench) setupVeth() error {
	name := func(tag string) string { return fmt.Sprintf("%s%d-peers-%s", topology.Prefix, os.Getpid(), tag) }
	srv, err := b.namespace(name("srv"))
	if err != nil {
		return err
	}
	var ln *benchkit.Listener
	if err := topology.In(srv, func() error {
		var err error
		ln, err = benchkit.Listen("0.0.0.0:0")
		return err
	}); err != nil {
		return err
	}
	b.onClose(func() { ln.Close() })
	srvNL, err := netlink.NewHandleAt(srv)
	if err != nil {
		return fmt.Errorf("netlink in the server namespace: %w", err)
	}
	b.onClose(srvNL.Close)

	clients := make([]*client, 3)
	for k := range clients {
		if clients[k], err = b.client(srv, srvNL, name(fmt.Sprintf("c%d", k)), k); err != nil {
			return err
		}
	}
	loop := func(c *client) func(n int) (string, error) {
		return func(n int) (string, error) {
			return runAs(c.ns, vethUID, b.loopArgs(n, c.server, ln.Port(), netip.Addr{}))
		}
	}

	plain := clients[0]
	b.variants = append(b.variants, &variant{name: vethPlain, section: veth, ln: ln, client: plain.own, run: loop(plain)})

	nat := clients[1]
	if _, err := exec.LookPath("nft"); err != nil {
		b.skip(nftName, "nft not found (Debian package nftables; make deps installs it)")
	} else {
		rules := fmt.Sprintf("table ip nat {\n\tchain postrouting {\n\t\ttype nat hook postrouting priority 100;\n"+
			"\t\tmeta skuid %d snat to %s\n\t}\n}\n", vethUID, nat.vip)
		if err := inNS(nat.ns, "nft", rules, "nft", "-f", "-"); err != nil {
			return err
		}
		// The loop's socket keeps its own address; only the server sees
		// the VIP.
		b.variants = append(b.variants, &variant{name: nftName, section: veth, ln: ln, client: nat.own, server: nat.vip, run: loop(nat)})
	}

	rc := clients[2]
	rule := netlink.NewRule()
	rule.Family, rule.Priority, rule.Table = netlink.FAMILY_V4, 100, ruleTable
	rule.UIDRange = netlink.NewRuleUIDRange(vethUID, vethUID)
	if err := rc.nl.RuleAdd(rule); err != nil {
		return fmt.Errorf("ip rule uidrange in %s: %w", name("c2"), err)
	}
	lan := netip.PrefixFrom(rc.server, 24).Masked()
	if err := rc.nl.RouteAdd(&netlink.Route{LinkIndex: rc.eth0.Attrs().Index, Dst: ipnet(lan), Src: rc.vip.AsSlice(),
		Table: ruleTable, Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("route src %s in table %d: %w", rc.vip, ruleTable, err)
	}
	b.variants = append(b.variants, &variant{name: ruleName, section: veth, ln: ln, client: rc.vip, run: loop(rc)})
	return nil
}

// namespace makes a named network namespace with loopback up, deleted
// when the bench ends.
func (b *bench) namespace(name string) (netns.NsHandle, error) {
	h, err := topology.NewNamed(name)
	if err != nil {
		return h, err
	}
	b.onClose(func() { h.Close(); netns.DeleteNamed(name) })
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return h, fmt.Errorf("netlink in %s: %w", name, err)
	}
	defer nl.Close()
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err != nil {
		return h, fmt.Errorf("%s: lo up: %w", name, err)
	}
	return h, nil
}

// client makes client namespace k and its veth to the server (ethK there).
func (b *bench) client(srv netns.NsHandle, srvNL *netlink.Handle, name string, k int) (*client, error) {
	h, err := b.namespace(name)
	if err != nil {
		return nil, err
	}
	c := &client{ns: h,
		server: netip.AddrFrom4([4]byte{10, 96, byte(k), 1}),
		own:    netip.AddrFrom4([4]byte{10, 96, byte(k), 2}),
		vip:    netip.AddrFrom4([4]byte{10, 96, byte(k), 100})}
	if c.nl, err = netlink.NewHandleAt(h); err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", name, err)
	}
	b.onClose(c.nl.Close)
	srvEnd := fmt.Sprintf("eth%d", k)
	if err := srvNL.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: srvEnd}, PeerName: "eth0",
		PeerNamespace: netlink.NsFd(int(h))}); err != nil {
		return nil, fmt.Errorf("veth %s to %s: %w", srvEnd, name, err)
	}
	set := func(nl *netlink.Handle, link string, addrs ...netip.Prefix) (netlink.Link, error) {
		l, err := nl.LinkByName(link)
		for _, a := range addrs {
			if err == nil {
				err = nl.AddrAdd(l, &netlink.Addr{IPNet: ipnet(a)})
			}
		}
		if err == nil {
			err = nl.LinkSetUp(l)
		}
		if err != nil {
			return nil, fmt.Errorf("%s in %s: %w", link, name, err)
		}
		return l, nil
	}
	if _, err := set(srvNL, srvEnd, netip.PrefixFrom(c.server, 24)); err != nil {
		return nil, err
	}
	// The VIP as a /32 beside the interface's own /24: the connected
	// route's source stays the own address, and the server's ARP for the
	// VIP is answered.
	if c.eth0, err = set(c.nl, "eth0", netip.PrefixFrom(c.own, 24), netip.PrefixFrom(c.vip, 32)); err != nil {
		return nil, err
	}
	return c, nil
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}
}

// inNS runs argv inside ns with stdin, and fails with its output.
func inNS(ns netns.NsHandle, what, stdin string, argv ...string) error {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// A child forked from a thread inside ns starts in ns.
	err := topology.In(ns, cmd.Start)
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		return fmt.Errorf("%s: %v: %s", what, err, strings.TrimSpace(out.String()))
	}
	return nil
}

// runAs runs argv inside ns as uid (and gid) uid, with no supplementary
// groups, and returns its standard output.
func runAs(ns netns.NsHandle, uid uint32, argv []string) (string, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uid, Gid: uid},
		// The loop must not outlive a bench killed mid-run.
		Pdeathsig: syscall.SIGKILL,
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := topology.In(ns, cmd.Start)
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		return "", fmt.Errorf("%s as uid %d: %v: %s", strings.Join(argv, " "), uid, err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}
