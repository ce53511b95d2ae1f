package check

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/ipvirt/ipvirt/sim/scenario/topo"
	"github.com/ipvirt/ipvirt/sim/wirecheck"
)

// oneHostOnWire is the wire's view of a farm's promise. Each session host's
// uses of an address (IP packets from it, ARP with it as sender) span from
// its first such frame to its last; two hosts' spans of one address must
// not overlap. An address may move from host to host (released by one,
// taken by another later), but never be on the wire from both in between.
func (w *wireRun) oneHostOnWire() Outcome {
	const what = "wire: no address is used by two session hosts at once"
	f, ok := w.env.Topology.(topo.Farm)
	if !ok {
		return Outcome{What: what, Got: "not a farm (topology kind farm)"}
	}
	hostOfMAC := map[string]string{}
	for _, h := range f.SessionHosts() {
		hostOfMAC[f.MAC(h).String()] = h
	}
	type span struct{ from, to time.Time }
	spans := map[netip.Addr]map[string]*span{}
	checked := 0
	for _, u := range wirecheck.Uses(w.frames) {
		h, ok := hostOfMAC[u.EthSrc.String()]
		if !ok {
			continue // the server's, an etcd member's
		}
		checked++
		byHost := spans[u.Addr]
		if byHost == nil {
			byHost = map[string]*span{}
			spans[u.Addr] = byHost
		}
		if s := byHost[h]; s != nil {
			s.to = u.At
		} else {
			byHost[h] = &span{u.At, u.At}
		}
	}
	var problems []string
	for _, a := range slices.SortedFunc(maps.Keys(spans), netip.Addr.Compare) {
		hosts := slices.Sorted(maps.Keys(spans[a]))
		for i, x := range hosts {
			for _, y := range hosts[i+1:] {
				sx, sy := spans[a][x], spans[a][y]
				if !sx.from.After(sy.to) && !sy.from.After(sx.to) {
					problems = append(problems, fmt.Sprintf("%s from %s (%s..%s) and %s (%s..%s)", a,
						x, sx.from.Format("15:04:05.000"), sx.to.Format("15:04:05.000"),
						y, sy.from.Format("15:04:05.000"), sy.to.Format("15:04:05.000")))
				}
			}
		}
	}
	return verdict(fmt.Sprintf("%s (%d frames, %d addresses)", what, checked, len(spans)), checked, problems)
}
