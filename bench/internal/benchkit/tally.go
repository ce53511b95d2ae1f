package benchkit

import (
	"maps"
	"net/netip"
	"sync"
	"time"
)

// tally counts what a listener received (connections, datagrams) by the
// source address it saw, for its Take.
type tally struct {
	mu    sync.Mutex
	peers map[netip.Addr]int
	total int
	last  time.Time // when the last one came
}

func (t *tally) add(from netip.Addr) {
	t.mu.Lock()
	if t.peers == nil {
		t.peers = map[netip.Addr]int{}
	}
	t.peers[from]++
	t.total++
	t.last = time.Now()
	t.mu.Unlock()
}

// take returns the count since the last take, by source, once there are at
// least want, or timeout has passed, or (quiet > 0) none has come for quiet;
// and starts a new count.
func (t *tally) take(want int, timeout, quiet time.Duration) map[netip.Addr]int {
	deadline := time.Now().Add(timeout)
	for {
		t.mu.Lock()
		now := time.Now()
		if t.total >= want || now.After(deadline) || (quiet > 0 && t.total > 0 && now.Sub(t.last) > quiet) {
			got := maps.Clone(t.peers)
			if got == nil {
				got = map[netip.Addr]int{}
			}
			clear(t.peers)
			t.total = 0
			t.mu.Unlock()
			return got
		}
		t.mu.Unlock()
		time.Sleep(2 * time.Millisecond)
	}
}
