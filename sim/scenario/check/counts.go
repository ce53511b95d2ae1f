package check

import (
	"context"
	"fmt"
	"net/netip"

	"go.yaml.in/yaml/v3"
)

// Counts of what the database server decided are its own view (what
// accept() saw), not what the clients claim:
//
//	accepted: N, refused: N, distinct_sources: N   the server's
//	denied: N                                      clients whose connect() failed with EACCES or EPERM
func init() {
	registerCount("accepted", "accepted by the server", func(env *Env) int {
		n := 0
		for _, c := range env.Server {
			if c.Accepted {
				n++
			}
		}
		return n
	})
	registerCount("refused", "refused by the server", func(env *Env) int {
		n := 0
		for _, c := range env.Server {
			if !c.Accepted {
				n++
			}
		}
		return n
	})
	registerCount("denied", "denied (connect failed with EACCES/EPERM)", func(env *Env) int {
		n := 0
		for _, c := range env.Clients {
			if c.Verdict == "denied" {
				n++
			}
		}
		return n
	})
	registerCount("distinct_sources", "distinct source addresses the server saw", func(env *Env) int {
		srcs := map[netip.Addr]bool{}
		for _, c := range env.Server {
			srcs[c.Source.Addr()] = true
		}
		return len(srcs)
	})
}

func registerCount(key, what string, count func(*Env) int) {
	Register(key, func(spec *yaml.Node, at Site) (Check, error) {
		var want *int
		if err := at.Decode(spec, &want); err != nil || want == nil {
			return nil, err
		}
		return atEnd(func(_ context.Context, env *Env) []Outcome {
			got := count(env)
			return []Outcome{{OK: got == *want, What: fmt.Sprintf("%s = %d", what, *want), Got: fmt.Sprint(got)}}
		}), nil
	})
}
