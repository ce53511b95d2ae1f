// Package scenario replays scenario files: a topology, a real ipvirtd, real
// login sessions running unmodified clients, and the simulated database
// server, phase after phase, each phase with the outcome it must show.
//
// The format is documented in scenarios/README.md. It is designed to grow:
// topologies are plug-ins (RegisterTopology), so are extra expectation
// blocks (RegisterCheck); the daemon section is ipvirtd's own YAML, passed
// through, so new daemon keys need no simulator change.
package scenario

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
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
	// Daemon is the base ipvirtd config of every phase (ipvirtd's YAML;
	// state_dir, socket and http are filled in by the simulator).
	Daemon map[string]any `yaml:"daemon"`
	Phases []Phase        `yaml:"phases"`

	path string
}

// Phase is one run of the daemon with a set of sessions and clients.
type Phase struct {
	Name string `yaml:"name"`
	// Says is the one line the report prints under the phase title.
	Says string `yaml:"says"`
	// Daemon overrides the file's daemon config for this phase (maps are
	// merged key by key).
	Daemon map[string]any `yaml:"daemon"`
	// Programs names client programs (see Client.Program) that ipvirtd's
	// per-program list holds; the simulator writes their full paths.
	Programs []string `yaml:"programs"`
	// Interceptor is how clients are made to use their VIP: preload
	// (libipvirt.so, the default), bpf (ipvirtd's kernel interceptor) or
	// none.
	Interceptor string         `yaml:"interceptor"`
	Sessions    []SessionGroup `yaml:"sessions"`
	Expect      PhaseExpect    `yaml:"expect"`
}

// SessionGroup is Count login sessions of one user, each running Run.
type SessionGroup struct {
	Name  string `yaml:"name"`
	Count int    `yaml:"count"`
	// UID is the session's login uid (audit sessions). POSIX sessions
	// always belong to the simulator's own user.
	UID *uint32 `yaml:"uid"`
	// NoSession runs the clients outside any login session (a service):
	// needs audit sessions and a simulator that is itself in none.
	NoSession bool     `yaml:"no_session"`
	Run       []Client `yaml:"run"`
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
	Bind   string       `yaml:"bind"`
	Expect ClientExpect `yaml:"expect"`
}

// ClientExpect is what each client of a Client entry must show.
type ClientExpect struct {
	// Source is vip (the VIP ipvirtctl reports for its session or
	// program), mip (the machine IP) or none (no connection was made).
	Source string `yaml:"source"`
	// Verdict is accepted, refused (the server saw a duplicate address),
	// denied (connect failed with EACCES/EPERM) or bind-failed.
	Verdict string `yaml:"verdict"`
	// Errno, when set, is the error name the client must have seen.
	Errno string `yaml:"errno"`
}

// PhaseExpect are the phase-wide expectations; nil fields are not checked.
type PhaseExpect struct {
	Accepted *int `yaml:"accepted"`
	Refused  *int `yaml:"refused"`
	Denied   *int `yaml:"denied"`
	// DistinctSources counts distinct source addresses among connected
	// clients.
	DistinctSources *int `yaml:"distinct_sources"`
	// SourcesMatchReport: every virtualized client left from exactly the
	// VIP `ipvirtctl sessions` reports for it, and no VIP is reported twice.
	SourcesMatchReport bool `yaml:"sources_match_report"`
	// ConnectP99Below bounds the 99th percentile of client connect() time.
	ConnectP99Below Duration `yaml:"connect_p99_below"`
	// Metrics are ipvirtd metric values at the end of the phase.
	Metrics []MetricExpect `yaml:"metrics"`
	// Extra holds registered check blocks (see RegisterCheck).
	Extra map[string]yaml.Node `yaml:",inline"`
}

// MetricExpect checks the sum of an ipvirtd metric's matching samples.
type MetricExpect struct {
	Name   string            `yaml:"name"`
	Labels map[string]string `yaml:"labels"`
	Equals *float64          `yaml:"equals"`
	Min    *float64          `yaml:"min"`
}

// Duration is a time.Duration written as "250ms", "2s".
type Duration time.Duration

func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil || v < 0 {
		return fmt.Errorf("line %d: bad duration %q (want e.g. 250ms, 2s)", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// Load reads and validates a scenario file.
func Load(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("scenario: %w", err)
	}
	f, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("scenario %s: %w", path, err)
	}
	f.path = path
	return f, nil
}

// Parse decodes and validates a scenario. Unknown keys are errors, with
// their line, so a typo never silently drops an expectation.
func Parse(b []byte) (*File, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var f File
	if err := dec.Decode(&f); err != nil {
		return nil, err
	}
	if err := f.validate(); err != nil {
		return nil, err
	}
	return &f, nil
}

var (
	sourceValues  = []string{"", "vip", "mip", "none"}
	verdictValues = []string{"", "accepted", "refused", "denied", "bind-failed"}
)

func (f *File) validate() error {
	if f.Name == "" {
		return errors.New("name: missing")
	}
	for _, r := range f.Requires {
		if r != "root" {
			return fmt.Errorf("requires: unknown requirement %q (known: root)", r)
		}
	}
	if _, err := f.topologyKind(); err != nil {
		return err
	}
	if len(f.Phases) == 0 {
		return errors.New("phases: a scenario needs at least one phase")
	}
	for i := range f.Phases {
		p := &f.Phases[i]
		where := fmt.Sprintf("phases[%d] (%s)", i, p.Name)
		if p.Name == "" {
			return fmt.Errorf("phases[%d]: name missing", i)
		}
		switch p.Interceptor {
		case "":
			p.Interceptor = "preload"
		case "preload", "bpf", "none":
		default:
			return fmt.Errorf("%s: interceptor %q: want preload, bpf or none", where, p.Interceptor)
		}
		if len(p.Sessions) == 0 {
			return fmt.Errorf("%s: sessions: none", where)
		}
		for j := range p.Sessions {
			g := &p.Sessions[j]
			gw := fmt.Sprintf("%s sessions[%d]", where, j)
			if g.Name == "" {
				return fmt.Errorf("%s: name missing", gw)
			}
			if g.Count == 0 {
				g.Count = 1
			}
			if g.Count < 0 || g.Count > 10000 {
				return fmt.Errorf("%s: count %d out of range 1..10000", gw, g.Count)
			}
			if len(g.Run) == 0 {
				return fmt.Errorf("%s: run: no clients", gw)
			}
			for k := range g.Run {
				c := &g.Run[k]
				cw := fmt.Sprintf("%s run[%d]", gw, k)
				if c.Program == "" {
					c.Program = "db-client"
				}
				if strings.ContainsAny(c.Program, "/ \t") {
					return fmt.Errorf("%s: program %q: a plain name, no slashes or spaces", cw, c.Program)
				}
				switch c.Kind {
				case "":
					c.Kind = "c"
				case "c", "go":
				default:
					return fmt.Errorf("%s: kind %q: want c or go", cw, c.Kind)
				}
				if !oneOf(c.Expect.Source, sourceValues) {
					return fmt.Errorf("%s: expect.source %q: want vip, mip or none", cw, c.Expect.Source)
				}
				if !oneOf(c.Expect.Verdict, verdictValues) {
					return fmt.Errorf("%s: expect.verdict %q: want accepted, refused, denied or bind-failed", cw, c.Expect.Verdict)
				}
				if c.Bind != "" {
					if _, _, err := parseBind(c.Bind); err != nil {
						return fmt.Errorf("%s: bind: %w", cw, err)
					}
				}
			}
		}
		for _, m := range p.Expect.Metrics {
			if m.Name == "" || (m.Equals == nil && m.Min == nil) {
				return fmt.Errorf("%s: expect.metrics: each needs a name and equals or min", where)
			}
		}
		for name := range p.Expect.Extra {
			if _, ok := checks[name]; !ok {
				return fmt.Errorf("%s: expect: unknown key %q", where, name)
			}
		}
	}
	return nil
}

func oneOf(v string, set []string) bool {
	for _, s := range set {
		if v == s {
			return true
		}
	}
	return false
}
