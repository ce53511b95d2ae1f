package main

import (
	"fmt"
	"net"
	"os"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/ipvirt/ipvirt/sim/topology"
)

// lan is two namespaces joined by a veth pair, each end named eth0:
// "srv" (10.97.0.1/16) and "cli" (10.97.0.2/16).
type lan struct {
	srv, cli         netns.NsHandle
	srvName, cliName string
}

func newLAN() (*lan, error) {
	l := &lan{srvName: fmt.Sprintf("storm-srv-%d", os.Getpid()), cliName: fmt.Sprintf("storm-cli-%d", os.Getpid())}
	var err error
	if l.srv, err = topology.NewNamed(l.srvName); err != nil {
		return nil, err
	}
	if l.cli, err = topology.NewNamed(l.cliName); err != nil {
		l.close()
		return nil, err
	}
	hs, err := netlink.NewHandleAt(l.srv)
	if err != nil {
		l.close()
		return nil, err
	}
	defer hs.Close()
	hc, err := netlink.NewHandleAt(l.cli)
	if err != nil {
		l.close()
		return nil, err
	}
	defer hc.Close()
	if err := hs.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0",
		PeerNamespace: netlink.NsFd(int(l.cli))}); err != nil {
		l.close()
		return nil, fmt.Errorf("veth: %w", err)
	}
	for i, h := range []*netlink.Handle{hs, hc} {
		link, err := h.LinkByName("eth0")
		if err == nil {
			err = h.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 97, 0, byte(1+i)), Mask: net.CIDRMask(16, 32)}})
		}
		if err == nil {
			err = h.LinkSetUp(link)
		}
		if err != nil {
			l.close()
			return nil, fmt.Errorf("eth0: %w", err)
		}
	}
	return l, nil
}

func (l *lan) close() {
	for _, x := range []struct {
		h    netns.NsHandle
		name string
	}{{l.srv, l.srvName}, {l.cli, l.cliName}} {
		if x.h.IsOpen() {
			x.h.Close()
		}
		_ = netns.DeleteNamed(x.name)
	}
}

func numCPU() int { return runtime.NumCPU() }
