package scenario

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ipvirt/ipvirt/sim/scenario/topo"
)

const minimal = `
name: t
daemon: {source: static}
phases:
  - name: p
    sessions:
      - name: s
        run: [{}]
`

func TestParseDefaults(t *testing.T) {
	f, err := Parse([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	p := f.Phases[0]
	if p.Interceptor != "preload" || p.Sessions[0].Count != 1 || p.Sessions[0].Run[0].Program != "db-client" || p.Sessions[0].Run[0].Kind != "c" {
		t.Fatalf("defaults not applied: %+v", p)
	}
	if top, err := topo.New(&f.Topology); err != nil || top.Adapter() != "lo" {
		t.Fatalf("topology %v, %v: want loopback", top, err)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, old, new, want string
	}{
		{"unknown top key", "name: t", "name: t\nbogus: 1", "field bogus not found"},
		{"no name", "name: t", `name: ""`, "name: missing"},
		{"unknown requirement", "name: t", "name: t\nrequires: [moon]", `unknown requirement "moon"`},
		{"unknown topology", "name: t", "name: t\ntopology: {kind: mesh}", `unknown kind "mesh"`},
		{"topology not a map", "name: t", "name: t\ntopology: loopback", "want a mapping"},
		{"no phases", "phases:", "phases: []\nx:", "field x not found"},
		{"bad interceptor", "    sessions:", "    interceptor: ebpf\n    sessions:", `interceptor "ebpf"`},
		{"bad source", "run: [{}]", "run: [{expect: {source: dhcp}}]", `expect.source "dhcp"`},
		{"bad verdict", "run: [{}]", "run: [{expect: {verdict: maybe}}]", `expect.verdict "maybe"`},
		{"bad kind", "run: [{}]", "run: [{kind: rust}]", `kind "rust"`},
		{"program with slash", "run: [{}]", "run: [{program: /bin/sh}]", "a plain name"},
		{"bad bind", "run: [{}]", "run: [{bind: somewhere}]", "want an address or"},
		{"bad env", "run: [{}]", "run: [{env: [IPVIRT_TIMEOUT_MS]}]", `env "IPVIRT_TIMEOUT_MS": want NAME=VALUE`},
		{"bad bind index", "run: [{}]", `run: [{bind: "vip of s[0]"}]`, "bad session number"},
		{"no clients", "run: [{}]", "run: []", "run: no clients"},
		// Found only when the client started, after every session before it.
		{"bind past the group", "run: [{}]", `run: [{bind: "vip of s[2]"}]`, `bind "vip of s[2]": session 2 of group "s", which has 1`},
		// Durations are never negative (strictyaml.Duration).
		{"negative duration", "    sessions:", "    duration: -1s\n    sessions:", `bad duration "-1s"`},
		{"count too big", "      - name: s", "      - name: s\n        count: 20000", "count 20000"},
		{"unknown expect block", "    sessions:", "    expect: {pcap: {}}\n    sessions:", `expect: unknown key "pcap"`},
		{"empty wire block", "    sessions:", "    expect: {wire: {}}\n    sessions:", "wire: no check enabled"},
		{"metric without value", "    sessions:", "    expect: {metrics: [{name: x}]}\n    sessions:", "equals, min or max"},
		{"bad duration", "    sessions:", "    expect: {connect_p99_below: soon}\n    sessions:", `bad duration "soon"`},
		{"negative host", "      - name: s", "      - name: s\n        host: -1", "host -1: farm hosts are numbered from 1"},
		{"partition target", "    sessions:", "    steps: [{at: 1s, do: partition, target: session2}]\n    sessions:", `target "session2": want host1, host2`},
		{"etcd step target", "    sessions:", "    steps: [{at: 1s, do: etcd-kill, target: host1}]\n    sessions:", `target "host1": want etcd1, etcd2`},
		{"wire farm check typo", "    sessions:", "    expect: {wire: {one_host_per_addres: true}}\n    sessions:", "one_host_per_addres"},
		{"typo in expect", "    sessions:", "    expect: {acepted: 1}\n    sessions:", `unknown key "acepted"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := strings.Replace(minimal, tt.old, tt.new, 1)
			if doc == minimal {
				t.Fatalf("%q not in the minimal scenario", tt.old)
			}
			_, err := Parse([]byte(doc))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestParseBind(t *testing.T) {
	tests := []struct {
		in    string
		addr  string
		group string
		index int
	}{
		{"127.78.0.10", "127.78.0.10", "", 0},
		{"vip of alice", "", "alice", 1},
		{"vip of alice[3]", "", "alice", 3},
	}
	for _, tt := range tests {
		a, ref, err := ParseBind(tt.in)
		if err != nil {
			t.Fatalf("%q: %v", tt.in, err)
		}
		if tt.addr != "" && a.String() != tt.addr {
			t.Errorf("%q: addr %s", tt.in, a)
		}
		if tt.group != "" && (ref == nil || ref.Group != tt.group || ref.Index != tt.index) {
			t.Errorf("%q: ref %+v", tt.in, ref)
		}
	}
}

// FuzzParse: a scenario file is input from a user; the parser must reject,
// never panic.
func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal))
	f.Add([]byte(strings.Replace(minimal, "run: [{}]", "count: 2\n        run: [{bind: \"vip of s[2]\"}]", 1)))
	for _, name := range []string{"duplicate-ip.yaml", "admin-excluded.yaml", "exhausted.yaml"} {
		if b, err := os.ReadFile(filepath.Join("..", "..", "scenarios", name)); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Parse(b)
		if err != nil {
			return
		}
		if s.Name == "" || len(s.Phases) == 0 {
			t.Fatalf("accepted a scenario without name or phases: %q", b)
		}
		// What the runner relies on: counts in range, binds that name an
		// existing session, steps in time order.
		for _, p := range s.Phases {
			counts := map[string]int{}
			for _, g := range p.Sessions {
				if g.Count < 1 || g.Count > 10000 || (g.At != nil && *g.At < 0) {
					t.Fatalf("accepted group %+v", g)
				}
				counts[g.Name] = g.Count
			}
			for _, g := range p.Sessions {
				for _, c := range g.Run {
					if _, ref, err := ParseBind(c.Bind); c.Bind != "" && (err != nil || ref != nil && (ref.Index < 1 || ref.Index > counts[ref.Group])) {
						t.Fatalf("accepted bind %q with groups %v", c.Bind, counts)
					}
				}
			}
			for i := 1; i < len(p.Steps); i++ {
				if p.Steps[i].At < p.Steps[i-1].At || p.Steps[i].Timeout < 0 {
					t.Fatalf("accepted steps %+v", p.Steps)
				}
			}
			if p.Duration < 0 {
				t.Fatalf("accepted duration %v", p.Duration)
			}
		}
	})
}
