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
// "netns" is registered by sim/scenario/netns.go.
type Topology interface {
	Up(ctx context.Context) error
	// Down is idempotent and safe after a partial Up; the runner also calls
	// it on a panic or an interrupt.
	Down() error
	// Adapter is what ipvirtd's `adapter:` key names (the runner fills the
	// key in when a scenario does not).
	Adapter() string
	// MachineIP is the session host's own address: what clients that are
	// not virtualized leave from.
	MachineIP() netip.Addr
	// ServerAddr is where the database server listens.
	ServerAddr() netip.Addr
	// Wrap returns argv rewritten to run on host ("session", "server",
	// "dhcp0", "dhcp1", "rogue"); loopback returns argv unchanged. The
	// wrapper must exec argv (keep the pid) so that signals reach it.
	Wrap(host string, argv []string) []string
	// Do runs fn with the calling OS thread inside host's network namespace
	// (for in-process listeners such as the database server, and for
	// dialling the daemon's HTTP port); loopback just calls fn.
	Do(host string, fn func() error) error
}

// NeedsRoot is implemented by topologies that cannot be built without
// root; the reason is printed as "SKIP FILE: REASON".
type NeedsRoot interface{ NeedsRoot() string }

// DHCPPlacer is implemented by topologies that give synthetic DHCP servers
// hosts of their own. It returns the dhcpserver `interface` and `listen`
// values for the server on host, and whether ipvirtd finds it by broadcast
// on its adapter. A topology without it (loopback) gets relay mode: each
// server listens on 127.0.0.1:<free port> and the runner points ipvirtd's
// dhcp.server at the first one (unless the scenario sets dhcp.server).
type DHCPPlacer interface {
	DHCPServer(host string) (iface, listen string, err error)
}

var (
	regMu      sync.Mutex
	topologies = map[string]func(spec *yaml.Node) (Topology, error){
		"loopback": func(spec *yaml.Node) (Topology, error) { return newLoopback(spec) },
	}
	checks = map[string]Check{}
)

// RegisterTopology makes `topology: {kind: K, ...}` in a scenario build a
// Topology. spec is the whole topology mapping (decode it with KnownFields
// in build; `kind` is in it). build is also called when a file is loaded,
// to validate it, so it must not touch the system: that is Up's job.
func RegisterTopology(kind string, build func(spec *yaml.Node) (Topology, error)) {
	regMu.Lock()
	defer regMu.Unlock()
	topologies[kind] = build
}

// Check is an extra expectation block of a phase, `expect: {NAME: ...}`,
// registered by a plug-in (the wire checks, for instance).
type Check interface {
	// Validate checks the block when the file is loaded; errors should name
	// the line (spec.Line) and the bad key or value.
	Validate(spec *yaml.Node) error
	// Begin runs once the phase's daemon is up and before any session or
	// client starts (start a packet capture here). The returned end runs
	// after the phase's timeline is over and every client has reported, with
	// env.Clients and env.Report filled; its outcomes are printed PASS/FAIL
	// with the phase's own. An error from Begin fails the run.
	Begin(ctx context.Context, env *PhaseEnv, spec *yaml.Node) (end func(ctx context.Context) []Outcome, err error)
}

// RegisterCheck makes `expect: {name: ...}` run c in every phase that has it.
func RegisterCheck(name string, c Check) {
	regMu.Lock()
	defer regMu.Unlock()
	checks[name] = c
}

func lookupCheck(name string) (Check, bool) {
	regMu.Lock()
	defer regMu.Unlock()
	c, ok := checks[name]
	return c, ok
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
		return "", fmt.Errorf("line %d: topology: unknown kind %q (known: %s)", f.Topology.Line, kind, strings.Join(known, ", "))
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
	spec := &f.Topology
	if spec.Kind == 0 {
		spec = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	}
	t, err := build(spec)
	if err != nil {
		return nil, fmt.Errorf("topology %s: %w", kind, err)
	}
	return t, nil
}

// loopback is everything on this host: VIPs from a 127/8 pool (Linux lets
// any process use any loopback address), no root needed.
type loopback struct{}

func newLoopback(spec *yaml.Node) (Topology, error) {
	var s struct {
		Kind string `yaml:"kind"`
	}
	if err := decodeStrict(spec, &s); err != nil {
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
