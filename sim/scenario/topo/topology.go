// Package topo is the network a scenario runs on: `topology: {kind: K, ...}`.
// Each kind registers itself (loopback, netns); a new kind is one file.
package topo

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"
)

// Topology is the network a scenario runs on.
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
	mu    sync.Mutex
	kinds = map[string]func(spec *yaml.Node) (Topology, error){}
)

// Register makes `topology: {kind: K, ...}` in a scenario build a Topology.
// spec is the whole topology mapping (decode it with strictyaml.Decode;
// `kind` is in it). build is also called when a file is loaded, to
// validate it, so it must not touch the system: that is Up's job.
func Register(kind string, build func(spec *yaml.Node) (Topology, error)) {
	mu.Lock()
	defer mu.Unlock()
	kinds[kind] = build
}

// New builds the topology a scenario's `topology:` mapping describes; a
// zero node (no `topology:` key) is loopback.
func New(spec *yaml.Node) (Topology, error) {
	kind := "loopback"
	if spec.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(spec.Content); i += 2 {
			if spec.Content[i].Value == "kind" {
				kind = spec.Content[i+1].Value
			}
		}
	} else if spec.Kind != 0 {
		return nil, fmt.Errorf("line %d: topology: want a mapping such as {kind: loopback}", spec.Line)
	}
	mu.Lock()
	build, ok := kinds[kind]
	known := slices.Sorted(maps.Keys(kinds))
	mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("line %d: topology: unknown kind %q (known: %s)", spec.Line, kind, strings.Join(known, ", "))
	}
	if spec.Kind == 0 {
		spec = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	}
	t, err := build(spec)
	if err != nil {
		return nil, fmt.Errorf("topology %s: %w", kind, err)
	}
	return t, nil
}
