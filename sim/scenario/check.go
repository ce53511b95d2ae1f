package scenario

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ipvirt/ipvirt/sim/daemonproc"
	"github.com/ipvirt/ipvirt/sim/scenario/strictyaml"
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
					bad = append(bad, fmt.Sprintf("%s left from %s (VIP reported: %s)%s", c.Session.label, addrOrNone(c.Source), addrOrNone(c.VIP), c.why()))
				}
			}
			add(len(bad) == 0, fmt.Sprintf("%s/%s leaves from %s", e.group, e.spec.Program, sourceWords(x.Source)), strings.Join(bad, "; "))
		}
		if x.Verdict != "" {
			var bad []string
			for _, c := range cs {
				if c.Verdict != x.Verdict {
					bad = append(bad, fmt.Sprintf("%s: %s%s", c.Session.label, c.Verdict, c.why()))
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
	// Accepted, refused and distinct sources are the server's own view
	// (what accept() saw), not what the clients claim.
	var acc, ref int
	srcs := map[netip.Addr]bool{}
	for _, c := range env.Server {
		if c.Accepted {
			acc++
		} else {
			ref++
		}
		srcs[c.Source.Addr()] = true
	}
	if x.Accepted != nil {
		add(acc == *x.Accepted, fmt.Sprintf("accepted by the server = %d", *x.Accepted), fmt.Sprint(acc))
	}
	if x.Refused != nil {
		add(ref == *x.Refused, fmt.Sprintf("refused by the server = %d", *x.Refused), fmt.Sprint(ref))
	}
	if x.Denied != nil {
		n := 0
		for _, c := range env.Clients {
			if c.Verdict == "denied" {
				n++
			}
		}
		add(n == *x.Denied, fmt.Sprintf("denied (connect failed with EACCES/EPERM) = %d", *x.Denied), fmt.Sprint(n))
	}
	if x.DistinctSources != nil {
		add(len(srcs) == *x.DistinctSources, fmt.Sprintf("distinct source addresses the server saw = %d", *x.DistinctSources), fmt.Sprint(len(srcs)))
	}
	if x.SourcesMatchReport {
		out = append(out, matchReport(env, mip))
	}
	var lat []time.Duration
	for _, c := range env.Clients {
		if c.Source.IsValid() {
			lat = append(lat, c.Connect)
		}
	}
	for _, q := range []struct {
		name  string
		q     float64
		limit strictyaml.Duration
	}{{"p50", 0.50, x.ConnectP50Below}, {"p99", 0.99, x.ConnectP99Below}} {
		if q.limit > 0 {
			v := percentile(lat, q.q)
			got := fmt.Sprintf("%v over %d connects", v, len(lat))
			add(len(lat) > 0 && v < time.Duration(q.limit), fmt.Sprintf("connect() %s < %v [interceptor %s]", q.name, time.Duration(q.limit), p.Interceptor), got)
		}
	}
	for _, m := range x.Metrics {
		out = append(out, metricOutcome(env.Daemon, m))
	}
	for _, d := range x.DHCP {
		out = append(out, r.dhcpOutcome(ctx, d))
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

func metricOutcome(d *daemonproc.Daemon, m MetricExpect) Outcome {
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
	got, err := d.Metric(m.Name, labels...)
	ok, what := bounds(got, m.Equals, m.Min, m.Max)
	if err != nil {
		return Outcome{What: "ipvirtd " + name + what, Got: err.Error()}
	}
	return Outcome{OK: ok, What: "ipvirtd " + name + what, Got: fmt.Sprint(got)}
}

// bounds checks v against equals/min/max and words the expectation.
func bounds(v float64, equals, lo, hi *float64) (bool, string) {
	ok, what := true, ""
	if equals != nil {
		ok = ok && v == *equals
		what += fmt.Sprintf(" = %g", *equals)
	}
	if lo != nil {
		ok = ok && v >= *lo
		what += fmt.Sprintf(" >= %g", *lo)
	}
	if hi != nil {
		ok = ok && v <= *hi
		what += fmt.Sprintf(" <= %g", *hi)
	}
	return ok, what
}

// dhcpOutcome checks a synthetic DHCP server's counter (or lease count).
func (r *runner) dhcpOutcome(ctx context.Context, d DHCPExpect) Outcome {
	ok, what := bounds(0, d.Equals, d.Min, d.Max)
	what = fmt.Sprintf("DHCP server %s %s%s", d.Server, d.Counter, what)
	procs := r.dhcp
	if d.Server != "all" {
		procs = []*dhcpProc{r.dhcpByName(d.Server)}
	}
	v := 0
	for _, p := range procs {
		st, err := p.Status(ctx)
		if err != nil {
			return Outcome{What: what, Got: err.Error()}
		}
		n, found := st.counter(d.Counter)
		if !found {
			return Outcome{What: what, Got: fmt.Sprintf("no counter %q (have leases, %s)", d.Counter, strings.ToLower(strings.Join(slices.Sorted(maps.Keys(st.Counters)), ", ")))}
		}
		v += n
	}
	ok, _ = bounds(float64(v), d.Equals, d.Min, d.Max)
	return Outcome{OK: ok, What: what, Got: fmt.Sprint(v)}
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

var (
	regMu  sync.Mutex
	checks = map[string]Check{}
)

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
