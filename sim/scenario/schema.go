// Package scenario is the scenario file format: a topology, synthetic DHCP
// servers, ipvirtd's config, and phases of login sessions running clients,
// each phase with the outcome it must show. Load and Parse read a file
// strictly (an unknown key or a bad value is an error naming its line);
// sim/scenario/runner replays it.
//
// The format is documented in scenarios/README.md. It is designed to grow:
// topologies are plug-ins (topo.Register), so is every key of a phase's
// expect block (check.Register); the daemon section is ipvirtd's own YAML,
// passed through, so new daemon keys need no simulator change.
package scenario

import (
	"go.yaml.in/yaml/v3"

	"github.com/ipvirt/ipvirt/sim/dhcpserver"
	"github.com/ipvirt/ipvirt/sim/scenario/check"
	"github.com/ipvirt/ipvirt/sim/scenario/strictyaml"
)

// File is one scenario file.
type File struct {
	Name        string `yaml:"name"`
	Description string `yaml:"description"`
	// Requires lists what the scenario cannot run without: "root" (audit
	// sessions, namespaces, eBPF). Without it the run is skipped, or failed
	// under CI=true.
	Requires []string `yaml:"requires"`
	// Topology is {kind: loopback} (the default) or a registered kind; the
	// whole mapping is handed to the kind's constructor.
	Topology yaml.Node `yaml:"topology"`
	// DHCPServers are synthetic DHCP servers (sim/dhcpserver), started
	// before the first phase and stopped after the last.
	DHCPServers []DHCPServer `yaml:"dhcp_servers"`
	// Daemon is the base ipvirtd config of every phase (ipvirtd's YAML;
	// state_dir, socket and http are filled in by the simulator).
	Daemon map[string]any `yaml:"daemon"`
	Phases []Phase        `yaml:"phases"`
}

// DHCPServer is one synthetic DHCP server: a name, the topology host it
// runs on, and sim/dhcpserver's knobs inline (range_start, lease_time,
// latency, drop_rate, offline windows, ...).
type DHCPServer struct {
	Name   string
	Host   string
	Config dhcpserver.Config
	// Knobs are the knobs as written, handed to the server.
	Knobs []byte
	// Placed is set when the scenario sets interface or listen itself;
	// otherwise the runner places the server on its topology host.
	Placed bool

	line int
}

// UnmarshalYAML splits name and host from the knobs, which sim/dhcpserver
// validates itself (unknown knobs are errors there too).
func (d *DHCPServer) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return strictyaml.Errorf(n.Line, "dhcp_servers: want a mapping such as {name: dhcp0, range_start: ...}")
	}
	d.line = n.Line
	knobs := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch k.Value {
		case "name":
			d.Name = v.Value
		case "host":
			d.Host = v.Value
		case "interface", "listen":
			d.Placed = true
			knobs.Content = append(knobs.Content, k, v)
		default:
			knobs.Content = append(knobs.Content, k, v)
		}
	}
	b, err := yaml.Marshal(knobs)
	if err != nil {
		return strictyaml.Errorf(n.Line, "dhcp_servers: %v", err)
	}
	if len(knobs.Content) == 0 {
		b = nil
	}
	d.Knobs = b
	// The runner adds interface and listen from the topology; validate as
	// if it had (knobs such as arp_in_use need an interface).
	probe := b
	if !d.Placed {
		probe = append(append([]byte(nil), b...), "\ninterface: eth0\n"...)
	}
	cfg, err := dhcpserver.ParseConfig(probe)
	if err != nil {
		return strictyaml.Errorf(n.Line, "dhcp_servers %s: %v", d.Name, err)
	}
	d.Config = cfg
	return nil
}

// Phase is one run of the daemon with a set of sessions and clients.
type Phase struct {
	Name string `yaml:"name"`
	// Says is the one line the report prints under the phase title.
	Says string `yaml:"says"`
	// Daemon overrides the file's daemon config for this phase (maps are
	// merged key by key).
	Daemon map[string]any `yaml:"daemon"`
	// Restart is how the daemon takes this phase's config: fresh (a new
	// daemon with empty state: the default), restart (SIGTERM and start
	// again on the previous phase's state: leases survive) or reload
	// (SIGHUP to the running daemon).
	Restart string `yaml:"restart"`
	// Programs names client programs (see Client.Program) that ipvirtd's
	// per-program list holds; the simulator writes their full paths.
	Programs []string `yaml:"programs"`
	// Interceptor is how clients are made to use their VIP: preload
	// (libipvirt.so, the default), bpf (ipvirtd's kernel interceptor:
	// `interceptor: bpf` is added to the daemon config) or none.
	Interceptor string `yaml:"interceptor"`
	// Requires is what this phase alone cannot run without ("root"); a bpf
	// phase needs root implicitly. Without it the phase is skipped and the
	// rest of the file runs (failed under CI=true).
	Requires []string       `yaml:"requires"`
	Sessions []SessionGroup `yaml:"sessions"`
	// Steps are things done to the system at given times: faults.
	Steps []Step `yaml:"steps"`
	// Duration makes the phase last at least this long from its start
	// before the expectations are checked (renewals, expiries).
	Duration strictyaml.Duration `yaml:"duration"`
	Expect   PhaseExpect         `yaml:"expect"`

	line int
}

func (p *Phase) UnmarshalYAML(n *yaml.Node) error {
	type plain Phase
	if err := strictyaml.Decode(n, (*plain)(p)); err != nil {
		return err
	}
	p.line = n.Line
	return nil
}

// SessionGroup is Count login sessions of one user, each running Run.
type SessionGroup struct {
	Name  string `yaml:"name"`
	Count int    `yaml:"count"`
	// UID is the session's login uid (audit sessions; default 1001, 1002,
	// ... one per session). POSIX sessions always belong to the simulator's
	// own user.
	UID *uint32 `yaml:"uid"`
	// Admin makes the group's user an ipvirtd administrator (its uid is
	// added to admins.users): never virtualized. Needs audit sessions.
	Admin bool `yaml:"admin"`
	// NoSession runs the clients outside any login session (a service):
	// needs audit sessions and a simulator that is itself in none.
	NoSession bool `yaml:"no_session"`
	// At starts the group this long after the phase started; without it
	// groups start one after the other as soon as the previous is done.
	At *strictyaml.Duration `yaml:"at"`
	// Together starts the group's sessions and clients all at once (a logon
	// storm) instead of one by one.
	Together bool `yaml:"together"`
	// Host is the farm host (1, 2, ...; topology kind farm) the group's
	// sessions log on to; 0, the default, spreads them round robin.
	Host int      `yaml:"host"`
	Run  []Client `yaml:"run"`

	line int
}

func (g *SessionGroup) UnmarshalYAML(n *yaml.Node) error {
	type plain SessionGroup
	if err := strictyaml.Decode(n, (*plain)(g)); err != nil {
		return err
	}
	g.line = n.Line
	return nil
}

// Client is one client process started in each session of a group, in
// order, each holding its connection until the phase ends.
type Client struct {
	// Program is the name the client binary is installed under for this
	// run (per-program mode tells programs apart by executable path).
	Program string `yaml:"program"`
	// Kind is c (ipvirt-dbclient, a libc program: the default) or go
	// (`ipvirt-sim client`: raw system calls, invisible to LD_PRELOAD).
	Kind string `yaml:"kind"`
	// Bind makes the client bind this source address itself first; "vip of
	// GROUP[N]" names the VIP another session was given.
	Bind string `yaml:"bind"`
	// Env adds NAME=VALUE variables to the client's environment (the
	// preload library's IPVIRT_TIMEOUT_MS, for instance).
	Env []string `yaml:"env"`
	// Hold keeps an accepted connection open until the phase ends (the
	// default); false hangs up at once.
	Hold   *bool              `yaml:"hold"`
	Expect check.ClientExpect `yaml:"expect"`

	line int
}

func (c *Client) UnmarshalYAML(n *yaml.Node) error {
	type plain Client
	if err := strictyaml.Decode(n, (*plain)(c)); err != nil {
		return err
	}
	c.line = n.Line
	return nil
}

// Step is something done at a time in a phase (see stepActions).
type Step struct {
	// At is the offset from the phase's start; steps run in file order,
	// each waiting for its time.
	At strictyaml.Duration `yaml:"at"`
	Do string              `yaml:"do"`
	// Target names the DHCP server (dhcp-offline, dhcp-online), the
	// session group (logoff), the farm host (partition, heal; kill-daemon,
	// start-daemon in a farm: host2) or etcd member (etcd-*: etcd1) the
	// step acts on.
	Target string `yaml:"target"`
	// Daemon changes the config before reload-daemon / restart-daemon.
	Daemon map[string]any `yaml:"daemon"`
	// Metric is what wait-metric waits for.
	Metric *check.Metric `yaml:"metric"`
	// Timeout bounds wait-metric (default 30s).
	Timeout strictyaml.Duration `yaml:"timeout"`

	line int
}

func (s *Step) UnmarshalYAML(n *yaml.Node) error {
	type plain Step
	if err := strictyaml.Decode(n, (*plain)(s)); err != nil {
		return err
	}
	s.line = n.Line
	return nil
}

// stepActions are the values of a step's `do`, with what they need.
var stepActions = map[string]string{
	"kill-daemon":    "SIGKILL ipvirtd (it is not restarted: add start-daemon)",
	"stop-daemon":    "SIGTERM ipvirtd and wait for it to exit",
	"start-daemon":   "start ipvirtd again on the same state and config",
	"restart-daemon": "SIGTERM, then start again (with `daemon:` changes, if any)",
	"reload-daemon":  "rewrite the config (with `daemon:` changes) and SIGHUP; waits until reloaded",
	"dhcp-offline":   "freeze DHCP server `target` (SIGSTOP): it answers nothing",
	"dhcp-online":    "thaw DHCP server `target` (SIGCONT)",
	"logoff":         "end every session of group `target` (its clients die, its VIPs are released after grace)",
	"wait-metric":    "wait until ipvirtd's `metric` holds (equals or min), at most `timeout`",
	"sleep":          "nothing: the timeline just reaches `at`",
	// A farm's faults (topology kind farm).
	"partition":   "cut farm host `target` (host2) off every etcd member (nft drop rules in its namespace)",
	"heal":        "undo partition of farm host `target`",
	"etcd-freeze": "freeze etcd member `target` (etcd1: SIGSTOP)",
	"etcd-thaw":   "thaw etcd member `target` (SIGCONT)",
	"etcd-kill":   "SIGKILL etcd member `target` (etcd-start brings it back on its data)",
	"etcd-start":  "start etcd member `target` again on its data",
}

// PhaseExpect are the phase-wide expectations.
type PhaseExpect struct {
	// DaemonError makes the phase a start-up check: ipvirtd must refuse
	// this phase's config, its error containing this text; no session runs.
	DaemonError string `yaml:"daemon_error"`
	// Blocks are the other keys, each a check registered with
	// sim/scenario/check (accepted, metrics, wire, ...).
	Blocks map[string]yaml.Node `yaml:",inline"`
	// Checks are the Blocks as their checks parsed them, in file order.
	Checks []Expectation `yaml:"-"`
}

// Expectation is one block of a phase's expect, parsed.
type Expectation struct {
	Key   string
	Check check.Check
}
