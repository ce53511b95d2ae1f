package check

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/ipvirt/ipvirt/sim/scenario/strictyaml"
)

// dhcpExpect checks a counter of a synthetic DHCP server (server "all":
// the sum over every server): leases (held now) or one of
// sim/dhcpserver's counters (discovers, offers, requests, acks, renewals,
// naks, releases, declines, drops, ignored, no_free, ...).
type dhcpExpect struct {
	Server  string   `yaml:"server"`
	Counter string   `yaml:"counter"`
	Equals  *float64 `yaml:"equals"`
	Min     *float64 `yaml:"min"`
	Max     *float64 `yaml:"max"`
}

// dhcp: [{server, counter, equals|min|max}] — the synthetic servers'
// counters at the end of the phase.
func init() {
	Register("dhcp", func(spec *yaml.Node, at Site) (Check, error) {
		var ds []dhcpExpect
		if err := at.Decode(spec, &ds); err != nil {
			return nil, err
		}
		for _, d := range ds {
			if !slices.Contains(at.DHCPServers, d.Server) && d.Server != "all" {
				return nil, strictyaml.Errorf(at.Line, "%s: expect.dhcp: server %q: no such DHCP server (dhcp_servers)", at.Phase, d.Server)
			}
			if d.Counter == "" || (d.Equals == nil && d.Min == nil && d.Max == nil) {
				return nil, strictyaml.Errorf(at.Line, "%s: expect.dhcp: each needs a counter and equals, min or max", at.Phase)
			}
		}
		return atEnd(func(ctx context.Context, env *Env) []Outcome {
			var out []Outcome
			for _, d := range ds {
				out = append(out, d.read(ctx, env.DHCP))
			}
			return out
		}), nil
	})
}

func (d dhcpExpect) read(ctx context.Context, servers []DHCPServer) Outcome {
	_, what := bounds(0, d.Equals, d.Min, d.Max)
	what = fmt.Sprintf("DHCP server %s %s%s", d.Server, d.Counter, what)
	v := 0
	for _, s := range servers {
		if d.Server != "all" && s.Name() != d.Server {
			continue
		}
		counters, leases, err := s.Counters(ctx)
		if err != nil {
			return Outcome{What: what, Got: err.Error()}
		}
		n, found := counter(d.Counter, counters, leases)
		if !found {
			return Outcome{What: what, Got: fmt.Sprintf("no counter %q (have leases, %s)", d.Counter, strings.ToLower(strings.Join(slices.Sorted(maps.Keys(counters)), ", ")))}
		}
		v += n
	}
	ok, _ := bounds(float64(v), d.Equals, d.Min, d.Max)
	return Outcome{OK: ok, What: what, Got: fmt.Sprint(v)}
}

// counter finds a counter by its name in any case and with or without
// underscores (no_free, NoFree), or "leases": the number held.
func counter(name string, counters map[string]int, leases int) (int, bool) {
	if strings.EqualFold(name, "leases") {
		return leases, true
	}
	for k, v := range counters {
		if strings.EqualFold(k, name) || strings.EqualFold(k, strings.ReplaceAll(name, "_", "")) {
			return v, true
		}
	}
	return 0, false
}
