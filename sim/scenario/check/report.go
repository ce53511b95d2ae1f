package check

import (
	"context"
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"
)

// sources_match_report: true — every client not on the machine IP left from
// the VIP `ipvirtctl sessions` reports for its holder, and no VIP is
// reported twice.
func init() {
	Register("sources_match_report", func(spec *yaml.Node, at Site) (Check, error) {
		var on bool
		if err := at.Decode(spec, &on); err != nil || !on {
			return nil, err
		}
		return atEnd(matchReport), nil
	})
}

func matchReport(_ context.Context, env *Env) []Outcome {
	var bad []string
	for _, c := range env.Clients {
		if !c.Source.IsValid() || c.Source.Addr() == machineIP(env, c) {
			continue
		}
		if c.Source.Addr() != c.VIP {
			bad = append(bad, fmt.Sprintf("%s left from %s, ipvirtctl reports %s", c.Session, c.Source.Addr(), addrOrNone(c.VIP)))
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
	return []Outcome{{OK: len(bad) == 0, What: "sources equal the VIPs `ipvirtctl sessions` reports", Got: strings.Join(bad, "; ")}}
}
