package topo

import (
	"errors"
	"net"
	"net/netip"
	"strconv"

	"go.yaml.in/yaml/v3"

	"github.com/ipvirt/ipvirt/sim/scenario/strictyaml"
)

// farmTopo is the netns LAN with a farm on it: several session hosts, each
// running its own ipvirtd with `source: etcd`, and the members of an etcd
// cluster the runner starts, each on a host of its own so that one member
// can be frozen, killed or cut off alone.
//
//	topology: {kind: farm, lan: 10.78.0.0/24, hosts: 3, etcd_members: 3}
//
// Hosts and their host numbers: session (host 1) .2, server .3, sessionK
// (host K, K >= 2) .10+K, etcdK .20+K. Leave .100 and up to static pools.
type farmTopo struct {
	*netnsTopo
	hosts   []string
	members []string
}

// Farm is implemented by topologies with several session hosts and an
// etcd cluster (the farm kind); the runner starts a daemon per host.
type Farm interface {
	// SessionHosts are the hosts' names, host 1 first ("session").
	SessionHosts() []string
	// EtcdHosts are the hosts the etcd members run on, member 1 first.
	EtcdHosts() []string
	// Addr is a host's address on the LAN.
	Addr(host string) netip.Addr
	// MAC is a host's adapter's address (which host a frame came from).
	MAC(host string) net.HardwareAddr
}

const maxFarmHosts = 8

func init() { Register("farm", newFarm) }

func newFarm(spec *yaml.Node) (Topology, error) {
	var s struct {
		Kind    string `yaml:"kind"`
		LAN     string `yaml:"lan"`
		Hosts   int    `yaml:"hosts"`
		Members int    `yaml:"etcd_members"`
	}
	if err := strictyaml.Decode(spec, &s); err != nil {
		return nil, err
	}
	lan, err := parseLAN(s.LAN, spec.Line)
	if err != nil {
		return nil, err
	}
	if s.Hosts == 0 {
		s.Hosts = 3
	}
	if s.Hosts < 2 || s.Hosts > maxFarmHosts {
		return nil, strictyaml.Errorf(spec.Line, "topology: hosts %d: a farm has 2 to %d session hosts", s.Hosts, maxFarmHosts)
	}
	if s.Members == 0 {
		s.Members = 3
	}
	if s.Members != 1 && s.Members != 3 && s.Members != 5 {
		return nil, strictyaml.Errorf(spec.Line, "topology: etcd_members %d: want 1, 3 or 5 (an odd cluster)", s.Members)
	}
	f := &farmTopo{netnsTopo: &netnsTopo{lan: lan, adapters: 1}}
	f.netnsTopo.hosts = []hostNum{{"session", 2}, {"server", 3}}
	f.hosts = []string{"session"}
	for k := 2; k <= s.Hosts; k++ {
		h := hostNum{name: "session" + strconv.Itoa(k), num: 10 + k}
		f.netnsTopo.hosts = append(f.netnsTopo.hosts, h)
		f.hosts = append(f.hosts, h.name)
	}
	for k := 1; k <= s.Members; k++ {
		h := hostNum{name: "etcd" + strconv.Itoa(k), num: 20 + k}
		f.netnsTopo.hosts = append(f.netnsTopo.hosts, h)
		f.members = append(f.members, h.name)
	}
	return f, nil
}

func (f *farmTopo) SessionHosts() []string      { return f.hosts }
func (f *farmTopo) EtcdHosts() []string         { return f.members }
func (f *farmTopo) Addr(host string) netip.Addr { return f.addr(host) }

func (f *farmTopo) MAC(host string) net.HardwareAddr {
	if f.net != nil {
		if h, ok := f.net.Host(host); ok && len(h.Adapters) > 0 {
			return h.Adapters[0].MAC
		}
	}
	return nil
}

// DHCPServer: a farm shares a static pool through etcd; it has no DHCP
// server hosts.
func (f *farmTopo) DHCPServer(host string) (iface, listen string, err error) {
	return "", "", errNoDHCP
}

var errNoDHCP = errors.New("topology farm: no DHCP server hosts (a farm's pool is source: etcd)")
