package trust

import (
	"errors"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/internal/store"
)

func openStore(t *testing.T, dir string) *store.Store {
	t.Helper()
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

var quiet = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))

// TestRegistrationsSurviveRestartOfTheSameBoot: a reopened store gives back
// the registrations of this boot, and none of another boot, whose session
// ids the kernel hands out again.
func TestRegistrationsSurviveRestartOfTheSameBoot(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir)
	r := Open(st, "boot-1", quiet)
	now := time.Now()
	for _, id := range []uint32{5, 6} {
		if _, existed, err := r.Register(Registration{ID: id, UID: 4000, Leader: 10, LeaderStart: 99, Registered: now}); err != nil || existed {
			t.Fatalf("register %d: existed %v, %v", id, existed, err)
		}
	}
	st.Close()

	st = openStore(t, dir)
	r = Open(st, "boot-1", quiet)
	if !r.Registered(5) || !r.Registered(6) || r.Len() != 2 {
		t.Fatalf("after a restart: %+v", r.All())
	}
	st.Close()

	st = openStore(t, dir)
	defer st.Close()
	r = Open(st, "boot-2", quiet)
	if r.Len() != 0 {
		t.Fatalf("after a reboot: %+v, want none", r.All())
	}
	// The store commits in order: once a later write is on disk, so are
	// the deletions Open queued.
	if err := st.SetMeta("sync", []byte{1}); err != nil {
		t.Fatal(err)
	}
	if regs, _ := st.Registrations(); len(regs) != 0 {
		t.Fatalf("records of the other boot left in the store: %+v", regs)
	}
}

// TestCloseOnlyByTheRegisteringProcess: a sudo inside a login runs the PAM
// session stack again; its close must not unregister the login.
func TestCloseOnlyByTheRegisteringProcess(t *testing.T) {
	st := openStore(t, t.TempDir())
	defer st.Close()
	r := Open(st, "b", quiet)
	first, _, err := r.Register(Registration{ID: 9, UID: 1000, Leader: 300, LeaderStart: 7, Registered: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	again, existed, err := r.Register(Registration{ID: 9, UID: 1000, Leader: 400, LeaderStart: 8, Registered: time.Now()})
	if err != nil || !existed || again != first {
		t.Fatalf("second open: %+v existed=%v %v; want the first registration kept", again, existed, err)
	}
	var nl *NotLeaderError
	if _, err := r.Unregister(9, 400, 8); !errors.As(err, &nl) || !r.Registered(9) {
		t.Fatalf("close by another process: %v; registered %v", err, r.Registered(9))
	}
	// The same pid, reused by another process, is not the leader either.
	if _, err := r.Unregister(9, 300, 70); !errors.As(err, &nl) {
		t.Fatalf("close by a reused pid: %v", err)
	}
	if _, err := r.Unregister(9, 300, 7); err != nil || r.Registered(9) {
		t.Fatalf("close by the leader: %v; registered %v", err, r.Registered(9))
	}
	if _, err := r.Unregister(9, 300, 7); !errors.Is(err, ErrNotRegistered) {
		t.Fatalf("second close: %v", err)
	}
}

// TestPruneSparesRegistrationsAfterTheScan: a registration made while a
// scan ran is not dropped because that scan did not see the session.
func TestPruneSparesRegistrationsAfterTheScan(t *testing.T) {
	st := openStore(t, t.TempDir())
	defer st.Close()
	r := Open(st, "b", quiet)
	t0 := time.Now()
	for id, at := range map[uint32]time.Time{1: t0.Add(-time.Second), 2: t0.Add(-time.Second), 3: t0.Add(time.Millisecond)} {
		if _, _, err := r.Register(Registration{ID: id, Leader: 1, Registered: at}); err != nil {
			t.Fatal(err)
		}
	}
	dropped := r.Prune(func(id uint32) bool { return id == 2 }, t0)
	if len(dropped) != 1 || dropped[0].ID != 1 || r.Registered(1) || !r.Registered(2) || !r.Registered(3) {
		t.Fatalf("dropped %+v; left %+v", dropped, r.All())
	}
}
