package check

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/ipvirt/ipvirt/sim/daemonproc"
	"github.com/ipvirt/ipvirt/sim/scenario/strictyaml"
)

// Metric checks the sum of an ipvirtd metric's matching samples: a phase's
// `metrics:` at its end, or a wait-metric step until it holds.
type Metric struct {
	Name   string            `yaml:"name"`
	Labels map[string]string `yaml:"labels"`
	Equals *float64          `yaml:"equals"`
	Min    *float64          `yaml:"min"`
	Max    *float64          `yaml:"max"`
}

// Validate is called when the file is loaded; line and where place the
// error.
func (m *Metric) Validate(line int, where string) error {
	if m.Name == "" || (m.Equals == nil && m.Min == nil && m.Max == nil) {
		return strictyaml.Errorf(line, "%s: each metric needs a name and equals, min or max", where)
	}
	return nil
}

// Read compares the daemon's value now with the expectation.
func (m *Metric) Read(d *daemonproc.Daemon) Outcome {
	var labels []string
	for k, v := range m.Labels {
		labels = append(labels, fmt.Sprintf("%s=%q", k, v))
	}
	sort.Strings(labels)
	name := m.Name
	if len(labels) > 0 {
		name += "{" + strings.Join(labels, ",") + "}"
	}
	got, err := d.Metric(m.Name, labels...)
	ok, what := bounds(got, m.Equals, m.Min, m.Max)
	if err != nil {
		return Outcome{What: "ipvirtd " + name + what, Got: err.Error()}
	}
	return Outcome{OK: ok, What: "ipvirtd " + name + what, Got: fmt.Sprint(got)}
}

// metrics: [{name, labels, equals|min|max}] — ipvirtd's metric values at
// the end of the phase.
func init() {
	Register("metrics", func(spec *yaml.Node, at Site) (Check, error) {
		var ms []Metric
		if err := at.Decode(spec, &ms); err != nil {
			return nil, err
		}
		for i := range ms {
			if err := ms[i].Validate(at.Line, at.Phase+" expect.metrics"); err != nil {
				return nil, err
			}
		}
		return atEnd(func(_ context.Context, env *Env) []Outcome {
			var out []Outcome
			for i := range ms {
				out = append(out, ms[i].Read(env.Daemon))
			}
			return out
		}), nil
	})
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
