package check

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// one_host_per_address: true is the farm's promise as the database server
// saw it: no source address was used by two hosts at the same instant (a
// connection it refused counts: its source was in use as it arrived). A connection's host is the host of the client that made
// it (matched by source address and port); one still open at the end of
// the phase counts as open until then. The machine IPs are left out: each
// is its own host's.
func init() {
	Register("one_host_per_address", func(spec *yaml.Node, at Site) (Check, error) {
		var on bool
		if err := at.Decode(spec, &on); err != nil || !on {
			return nil, err
		}
		return atEnd(oneHostPerAddress), nil
	})
}

// span is one connection (a refused one too: its source was in use): its host and when it was open.
type span struct {
	host     string
	from, to time.Time
}

func oneHostPerAddress(_ context.Context, env *Env) []Outcome {
	hostOf := map[netip.AddrPort]string{}
	for _, c := range env.Clients {
		if c.Source.IsValid() {
			hostOf[c.Source] = c.Host
		}
	}
	end := time.Now()
	byAddr := map[netip.Addr][]span{}
	hosts := map[string]bool{}
	unknown := 0
	for _, s := range env.Server {
		h, ok := hostOf[s.Source]
		if !ok {
			unknown++ // a client that died before reporting: no host to blame
			continue
		}
		hosts[h] = true
		to := s.Closed
		switch {
		case !s.Accepted:
			to = s.At // refused at once: an instant, but one it was used at
		case to.IsZero():
			to = end
		}
		byAddr[s.Source.Addr()] = append(byAddr[s.Source.Addr()], span{h, s.At, to})
	}
	var bad []string
	for _, a := range slices.SortedFunc(maps.Keys(byAddr), netip.Addr.Compare) {
		ss := byAddr[a]
		for i := range ss {
			for j := i + 1; j < len(ss); j++ {
				x, y := ss[i], ss[j]
				if x.host != y.host && !x.from.After(y.to) && !y.from.After(x.to) {
					bad = append(bad, fmt.Sprintf("%s from %s and %s at once", a, x.host, y.host))
				}
			}
		}
	}
	// The counts are in the line itself: a farm whose sessions all ran on
	// one host would pass vacuously, and the report should show it.
	what := fmt.Sprintf("the database server never saw one address from two hosts at once (%d addresses from %d hosts", len(byAddr), len(hosts))
	if unknown > 0 {
		what += fmt.Sprintf("; %d connections of clients that never reported", unknown)
	}
	return []Outcome{{OK: len(bad) == 0, What: what + ")", Got: strings.Join(bad, "; ")}}
}
