package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipvirt/ipvirt/backend/wire"
	"github.com/ipvirt/ipvirt/internal/alloc"
	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/policy"
	"github.com/ipvirt/ipvirt/internal/source"
	"github.com/ipvirt/ipvirt/internal/source/etcd"
	"github.com/ipvirt/ipvirt/internal/source/static"
	"github.com/ipvirt/ipvirt/internal/store"
)

// pool is a /20: 4,094 usable addresses (size in throughput).
var pool = static.Config{Start: netip.MustParseAddr("10.90.0.1"), End: netip.MustParseAddr("10.90.15.254"),
	SubnetMask: netip.MustParseAddr("255.255.240.0")}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// throughput fills the pool twice, each time through alloc.Manager with
// its bbolt store, as ipvirtd allocates: once with three hosts whose
// source is etcd, once with one host whose source is static. Only the
// source differs, so the ratio is what sharing the pool through etcd costs
// (a create-if-absent transaction, committed by a quorum with its fsync,
// on top of the local store's own group-committed fsync).
func throughput(endpoints []string, dir string, perHost int) error {
	rng := pool.Range()
	const size = 4094
	var farm []*alloc.Manager
	for i := range 3 {
		hd := filepath.Join(dir, fmt.Sprintf("host%d", i))
		src, err := etcd.New(etcd.Config{Endpoints: endpoints, Prefix: "/bench-alloc/"}, rng,
			[]byte(fmt.Sprintf("bench-host-%d", i)), hd, nil, quiet)
		if err != nil {
			return err
		}
		defer src.Close()
		if err := waitHealthy(src, 20*time.Second); err != nil {
			return err
		}
		m, st, err := manager(src, filepath.Join(hd, "store"))
		if err != nil {
			return err
		}
		defer st.Close()
		farm = append(farm, m)
	}
	farmRate, farmGot, farmFailed, farmWhy := fill(farm, perHost, size)

	src, err := static.New(pool)
	if err != nil {
		return err
	}
	m, st, err := manager(src, filepath.Join(dir, "single", "store"))
	if err != nil {
		return err
	}
	defer st.Close()
	oneRate, oneGot, oneFailed, oneWhy := fill([]*alloc.Manager{m}, 3*perHost, size)

	fmt.Printf("allocations, single host (bbolt)  %8.0f allocs/s   baseline: static source, %d holders, %d granted, %d refused%s\n",
		oneRate, 3*perHost, oneGot, oneFailed, oneWhy)
	fmt.Printf("allocations, farm of 3 (etcd)     %8.0f allocs/s   %.2fx the single host; %d holders per host, %d granted, %d refused%s\n",
		farmRate, farmRate/oneRate, perHost, farmGot, farmFailed, farmWhy)
	return nil
}

// manager is ipvirtd's allocation core over src with a store in dir.
func manager(src source.Source, dir string) (*alloc.Manager, *store.Store, error) {
	st, err := store.Open(dir)
	if err != nil {
		return nil, nil, err
	}
	m := alloc.New(alloc.Options{Source: src, Store: st, Scanner: identity.NewResolver(identity.Audit, ""),
		Users: identity.NewUsers(time.Hour), Log: quiet},
		alloc.Settings{Policy: policy.Settings{Enabled: true, Mode: policy.PerSession}, OnExhausted: alloc.ExhaustedMachineIP, Grace: time.Second})
	return m, st, nil
}

// fill has holders callers per manager ask for a VIP each, as new
// sessions, until n have asked in all; it returns grants per second.
func fill(ms []*alloc.Manager, holders, n int) (rate float64, got, failed int64, why string) {
	var next atomic.Int64
	var mu sync.Mutex
	reasons := map[string]int{}
	var granted, refused atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for _, m := range ms {
		for range holders {
			wg.Go(func() {
				for {
					id := next.Add(1)
					if id > int64(n) {
						return
					}
					c := identity.Caller{PID: int(id), Session: lease.Session{Kind: lease.KindAudit, ID: uint32(id)}, SessionUID: 60001, Exe: "/usr/bin/psql"}
					if a := m.Query(context.Background(), c); a.Kind == wire.KindVIP {
						granted.Add(1)
					} else {
						refused.Add(1)
						mu.Lock()
						reasons[a.Reason]++
						mu.Unlock()
					}
				}
			})
		}
	}
	wg.Wait()
	top := 0
	for r, k := range reasons {
		if k > top {
			top, why = k, fmt.Sprintf(" (%d: %s)", k, r)
		}
	}
	return float64(granted.Load()) / time.Since(start).Seconds(), granted.Load(), refused.Load(), why
}

func waitHealthy(s *etcd.Source, d time.Duration) error {
	deadline := time.Now().Add(d)
	for !s.Stats().Healthy {
		if time.Now().After(deadline) {
			return fmt.Errorf("no etcd lease within %s: %s", d, s.Stats().Health)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}
