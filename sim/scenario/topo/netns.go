package topo

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"go.yaml.in/yaml/v3"

	"github.com/ipvirt/ipvirt/sim/scenario/strictyaml"
	"github.com/ipvirt/ipvirt/sim/topology"
)

// netnsTopo is a real LAN in network namespaces (sim/topology): the session
// host running ipvirtd and the sessions (eth0, and eth1 on a second LAN
// when adapters is 2), the database server, two DHCP server hosts and a
// spare host, all on one bridge.
//
//	topology: {kind: netns, lan: 10.77.0.0/24, adapters: 1}
//
// Hosts and their host numbers on the LAN: session .2, server .3, dhcp0
// .4, dhcp1 .5, rogue .6. Leave .100 and up to DHCP ranges and static pools.
type netnsTopo struct {
	lan      netip.Prefix
	adapters int
	hosts    []hostNum // what Up builds (the farm kind lists its own)
	net      *topology.Net
}

// hostNum is a host and its host number on the LAN.
type hostNum struct {
	name string
	num  int
}

var netnsHosts = []hostNum{{"session", 2}, {"server", 3}, {"dhcp0", 4}, {"dhcp1", 5}, {"rogue", 6}}

func init() { Register("netns", newNetns) }

func newNetns(spec *yaml.Node) (Topology, error) {
	var s struct {
		Kind     string `yaml:"kind"`
		LAN      string `yaml:"lan"`
		Adapters int    `yaml:"adapters"`
	}
	if err := strictyaml.Decode(spec, &s); err != nil {
		return nil, err
	}
	t := &netnsTopo{adapters: 1, hosts: netnsHosts}
	var err error
	if t.lan, err = parseLAN(s.LAN, spec.Line); err != nil {
		return nil, err
	}
	switch s.Adapters {
	case 0, 1:
	case 2:
		t.adapters = 2
	default:
		return nil, strictyaml.Errorf(spec.Line, "topology: adapters %d: the session host has 1 or 2", s.Adapters)
	}
	return t, nil
}

// parseLAN is a topology's lan key: default 10.77.0.0/24.
func parseLAN(lan string, line int) (netip.Prefix, error) {
	if lan == "" {
		return netip.MustParsePrefix("10.77.0.0/24"), nil
	}
	p, err := netip.ParsePrefix(lan)
	if err != nil || !p.Addr().Is4() || p.Bits() > 24 || p != p.Masked() {
		return p, strictyaml.Errorf(line, "topology: lan %q: want an IPv4 network of /24 or larger, such as 10.77.0.0/24", lan)
	}
	return p, nil
}

func (t *netnsTopo) NeedsRoot() string { return "needs root (network namespaces)" }

func (t *netnsTopo) Up(context.Context) error {
	if gone, err := topology.CleanupStale(); err != nil {
		return err
	} else if len(gone) > 0 {
		fmt.Printf("   (removed namespaces of a killed run: %v)\n", gone)
	}
	spec := topology.Spec{LANs: []netip.Prefix{t.lan}}
	if t.adapters == 2 {
		// The second LAN: the next /24 after the first LAN's last one.
		b := t.lan.Masked().Addr().As4()
		b[2] += byte(1 << max(0, 24-t.lan.Bits()))
		spec.LANs = append(spec.LANs, netip.PrefixFrom(netip.AddrFrom4(b), 24))
	}
	for _, h := range t.hosts {
		hs := topology.HostSpec{Name: h.name, Adapters: []int{h.num}}
		if h.name == "session" && t.adapters == 2 {
			hs.Adapters = append(hs.Adapters, h.num)
		}
		spec.Hosts = append(spec.Hosts, hs)
	}
	n, err := topology.Build(spec)
	if err != nil {
		return err
	}
	t.net = n
	return nil
}

func (t *netnsTopo) Down() error {
	if t.net == nil {
		return nil
	}
	err := t.net.Close()
	t.net = nil
	return err
}

func (t *netnsTopo) Adapter() string { return "eth0" }

func (t *netnsTopo) addr(host string) netip.Addr {
	if t.net != nil {
		if h, ok := t.net.Host(host); ok && len(h.Adapters) > 0 {
			return h.Adapters[0].Prefix.Addr()
		}
	}
	return netip.Addr{}
}

func (t *netnsTopo) MachineIP() netip.Addr  { return t.addr("session") }
func (t *netnsTopo) ServerAddr() netip.Addr { return t.addr("server") }

// Wrap uses `ip netns exec`, which execs argv in place: the pid stays.
func (t *netnsTopo) Wrap(host string, argv []string) []string {
	if t.net == nil {
		return argv
	}
	h, ok := t.net.Host(host)
	if !ok {
		return argv // the program then runs on no host and fails visibly
	}
	return append([]string{"ip", "netns", "exec", h.NS}, argv...)
}

func (t *netnsTopo) Do(host string, fn func() error) error { return t.net.Do(host, fn) }

// DHCPServer puts a synthetic server on its own host's eth0, answering
// broadcasts on the LAN as a real one does.
func (t *netnsTopo) DHCPServer(host string) (iface, listen string, err error) {
	if host == "" {
		host = "dhcp0"
	}
	if _, ok := t.net.Host(host); !ok || host == "session" || host == "lan" {
		return "", "", fmt.Errorf("no DHCP server host %q (known: dhcp0, dhcp1, rogue, server)", host)
	}
	return "eth0", "0.0.0.0:67", nil
}

// DoLAN runs fn in the namespace of the bridges (for packet capture: every
// host's frames enter there once).
func (t *netnsTopo) DoLAN(fn func() error) error { return t.net.Do("lan", fn) }

// SessionMACs are the session host's adapters' addresses.
func (t *netnsTopo) SessionMACs() []net.HardwareAddr {
	h, _ := t.net.Host("session")
	var out []net.HardwareAddr
	for _, a := range h.Adapters {
		out = append(out, a.MAC)
	}
	return out
}
