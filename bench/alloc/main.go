// Command alloc measures the allocation service: the cached decision path,
// durable allocation throughput against the disk's own fsync rate, the
// control-socket round trip, and resident memory with 65,536 live leases.
// Every figure is printed beside the baseline measured in the same run.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/backend/wire"
	"github.com/ipvirt/ipvirt/internal/daemon"
	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/sim/daemonproc"
)

const poolSize = 65536

func main() {
	workers := flag.Int("workers", 256, "concurrent callers for the allocation run")
	dir := flag.String("dir", "", "directory for the lease store (default: a temporary one; put it on the disk you care about)")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: alloc [--workers N] [--dir DIR]\n\nMeasures ipvirtd's allocation path and prints each figure beside its baseline.\n\nOptions:\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	base := *dir
	if base == "" {
		var err error
		if base, err = os.MkdirTemp("", "ipvirt-bench-"); err != nil {
			fatal(err)
		}
		defer os.RemoveAll(base)
	}
	fmt.Printf("ipvirt allocation benchmark (%d CPUs, store in %s)\n\n", runtime.NumCPU(), base)

	d := newDaemon(filepath.Join(base, "core"))
	m := d.Manager()

	// Cached decision path: a known holder asking again.
	c := caller(1)
	m.Query(context.Background(), c)
	cached := testing.Benchmark(func(b *testing.B) {
		for b.Loop() {
			m.Query(context.Background(), c)
		}
	})
	fmt.Printf("cached decision (known holder):      %8.0f ns/op   target < 2000 ns\n", float64(cached.NsPerOp()))

	// Baseline: how many fsyncs per second this disk does; one fsync per
	// allocation would cap throughput there.
	fsyncs := fsyncRate(base, 2*time.Second)
	fmt.Printf("fsync baseline (one writer):         %8.0f fsyncs/s\n", fsyncs)

	// Durable allocation: 65,535 fresh VIPs (holder 1 has one already).
	start := time.Now()
	var next atomic.Uint32
	next.Store(1)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range *workers {
		wg.Go(func() {
			for {
				id := next.Add(1)
				if id > poolSize {
					return
				}
				if a := m.Query(context.Background(), caller(id)); a.Kind != wire.KindVIP {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	rate := float64(poolSize-1) / elapsed.Seconds()
	st := d.Status()
	fmt.Printf("durable allocations (%d callers):   %8.0f allocs/s   target >= 50000; %.1fx the fsync rate (%d leases, %d failed)\n",
		*workers, rate, rate/fsyncs, st.Leases, failed.Load())

	// Steady state: the burst's garbage collected and its pages returned, as
	// the runtime's scavenger does within minutes in a running daemon.
	debug.FreeOSMemory()
	rss := vmRSS()
	fmt.Printf("resident memory, %d live leases: %8.1f MiB     target < 64 MiB (Go heap in use %.1f MiB)\n",
		d.Status().Leases, float64(rss)/(1<<20), heapMiB())

	roundTrip(base)
	runtime.KeepAlive(d)
}

func newDaemon(dir string) *daemon.Daemon {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		fatal(err)
	}
	cfg := filepath.Join(dir, "ipvirt.yaml")
	// A /15 mask so that 127.80.0.1-127.81.0.0 is 65,536 usable addresses.
	body := fmt.Sprintf("adapter: lo\nsource: static\nstatic_pool: {start: 127.80.0.1, end: 127.81.0.0, subnet_mask: 255.254.0.0}\n"+
		"state_dir: %s\nsocket: %s\nhttp: \"\"\n", filepath.Join(dir, "state"), filepath.Join(dir, "sock"))
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		fatal(err)
	}
	d, err := daemon.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		fatal(err)
	}
	return d
}

// caller is a process of audit session id. The daemon never scans in this
// run (Run is not called), so the sessions need not exist: this measures
// the core, not /proc.
func caller(id uint32) identity.Caller {
	return identity.Caller{PID: int(id), Session: lease.Session{Kind: lease.KindAudit, ID: id}, SessionUID: 60001, Exe: "/usr/bin/psql"}
}

func fsyncRate(dir string, d time.Duration) float64 {
	f, err := os.Create(filepath.Join(dir, "fsync-probe"))
	if err != nil {
		fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 4096)
	n := 0
	start := time.Now()
	for time.Since(start) < d {
		f.WriteAt(buf, int64(n%64)*4096)
		if err := f.Sync(); err != nil {
			fatal(err)
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds()
}

// roundTrip measures QUERY over the real daemon's socket: what an
// intercepted process pays once (connect, SO_PEERCRED, /proc reads,
// decision, reply).
func roundTrip(base string) {
	dir := filepath.Join(base, "proc")
	os.MkdirAll(dir, 0o755)
	d, err := daemonproc.New(dir, "adapter: lo\nsource: static\nsession_identity: posix\nstatic_pool: {start: 127.77.0.10, end: 127.77.0.250, subnet_mask: 255.255.255.0}\n", false)
	if err != nil {
		fmt.Printf("socket round trip: skipped: %v\n", err)
		return
	}
	if err := d.Start(context.Background()); err != nil {
		fmt.Printf("socket round trip: skipped: %v\n", err)
		return
	}
	defer d.Stop(15)
	one := func() error {
		c, err := d.Client()
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Query()
		return err
	}
	if err := one(); err != nil {
		fmt.Printf("socket round trip: %v\n", err)
		return
	}
	r := testing.Benchmark(func(b *testing.B) {
		for b.Loop() {
			if err := one(); err != nil {
				b.Fatal(err)
			}
		}
	})
	fmt.Printf("socket round trip (connect+QUERY):   %8.1f µs/op   paid once per process by libipvirt.so\n", float64(r.NsPerOp())/1e3)
}

func vmRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func heapMiB() float64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(ms.HeapInuse) / (1 << 20)
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "alloc:", err)
	os.Exit(1)
}
