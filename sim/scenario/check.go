package scenario

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"
)

// check evaluates the phase's expectations, client by client then phase-wide.
func (r *runner) check(ctx context.Context, p *Phase, env *PhaseEnv) []Outcome {
	var out []Outcome
	add := func(ok bool, what, got string) { out = append(out, Outcome{OK: ok, What: what, Got: got}) }
	mip := r.topo.MachineIP()

	// Client expectations, one outcome per client entry of a group.
	type entry struct {
		group string
		spec  *Client
	}
	var order []entry
	byEntry := map[*Client][]*ClientResult{}
	for _, c := range env.Clients {
		if _, ok := byEntry[c.Spec]; !ok {
			order = append(order, entry{c.Session.group.Name, c.Spec})
		}
		byEntry[c.Spec] = append(byEntry[c.Spec], c)
	}
	for _, e := range order {
		cs := byEntry[e.spec]
		x := e.spec.Expect
		if x.Source != "" {
			var bad []string
			for _, c := range cs {
				if !sourceIs(c, x.Source, mip) {
					bad = append(bad, fmt.Sprintf("%s left from %s (VIP reported: %s)", c.Session.label, addrOrNone(c.Source), addrOrNone(c.VIP)))
				}
			}
			add(len(bad) == 0, fmt.Sprintf("%s/%s leaves from %s", e.group, e.spec.Program, sourceWords(x.Source)), strings.Join(bad, "; "))
		}
		if x.Verdict != "" {
			var bad []string
			for _, c := range cs {
				if c.Verdict != x.Verdict {
					bad = append(bad, fmt.Sprintf("%s: %s", c.Session.label, c.Verdict))
				}
			}
			add(len(bad) == 0, fmt.Sprintf("%s/%s is %s", e.group, e.spec.Program, x.Verdict), strings.Join(bad, "; "))
		}
		if x.Errno != "" {
			var bad []string
			for _, c := range cs {
				if c.Errno != x.Errno {
					bad = append(bad, fmt.Sprintf("%s: errno %s", c.Session.label, orDash(c.Errno)))
				}
			}
			add(len(bad) == 0, fmt.Sprintf("%s/%s fails with %s", e.group, e.spec.Program, x.Errno), strings.Join(bad, "; "))
		}
	}

	x := p.Expect
	count := func(verdict string) int {
		n := 0
		for _, c := range env.Clients {
			if c.Verdict == verdict {
				n++
			}
		}
		return n
	}
	for _, v := range []struct {
		name string
		want *int
	}{{"accepted", x.Accepted}, {"refused", x.Refused}, {"denied", x.Denied}} {
		if v.want != nil {
			got := count(v.name)
			add(got == *v.want, fmt.Sprintf("%s by the server = %d", v.name, *v.want), fmt.Sprint(got))
		}
	}
	if x.Denied != nil {
		// "denied by the server" reads wrong: denied is the client's connect.
		out[len(out)-1].What = fmt.Sprintf("denied (connect failed) = %d", *x.Denied)
	}
	if x.DistinctSources != nil {
		set := map[netip.Addr]bool{}
		for _, c := range env.Clients {
			if c.Source.IsValid() {
				set[c.Source.Addr()] = true
			}
		}
		add(len(set) == *x.DistinctSources, fmt.Sprintf("distinct source addresses = %d", *x.DistinctSources), fmt.Sprint(len(set)))
	}
	if x.SourcesMatchReport {
		out = append(out, matchReport(env, mip))
	}
	if x.ConnectP99Below > 0 {
		var d []time.Duration
		for _, c := range env.Clients {
			if c.Source.IsValid() {
				d = append(d, c.Connect)
			}
		}
		p99 := percentile(d, 0.99)
		add(len(d) > 0 && p99 < time.Duration(x.ConnectP99Below), fmt.Sprintf("connect() p99 < %v", time.Duration(x.ConnectP99Below)), p99.String())
	}
	for _, m := range x.Metrics {
		out = append(out, metricOutcome(env, m))
	}
	names := make([]string, 0, len(x.Extra))
	for name := range x.Extra {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		spec := x.Extra[name]
		regMu.Lock()
		c := checks[name]
		regMu.Unlock()
		out = append(out, c(ctx, env, &spec)...)
	}
	return out
}

func sourceIs(c *ClientResult, want string, mip netip.Addr) bool {
	switch want {
	case "vip":
		return c.Source.IsValid() && c.VIP.IsValid() && c.Source.Addr() == c.VIP && c.VIP != mip
	case "mip":
		return c.Source.IsValid() && c.Source.Addr() == mip
	case "none":
		return !c.Source.IsValid()
	}
	return false
}

func sourceWords(s string) string {
	switch s {
	case "vip":
		return "its own VIP"
	case "mip":
		return "the machine IP"
	}
	return "nowhere (no connection)"
}

// matchReport: every client not on the machine IP left from the VIP the
// report gives its holder, and no VIP appears twice in the report.
func matchReport(env *PhaseEnv, mip netip.Addr) Outcome {
	var bad []string
	for _, c := range env.Clients {
		if !c.Source.IsValid() || c.Source.Addr() == mip {
			continue
		}
		if c.Source.Addr() != c.VIP {
			bad = append(bad, fmt.Sprintf("%s left from %s, ipvirtctl reports %s", c.Session.label, c.Source.Addr(), addrOrNone(c.VIP)))
		}
	}
	seen := map[string]string{}
	for _, row := range env.Report {
		vips := []string{row.VIP}
		for _, p := range row.Programs {
			vips = append(vips, p.VIP)
		}
		for _, v := range vips {
			if v == "" {
				continue
			}
			if other, ok := seen[v]; ok && other != row.Session {
				bad = append(bad, fmt.Sprintf("VIP %s reported for %s and %s", v, other, row.Session))
			}
			seen[v] = row.Session
		}
	}
	return Outcome{OK: len(bad) == 0, What: "sources equal the VIPs `ipvirtctl sessions` reports", Got: strings.Join(bad, "; ")}
}

func metricOutcome(env *PhaseEnv, m MetricExpect) Outcome {
	var labels, shown []string
	for k, v := range m.Labels {
		labels = append(labels, fmt.Sprintf("%s=%q", k, v))
	}
	sort.Strings(labels)
	shown = append(shown, labels...)
	name := m.Name
	if len(shown) > 0 {
		name += "{" + strings.Join(shown, ",") + "}"
	}
	got, err := env.Daemon.Metric(m.Name, labels...)
	if err != nil {
		return Outcome{What: "metric " + name, Got: err.Error()}
	}
	if m.Equals != nil {
		return Outcome{OK: got == *m.Equals, What: fmt.Sprintf("ipvirtd %s = %g", name, *m.Equals), Got: fmt.Sprint(got)}
	}
	return Outcome{OK: got >= *m.Min, What: fmt.Sprintf("ipvirtd %s >= %g", name, *m.Min), Got: fmt.Sprint(got)}
}

func percentile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

func addrOrNone[T interface {
	IsValid() bool
	String() string
}](a T) string {
	if !a.IsValid() {
		return "none"
	}
	return a.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
