package topo

import (
	"context"
	"net/netip"

	"go.yaml.in/yaml/v3"

	"github.com/ipvirt/ipvirt/sim/scenario/strictyaml"
)

// loopback is everything on this host: VIPs from a 127/8 pool (Linux lets
// any process use any loopback address), no root needed.
//
//	topology: {kind: loopback}
type loopback struct{}

func init() { Register("loopback", newLoopback) }

func newLoopback(spec *yaml.Node) (Topology, error) {
	var s struct {
		Kind string `yaml:"kind"`
	}
	if err := strictyaml.Decode(spec, &s); err != nil {
		return nil, err
	}
	return loopback{}, nil
}

func (loopback) Up(context.Context) error              { return nil }
func (loopback) Down() error                           { return nil }
func (loopback) Adapter() string                       { return "lo" }
func (loopback) MachineIP() netip.Addr                 { return netip.MustParseAddr("127.0.0.1") }
func (loopback) ServerAddr() netip.Addr                { return netip.MustParseAddr("127.0.0.1") }
func (loopback) Wrap(_ string, argv []string) []string { return argv }
func (loopback) Do(_ string, fn func() error) error    { return fn() }
