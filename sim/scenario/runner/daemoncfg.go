package runner

import (
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/ipvirt/ipvirt/sim/loginsession"
	"github.com/ipvirt/ipvirt/sim/scenario"
)

// daemonConfig is the file's daemon section, the phase's overrides on top,
// then what the simulator decides: adapter, identity, interceptor,
// programs, administrators, where the DHCP server is.
func (r *fileRun) daemonConfig(p *scenario.Phase, paths map[string]string) (map[string]any, error) {
	cfg := merge(merge(map[string]any{}, r.f.Daemon), p.Daemon)
	if _, ok := cfg["adapter"]; !ok {
		cfg["adapter"] = r.topo.Adapter()
	}
	if r.kind == loginsession.POSIX {
		cfg["session_identity"] = "posix"
	}
	if _, ok := cfg["scope"]; !ok && r.group != nil {
		cfg["scope"] = r.group.Path
	}
	if p.Interceptor == "bpf" {
		if _, ok := cfg["interceptor"]; !ok {
			cfg["interceptor"] = "bpf"
		}
	}
	if len(p.Programs) > 0 {
		var list []string
		for _, name := range p.Programs {
			list = append(list, paths[name])
		}
		cfg["programs"] = list
	}
	for gi, g := range p.Sessions {
		if !g.Admin {
			continue
		}
		if r.kind != loginsession.Audit {
			return nil, fmt.Errorf("sessions %s: admin needs audit sessions (run as root): a POSIX session's user is the simulator's own", g.Name)
		}
		admins, _ := cfg["admins"].(map[string]any)
		admins = merge(map[string]any{}, admins)
		users, _ := admins["users"].([]any)
		users = append([]any(nil), users...)
		for i := 0; i < g.Count; i++ {
			users = append(users, fmt.Sprint(r.uidOf(p, gi, i)))
		}
		admins["users"] = users
		cfg["admins"] = admins
	}
	r.dhcpDaemonKeys(cfg)
	r.farmDaemonKeys(cfg, p)
	return cfg, nil
}

// uidOf is the login uid of session i of group gi: the group's uid, else
// one ordinary user per session numbered from defaultUID in file order.
func (r *fileRun) uidOf(p *scenario.Phase, gi, i int) uint32 {
	if u := p.Sessions[gi].UID; u != nil {
		return *u
	}
	n := 0
	for j := 0; j < gi; j++ {
		n += p.Sessions[j].Count
	}
	return uint32(defaultUID + n + i)
}

func marshalConfig(cfg map[string]any) (string, error) {
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return "", fmt.Errorf("daemon config: %w", err)
	}
	return string(b), nil
}

// merge lays src over dst, recursing into maps so that a phase can change
// one key of static_pool without restating the others.
func merge(dst, src map[string]any) map[string]any {
	for k, v := range src {
		if sm, ok := v.(map[string]any); ok {
			if dm, ok := dst[k].(map[string]any); ok {
				dst[k] = merge(merge(map[string]any{}, dm), sm)
				continue
			}
		}
		dst[k] = v
	}
	return dst
}

// installPrograms copies the client binaries under the names the phase
// uses, and names listed in programs: that no client runs.
func (r *fileRun) installPrograms(p *scenario.Phase, dir string) (map[string]string, error) {
	paths := map[string]string{}
	add := func(name, kind string) error {
		if _, ok := paths[name]; ok {
			return nil
		}
		src := r.bins.DBClient
		if kind == "go" {
			src = r.bins.Sim
		}
		dst, err := install(src, dir, name)
		paths[name] = dst
		return err
	}
	for _, g := range p.Sessions {
		for _, c := range g.Run {
			if err := add(c.Program, c.Kind); err != nil {
				return nil, err
			}
		}
	}
	for _, name := range p.Programs {
		if err := add(name, "c"); err != nil {
			return nil, err
		}
	}
	return paths, nil
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
