package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/ipvirt/ipvirt/bench/internal/benchkit"
	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/source/etcd"
	"github.com/ipvirt/ipvirt/internal/testenv"
)

// vips is how many VIPs the partitioned host holds.
const vips = 16

// lost records when the source withdrew each VIP.
type lost struct {
	mu   sync.Mutex
	last time.Time
	n    int
}

func (l *lost) Renewed(lease.Lease) {}
func (l *lost) Lost(lease.Holder, netip.Addr, error) {
	l.mu.Lock()
	l.n++
	l.last = time.Now()
	l.mu.Unlock()
}

func (l *lost) reset() {
	l.mu.Lock()
	l.n, l.last = 0, time.Time{}
	l.mu.Unlock()
}

func (l *lost) all() (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last, l.n >= vips
}

// partitions cuts one host from every member (a Link per endpoint) runs
// times and measures, each time, the cut to its last VIP withdrawn, and
// the links' return to the host serving and to holder 0 having its VIP
// back. The cut comes at a random point of the renewal rhythm (ttl/3).
func partitions(endpoints []string, dir string, ttl time.Duration, runs int) error {
	var links []*testenv.Link
	var eps []string
	for _, e := range endpoints {
		l, err := testenv.NewLink(e)
		if err != nil {
			return err
		}
		defer l.Close()
		links, eps = append(links, l), append(eps, l.Endpoint)
	}
	ev := &lost{}
	prefix := fmt.Sprintf("/bench-partition-%s/", ttl)
	src, err := etcd.New(etcd.Config{Endpoints: eps, Prefix: prefix, LeaseTTL: ttl, DialTimeout: time.Second},
		pool.Range(), []byte("bench-partitioned"), filepath.Join(dir, "partitioned-"+ttl.String()), ev, quiet)
	if err != nil {
		return err
	}
	defer src.Close()
	if err := waitHealthy(src, 20*time.Second); err != nil {
		return err
	}
	holder := func(i int) lease.Holder {
		return lease.Holder{Session: lease.Session{Kind: lease.KindAudit, ID: uint32(i + 1)}}
	}
	var first netip.Addr
	for i := range vips {
		l, err := src.Acquire(context.Background(), holder(i))
		if err != nil {
			return fmt.Errorf("acquire before the partition: %w", err)
		}
		if i == 0 {
			first = l.Addr
		}
	}
	var withdraw, serve, back []float64
	for r := range runs {
		ev.reset()
		time.Sleep(rand.N(ttl / 3))
		cut := time.Now()
		for _, l := range links {
			l.Partition(true)
		}
		at, err := waitFor(2*ttl, func() (time.Time, bool) { return ev.all() })
		if err != nil {
			return fmt.Errorf("ttl %s run %d: withdrawal: %w", ttl, r, err)
		}
		withdraw = append(withdraw, at.Sub(cut).Seconds())
		restored := time.Now()
		for _, l := range links {
			l.Partition(false)
		}
		at, err = waitFor(30*time.Second, func() (time.Time, bool) { return time.Now(), src.Stats().Healthy })
		if err != nil {
			return fmt.Errorf("ttl %s run %d: serving again: %w", ttl, r, err)
		}
		serve = append(serve, at.Sub(restored).Seconds())
		// As a session's next connect would, holder 0 asks again while
		// its first requests time out on a cluster still catching up.
		var l lease.Lease
		if _, err = waitFor(10*time.Second, func() (time.Time, bool) {
			l, err = src.Acquire(context.Background(), holder(0))
			return time.Time{}, err == nil
		}); err != nil {
			return fmt.Errorf("ttl %s run %d: holder 0 after the return: %w", ttl, r, err)
		}
		if l.Addr != first {
			return fmt.Errorf("ttl %s run %d: holder 0 got %s, had %s", ttl, r, l.Addr, first)
		}
		back = append(back, time.Since(restored).Seconds())
		// The others take theirs back for the next run.
		for i := 1; i < vips; i++ {
			if _, err := waitFor(10*time.Second, func() (time.Time, bool) {
				_, err := src.Acquire(context.Background(), holder(i))
				return time.Time{}, err == nil
			}); err != nil {
				return fmt.Errorf("ttl %s run %d: holder %d after the return: %w", ttl, r, i, err)
			}
		}
	}
	m := etcd.Margin(ttl)
	fmt.Printf("lease_ttl %-4s partition -> all %d VIPs withdrawn  %s   bound < %s (cluster may expire); expected %s..%s (ttl - margin - renewal phase; earlier if a renewal failed before the cut)\n",
		ttl, vips, spread(withdraw), ttl, (ttl - m - ttl/3).Round(100*time.Millisecond), ttl-m)
	fmt.Printf("lease_ttl %-4s etcd back -> host serving          %s   baseline: a renewal attempt every 0.5 s\n", ttl, spread(serve))
	fmt.Printf("lease_ttl %-4s etcd back -> holder has its VIP    %s\n", ttl, spread(back))
	return nil
}

// spread is min/median/max in seconds.
func spread(v []float64) string {
	return fmt.Sprintf("min %5.2f s  median %5.2f s  max %5.2f s (%d runs)", benchkit.Min(v), benchkit.Median(v), slices.Max(v), len(v))
}

func waitFor(d time.Duration, cond func() (time.Time, bool)) (time.Time, error) {
	deadline := time.Now().Add(d)
	for {
		if at, ok := cond(); ok {
			return at, nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("not within %s", d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
