package check

import (
	"context"
	"fmt"
	"slices"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ipvirt/ipvirt/sim/scenario/strictyaml"
)

// connect_p50_below and connect_p99_below bound the median and 99th
// percentile of the clients' connect() time (the data of the runner's
// ipvirt_sim_connect_seconds histogram).
func init() {
	registerLatency("connect_p50_below", "p50", 0.50)
	registerLatency("connect_p99_below", "p99", 0.99)
}

func registerLatency(key, name string, q float64) {
	Register(key, func(spec *yaml.Node, at Site) (Check, error) {
		var limit strictyaml.Duration
		if err := at.Decode(spec, &limit); err != nil || limit == 0 {
			return nil, err
		}
		return atEnd(func(_ context.Context, env *Env) []Outcome {
			var lat []time.Duration
			for _, c := range env.Clients {
				if c.Source.IsValid() {
					lat = append(lat, c.Connect)
				}
			}
			v := percentile(lat, q)
			return []Outcome{{
				OK:   len(lat) > 0 && v < time.Duration(limit),
				What: fmt.Sprintf("connect() %s < %v [interceptor %s]", name, time.Duration(limit), env.Interceptor),
				Got:  fmt.Sprintf("%v over %d connects", v, len(lat)),
			}}
		}), nil
	})
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
