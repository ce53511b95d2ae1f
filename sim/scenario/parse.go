package scenario

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/ipvirt/ipvirt/sim/scenario/check"
	"github.com/ipvirt/ipvirt/sim/scenario/strictyaml"
	"github.com/ipvirt/ipvirt/sim/scenario/topo"
)

// Load reads and validates a scenario file. Errors read FILE:LINE: what.
func Load(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("scenario: %w", err)
	}
	f, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s", withPath(path, err))
	}
	return f, nil
}

var yamlLine = regexp.MustCompile(`^(?:yaml: )?(?:unmarshal errors:\n\s*)?line (\d+): `)

// withPath turns "line N: msg" (ours or the YAML decoder's) into
// "path:N: msg", the form editors jump to.
func withPath(path string, err error) string {
	msg := err.Error()
	if m := yamlLine.FindStringSubmatchIndex(msg); m != nil {
		return fmt.Sprintf("%s:%s: %s", path, msg[m[2]:m[3]], msg[m[1]:])
	}
	return path + ": " + msg
}

// Parse decodes and validates a scenario. Unknown keys are errors, with
// their line, so a typo never silently drops an expectation.
func Parse(b []byte) (*File, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var f File
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty scenario file")
		}
		return nil, err
	}
	if err := f.validate(); err != nil {
		return nil, err
	}
	return &f, nil
}

func (f *File) validate() error {
	if f.Name == "" {
		return errors.New("name: missing (every scenario has a name)")
	}
	for _, r := range f.Requires {
		if r != "root" {
			return fmt.Errorf("requires: unknown requirement %q (known: root)", r)
		}
	}
	if _, err := topo.New(&f.Topology); err != nil {
		return err
	}
	var servers []string
	for i := range f.DHCPServers {
		d := &f.DHCPServers[i]
		if d.Name == "" {
			d.Name = fmt.Sprintf("dhcp%d", i)
		}
		if d.Host == "" {
			d.Host = d.Name
		}
		if slices.Contains(servers, d.Name) {
			return strictyaml.Errorf(d.line, "dhcp_servers: name %q used twice", d.Name)
		}
		servers = append(servers, d.Name)
	}
	if len(f.Phases) == 0 {
		return errors.New("phases: a scenario needs at least one phase")
	}
	for i := range f.Phases {
		if err := f.Phases[i].validate(i, servers); err != nil {
			return err
		}
	}
	return nil
}

func (p *Phase) validate(i int, servers []string) error {
	where := fmt.Sprintf("phases[%d] (%s)", i, p.Name)
	if p.Name == "" {
		return strictyaml.Errorf(p.line, "phases[%d]: name missing", i)
	}
	switch p.Interceptor {
	case "":
		p.Interceptor = "preload"
	case "preload", "bpf", "none":
	default:
		return strictyaml.Errorf(p.line, "%s: interceptor %q: want preload, bpf or none", where, p.Interceptor)
	}
	for _, r := range p.Requires {
		if r != "root" {
			return strictyaml.Errorf(p.line, "%s: requires: unknown requirement %q (known: root)", where, r)
		}
	}
	switch p.Restart {
	case "":
		p.Restart = "fresh"
	case "fresh":
	case "restart", "reload":
		if i == 0 {
			return strictyaml.Errorf(p.line, "%s: restart %q: the first phase always starts a fresh daemon", where, p.Restart)
		}
	default:
		return strictyaml.Errorf(p.line, "%s: restart %q: want fresh, restart or reload", where, p.Restart)
	}
	if len(p.Sessions) == 0 {
		if p.Expect.DaemonError == "" {
			return strictyaml.Errorf(p.line, "%s: sessions: none", where)
		}
	}
	groups := map[string]bool{}
	for j := range p.Sessions {
		g := &p.Sessions[j]
		gw := fmt.Sprintf("%s sessions[%d]", where, j)
		if g.Name == "" {
			return strictyaml.Errorf(g.line, "%s: name missing", gw)
		}
		if groups[g.Name] {
			return strictyaml.Errorf(g.line, "%s: name %q used twice in the phase", gw, g.Name)
		}
		groups[g.Name] = true
		if g.Count == 0 {
			g.Count = 1
		}
		if g.Count < 0 || g.Count > 10000 {
			return strictyaml.Errorf(g.line, "%s: count %d out of range 1..10000", gw, g.Count)
		}
		if g.Host < 0 {
			return strictyaml.Errorf(g.line, "%s: host %d: farm hosts are numbered from 1 (0: round robin)", gw, g.Host)
		}
		if g.NoSession && (g.Admin || g.UID != nil) {
			return strictyaml.Errorf(g.line, "%s: no_session: a process in no session has no user; drop uid/admin", gw)
		}
		if len(g.Run) == 0 {
			return strictyaml.Errorf(g.line, "%s: run: no clients", gw)
		}
		for k := range g.Run {
			if err := g.Run[k].validate(fmt.Sprintf("%s run[%d]", gw, k)); err != nil {
				return err
			}
		}
	}
	counts := map[string]int{}
	for _, g := range p.Sessions {
		counts[g.Name] = g.Count
	}
	for j := range p.Sessions {
		for k, c := range p.Sessions[j].Run {
			_, ref, _ := ParseBind(c.Bind)
			switch {
			case ref == nil:
			case !groups[ref.Group]:
				return strictyaml.Errorf(c.line, "%s sessions[%d] run[%d]: bind %q: no session group %q in this phase", where, j, k, c.Bind, ref.Group)
			case ref.Index > counts[ref.Group]:
				// Found only when the client started, after the daemon
				// and every session before it.
				return strictyaml.Errorf(c.line, "%s sessions[%d] run[%d]: bind %q: session %d of group %q, which has %d",
					where, j, k, c.Bind, ref.Index, ref.Group, counts[ref.Group])
			}
		}
	}
	var last strictyaml.Duration
	for j := range p.Steps {
		s := &p.Steps[j]
		sw := fmt.Sprintf("%s steps[%d]", where, j)
		if _, ok := stepActions[s.Do]; !ok {
			return strictyaml.Errorf(s.line, "%s: do %q: want one of %s", sw, s.Do, strings.Join(slices.Sorted(maps.Keys(stepActions)), ", "))
		}
		if s.At < last {
			return strictyaml.Errorf(s.line, "%s: at %v is before the previous step's %v (steps run in order)", sw, s.At, last)
		}
		last = s.At
		switch s.Do {
		case "dhcp-offline", "dhcp-online":
			if !slices.Contains(servers, s.Target) {
				return strictyaml.Errorf(s.line, "%s: target %q: no such DHCP server (dhcp_servers)", sw, s.Target)
			}
		case "logoff":
			if !groups[s.Target] {
				return strictyaml.Errorf(s.line, "%s: target %q: no such session group in this phase", sw, s.Target)
			}
		case "partition", "heal", "etcd-freeze", "etcd-thaw", "etcd-kill", "etcd-start":
			want := "host"
			if strings.HasPrefix(s.Do, "etcd-") {
				want = "etcd"
			}
			if n, err := strconv.Atoi(strings.TrimPrefix(s.Target, want)); err != nil || n < 1 || !strings.HasPrefix(s.Target, want) {
				return strictyaml.Errorf(s.line, "%s: target %q: want %s1, %s2, ...", sw, s.Target, want, want)
			}
		case "wait-metric":
			if s.Metric == nil {
				return strictyaml.Errorf(s.line, "%s: wait-metric needs metric: {name, equals|min|max}", sw)
			}
			if err := s.Metric.Validate(s.line, sw); err != nil {
				return err
			}
		}
		if s.Daemon != nil && s.Do != "reload-daemon" && s.Do != "restart-daemon" {
			return strictyaml.Errorf(s.line, "%s: daemon: only reload-daemon and restart-daemon take config changes", sw)
		}
	}
	// Blocks in file order, so that the report lists outcomes as written.
	keys := slices.SortedFunc(maps.Keys(p.Expect.Blocks), func(a, b string) int {
		na, nb := p.Expect.Blocks[a], p.Expect.Blocks[b]
		return cmp.Or(cmp.Compare(na.Line, nb.Line), cmp.Compare(na.Column, nb.Column))
	})
	p.Expect.Checks = nil
	for _, key := range keys {
		spec := p.Expect.Blocks[key]
		parse, ok := check.Lookup(key)
		if !ok {
			known := append(check.Keys(), "daemon_error")
			slices.Sort(known)
			return strictyaml.Errorf(spec.Line, "%s: expect: unknown key %q (known: %s)", where, key, strings.Join(known, ", "))
		}
		c, err := parse(&spec, check.Site{Phase: where, Line: p.line, Key: key, DHCPServers: servers})
		if err != nil {
			return err
		}
		if c != nil {
			p.Expect.Checks = append(p.Expect.Checks, Expectation{Key: key, Check: c})
		}
	}
	return nil
}

func (c *Client) validate(cw string) error {
	if c.Program == "" {
		c.Program = "db-client"
	}
	if strings.ContainsAny(c.Program, "/ \t") || c.Program == "." || c.Program == ".." {
		return strictyaml.Errorf(c.line, "%s: program %q: a plain name, no slashes or spaces", cw, c.Program)
	}
	switch c.Kind {
	case "":
		c.Kind = "c"
	case "c", "go":
	default:
		return strictyaml.Errorf(c.line, "%s: kind %q: want c or go", cw, c.Kind)
	}
	if err := c.Expect.Validate(); err != nil {
		return strictyaml.Errorf(c.line, "%s: %v", cw, err)
	}
	if c.Bind != "" {
		if _, _, err := ParseBind(c.Bind); err != nil {
			return strictyaml.Errorf(c.line, "%s: bind: %v", cw, err)
		}
	}
	for _, kv := range c.Env {
		if name, _, ok := strings.Cut(kv, "="); !ok || name == "" || strings.ContainsAny(name, " \t'\"$;&|") {
			return strictyaml.Errorf(c.line, "%s: env %q: want NAME=VALUE", cw, kv)
		}
	}
	return nil
}

// BindRef is a client's `bind: "vip of GROUP[N]"`: the VIP of session
// Index (from 1) of session group Group in the same phase.
type BindRef struct {
	Group string
	Index int
}

// ParseBind reads a client's `bind:`, a literal address or a BindRef.
func ParseBind(s string) (netip.Addr, *BindRef, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return a, nil, nil
	}
	rest, ok := strings.CutPrefix(s, "vip of ")
	if !ok {
		return netip.Addr{}, nil, fmt.Errorf("%q: want an address or \"vip of GROUP[N]\"", s)
	}
	ref := &BindRef{Group: rest, Index: 1}
	if g, n, ok := strings.Cut(rest, "["); ok {
		i, err := strconv.Atoi(strings.TrimSuffix(n, "]"))
		if err != nil || i < 1 || !strings.HasSuffix(n, "]") {
			return netip.Addr{}, nil, fmt.Errorf("%q: bad session number", s)
		}
		ref.Group, ref.Index = g, i
	}
	return netip.Addr{}, ref, nil
}
