package scenario

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"
)

// Topology is the network a scenario runs on. "loopback" is built in;
// others (network namespaces) register themselves with RegisterTopology.
type Topology interface {
	Up(ctx context.Context) error
	// Down is idempotent and safe after a partial Up; the runner also calls
	// it on a panic or an interrupt.
	Down() error
	// Adapter is what ipvirtd's `adapter:` key names.
	Adapter() string
	// MachineIP is the session host's own address: what clients that are
	// not virtualized leave from.
	MachineIP() netip.Addr
	// ServerAddr is where the database server listens.
	ServerAddr() netip.Addr
	// Wrap rewrites argv to run on host ("session", "server", "dhcp0", ...).
	Wrap(host string, argv []string) []string
	// Do runs fn with the calling OS thread inside host's network, for
	// in-process listeners such as the database server.
	Do(host string, fn func() error) error
}

// NeedsRoot is implemented by topologies that cannot be built without root.
type NeedsRoot interface{ NeedsRoot() string }

var (
	regMu      sync.Mutex
	topologies = map[string]func(spec *yaml.Node) (Topology, error){
		"loopback": func(*yaml.Node) (Topology, error) { return loopback{}, nil },
	}
	checks = map[string]Check{}
)

// RegisterTopology makes `topology: {kind: K, ...}` build a Topology; build
// gets the whole topology mapping.
func RegisterTopology(kind string, build func(spec *yaml.Node) (Topology, error)) {
	regMu.Lock()
	defer regMu.Unlock()
	topologies[kind] = build
}

// Check is an extra expectation block of a phase (`expect: {NAME: ...}`),
// registered by a plug-in such as the wire checks.
type Check func(ctx context.Context, env *PhaseEnv, spec *yaml.Node) []Outcome

// RegisterCheck makes `expect: {name: ...}` run c at the end of a phase.
func RegisterCheck(name string, c Check) {
	regMu.Lock()
	defer regMu.Unlock()
	checks[name] = c
}

func (f *File) topologyKind() (string, error) {
	kind := "loopback"
	if f.Topology.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(f.Topology.Content); i += 2 {
			if f.Topology.Content[i].Value == "kind" {
				kind = f.Topology.Content[i+1].Value
			}
		}
	} else if f.Topology.Kind != 0 {
		return "", fmt.Errorf("line %d: topology: want a mapping such as {kind: loopback}", f.Topology.Line)
	}
	regMu.Lock()
	defer regMu.Unlock()
	if _, ok := topologies[kind]; !ok {
		var known []string
		for k := range topologies {
			known = append(known, k)
		}
		sort.Strings(known)
		return "", fmt.Errorf("topology: unknown kind %q (known: %s)", kind, strings.Join(known, ", "))
	}
	return kind, nil
}

func (f *File) buildTopology() (Topology, error) {
	kind, err := f.topologyKind()
	if err != nil {
		return nil, err
	}
	regMu.Lock()
	build := topologies[kind]
	regMu.Unlock()
	return build(&f.Topology)
}

// loopback is everything on this host: VIPs from a 127/8 pool (Linux lets
// any process use any loopback address), no root needed.
type loopback struct{}

func (loopback) Up(context.Context) error              { return nil }
func (loopback) Down() error                           { return nil }
func (loopback) Adapter() string                       { return "lo" }
func (loopback) MachineIP() netip.Addr                 { return netip.MustParseAddr("127.0.0.1") }
func (loopback) ServerAddr() netip.Addr                { return netip.MustParseAddr("127.0.0.1") }
func (loopback) Wrap(_ string, argv []string) []string { return argv }
func (loopback) Do(_ string, fn func() error) error    { return fn() }
