package alloc

import (
	"maps"
	"sync"

	"github.com/ipvirt/ipvirt/backend/wire"
	"github.com/ipvirt/ipvirt/internal/policy"
)

// Counters are the manager's running totals, read by the metrics collector.
type Counters struct {
	mu       sync.Mutex
	results  map[wire.Kind]uint64
	rules    map[policy.Rule]uint64
	releases map[string]uint64
}

// CounterSnapshot is a copy of the counters at one moment.
type CounterSnapshot struct {
	// Results counts answers by kind (vip, mip, denied).
	Results map[wire.Kind]uint64
	// Rules counts answers by the rule that decided them.
	Rules map[policy.Rule]uint64
	// Releases counts released leases by reason.
	Releases map[string]uint64
}

func (c *Counters) count(k wire.Kind, r policy.Rule) {
	c.mu.Lock()
	if c.results == nil {
		c.results, c.rules = map[wire.Kind]uint64{}, map[policy.Rule]uint64{}
	}
	c.results[k]++
	c.rules[r]++
	c.mu.Unlock()
}

func (c *Counters) released(why string) {
	c.mu.Lock()
	if c.releases == nil {
		c.releases = map[string]uint64{}
	}
	c.releases[why]++
	c.mu.Unlock()
}

// Counters returns a snapshot of the running totals.
func (m *Manager) Counters() CounterSnapshot {
	c := &m.counters
	c.mu.Lock()
	defer c.mu.Unlock()
	return CounterSnapshot{Results: maps.Clone(c.results), Rules: maps.Clone(c.rules), Releases: maps.Clone(c.releases)}
}
