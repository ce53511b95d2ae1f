package store

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ipvirt/ipvirt/internal/lease"
)

func mkLease(id uint32, addr string) lease.Lease {
	return lease.Lease{
		Holder:  lease.Holder{Session: lease.Session{Kind: lease.KindAudit, ID: id}},
		Addr:    netip.MustParseAddr(addr),
		Subnet:  netip.MustParsePrefix("10.0.0.0/8"), // holds every address the tests use: Leases checks
		Source:  "static",
		Granted: time.Unix(1_800_000_000, 0).UTC(),
		UID:     1000 + id,
	}
}

func TestPutReopenDelete(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	l1 := mkLease(1, "10.0.0.1")
	l2 := mkLease(2, "10.0.0.2")
	l2.Holder.Program = "/usr/bin/psql"
	l2.Expiry = time.Unix(1_800_000_600, 0).UTC()
	l2.State = []byte{1, 2, 3}
	for _, l := range []lease.Lease{l1, l2} {
		if err := s.Put(l); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SetProgramOverride("/opt/x", ProgramAdded); err != nil {
		t.Fatal(err)
	}
	if err := s.SetMeta("host_id", []byte("abc")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(l1); err != ErrClosed {
		t.Fatalf("Put after Close: %v", err)
	}

	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, bad := s.Leases()
	if len(bad) != 0 || len(got) != 2 {
		t.Fatalf("reopened: %d leases, errors %v", len(got), bad)
	}
	byKey := map[string]lease.Lease{}
	for _, l := range got {
		byKey[l.Holder.Key()] = l
	}
	for _, want := range []lease.Lease{l1, l2} {
		g := byKey[want.Holder.Key()]
		if g.Addr != want.Addr || g.Subnet != want.Subnet || !g.Granted.Equal(want.Granted) ||
			!g.Expiry.Equal(want.Expiry) || g.UID != want.UID || string(g.State) != string(want.State) ||
			g.Holder != want.Holder || g.Source != want.Source {
			t.Errorf("lease %s: got %+v want %+v", want.Holder, g, want)
		}
	}
	if o := s.ProgramOverrides(); o["/opt/x"] != ProgramAdded || len(o) != 1 {
		t.Errorf("program overrides %v", o)
	}
	if string(s.Meta("host_id")) != "abc" || s.Meta("nope") != nil {
		t.Errorf("meta wrong")
	}
	if err := s.Delete(l1.Holder); err != nil {
		t.Fatal(err)
	}
	s.DeleteAsync(l2.Holder)
	if err := s.SetProgramOverride("/opt/x", ""); err != nil { // also flushes the async delete before it
		t.Fatal(err)
	}
	if got, _ := s.Leases(); len(got) != 0 {
		t.Fatalf("after deletes: %v", got)
	}
	if len(s.ProgramOverrides()) != 0 {
		t.Fatal("override not forgotten")
	}
}

func TestSecondOpenRefused(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = Open(dir)
	if err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second Open: %v", err)
	}
}

func TestDamagedRecordDoesNotHideOthers(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir)
	s.Put(mkLease(1, "10.0.0.1"))
	s.Close()
	db, err := bolt.Open(dir+"/"+FileName, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketLeases).Put([]byte("a:2"), []byte("{garbage")) })
	db.Close()
	s, _ = Open(dir)
	defer s.Close()
	got, bad := s.Leases()
	if len(got) != 1 || len(bad) != 1 || !strings.Contains(bad[0].Error(), `"a:2"`) {
		t.Fatalf("got %v, errors %v", got, bad)
	}
}

// TestGroupCommit checks that concurrent writers share fsyncs. It counts
// commits, not time: many writers queueing while one fsync runs must land in
// far fewer transactions than operations.
func TestGroupCommit(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const writers, each = 64, 20
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				n := w*each + i
				if err := s.Put(mkLease(uint32(n), fmt.Sprintf("10.%d.%d.%d", n>>16&255, n>>8&255, n&255))); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	commits, ops := s.Stats()
	t.Logf("%d operations in %d commits", ops, commits)
	if ops != writers*each {
		t.Fatalf("wrote %d ops, want %d", ops, writers*each)
	}
	if commits > ops/2 {
		t.Fatalf("%d commits for %d concurrent operations: group commit is not batching", commits, ops)
	}
	if got, _ := s.Leases(); len(got) != writers*each {
		t.Fatalf("%d leases stored, want %d", len(got), writers*each)
	}
}

// TestAcknowledgedPutSurvivesSIGKILL runs a writer in a child process, kills
// it with SIGKILL right after it reports a Put as done, and checks that the
// reopened store has every acknowledged lease.
func TestAcknowledgedPutSurvivesSIGKILL(t *testing.T) {
	if dir := os.Getenv("IPVIRT_STORE_CHILD"); dir != "" {
		s, err := Open(dir)
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		for i := 0; ; i++ {
			if err := s.Put(mkLease(uint32(i), fmt.Sprintf("10.0.%d.%d", i>>8&255, i&255))); err != nil {
				fmt.Println("error", err)
				os.Exit(1)
			}
			fmt.Println("acked", i)
		}
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestAcknowledgedPutSurvivesSIGKILL$")
	cmd.Env = append(os.Environ(), "IPVIRT_STORE_CHILD="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	last := -1
	for sc.Scan() {
		var n int
		if _, err := fmt.Sscanf(sc.Text(), "acked %d", &n); err != nil {
			t.Fatalf("child: %s", sc.Text())
		}
		last = n
		if n == 200 {
			cmd.Process.Signal(syscall.SIGKILL)
			break
		}
	}
	cmd.Wait()
	if last < 200 {
		t.Fatalf("child stopped at %d", last)
	}
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, bad := s.Leases()
	if len(bad) != 0 {
		t.Fatal(bad)
	}
	have := map[uint32]bool{}
	for _, l := range got {
		have[l.Holder.Session.ID] = true
	}
	for i := 0; i <= last; i++ {
		if !have[uint32(i)] {
			t.Fatalf("lease %d was acknowledged before SIGKILL but is not in the store (%d stored)", i, len(got))
		}
	}
}

func BenchmarkPutParallel(b *testing.B) {
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var n uint32
	var mu sync.Mutex
	b.SetParallelism(128)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			mu.Lock()
			n++
			i := n
			mu.Unlock()
			if err := s.Put(mkLease(i, "10.0.0.1")); err != nil {
				b.Fatal(err)
			}
		}
	})
	commits, ops := s.Stats()
	b.ReportMetric(float64(ops)/float64(commits), "ops/commit")
}
