package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/store"
)

// stuckScanner is a session scanner whose scans, once armed, block until
// released. When a blocked scan is let go it writes to the store, as a
// reap that releases a lease would.
type stuckScanner struct {
	armed   atomic.Bool
	entered chan struct{} // closed when the first armed scan starts
	enter   sync.Once
	release chan struct{}
	st      *store.Store

	scanning atomic.Int32 // armed scans in progress
	mu       sync.Mutex
	storeErr error // the first store write that failed
}

func (s *stuckScanner) Scan(bool) (identity.Snapshot, error) {
	if !s.armed.Load() {
		return identity.Snapshot{}, nil // Restore's scan, during open
	}
	s.scanning.Add(1)
	defer s.scanning.Add(-1)
	s.enter.Do(func() { close(s.entered) })
	<-s.release
	if err := s.st.SetMeta("shutdown_test", []byte("scan")); err != nil {
		s.mu.Lock()
		if s.storeErr == nil {
			s.storeErr = err
		}
		s.mu.Unlock()
	}
	return identity.Snapshot{}, nil
}

// TestRunWaitsForScanLoop stops the daemon while the manager's scan loop is
// inside a scan: Run must not return, nor close the store, until the loop
// has returned.
func TestRunWaitsForScanLoop(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ipvirt.yaml")
	conf := fmt.Sprintf(`enabled: false
adapter: lo
source: static
static_pool: {start: 127.77.1.10, end: 127.77.1.20, subnet_mask: 255.255.255.0}
session_identity: posix
scan_interval: 10ms
http: ""
socket: %s
state_dir: %s
`, filepath.Join(dir, "ipvirtd.sock"), filepath.Join(dir, "state"))
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	sc := &stuckScanner{entered: make(chan struct{}), release: make(chan struct{})}
	d, err := open(path, slog.New(slog.NewTextHandler(t.Output(), nil)), sc)
	if err != nil {
		t.Fatal(err)
	}
	sc.st = d.store
	sc.armed.Store(true)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		err      error
		scanning int32 // scans in progress when Run returned
	}
	done := make(chan result, 1)
	go func() {
		err := d.Run(ctx)
		done <- result{err, sc.scanning.Load()}
	}()
	select {
	case <-sc.entered:
	case r := <-done:
		t.Fatalf("Run returned before the scan loop scanned: %v", r.err)
	case <-time.After(10 * time.Second):
		t.Fatal("the scan loop never scanned")
	}
	cancel()
	// Run stops everything else at once; it may only be waiting for the scan.
	select {
	case r := <-done:
		t.Fatalf("Run returned (err %v) while the scan loop was in a scan", r.err)
	case <-time.After(300 * time.Millisecond):
	}
	close(sc.release)
	var r result
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return once the scan finished")
	}
	if r.err != nil {
		t.Fatalf("Run: %v", r.err)
	}
	if r.scanning != 0 {
		t.Fatalf("Run returned with %d scans in progress", r.scanning)
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.storeErr != nil {
		t.Fatalf("the scan loop found the store closed under it: %v", sc.storeErr)
	}
}
