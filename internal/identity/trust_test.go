package identity

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/ipvirt/ipvirt/internal/lease"
)

// registered is a Registry holding a fixed set of session ids.
type registered map[uint32]bool

func (r registered) Registered(id uint32) bool { return r[id] }

// TestRegistryLimitsSessions: with a registry (session_trust: pam), a
// process of an audit session the registry does not hold resolves to no
// session, with its real session and login uid kept for the log and for
// `session open`, and scans skip its session but still count it live.
// Without one (loginuid), both sessions are logins.
func TestRegistryLimitsSessions(t *testing.T) {
	root := t.TempDir()
	proc := func(pid int, session uint32, loginuid uint32) {
		dir := filepath.Join(root, strconv.Itoa(pid))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		stat := fmt.Sprintf("%d (x) S 1 %d %d 0 0 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0", pid, pid, pid)
		for name, body := range map[string]string{"stat": stat, "sessionid": strconv.FormatUint(uint64(session), 10),
			"loginuid": strconv.FormatUint(uint64(loginuid), 10), "cgroup": "0::/user.slice\n"} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	proc(100, 7, 1000)          // a registered login
	proc(101, 8, 4002)          // a service that wrote its own login uid
	proc(102, 8, 4002)          // and its child
	proc(103, unsetID, unsetID) // a service

	r := Resolver{Proc: Proc{Root: root}, Identity: Audit, Registry: registered{7: true}}
	c, _, err := r.resolve(100, 1000, 1000, false)
	if err != nil || c.Session != (lease.Session{Kind: lease.KindAudit, ID: 7}) || c.Unregistered {
		t.Fatalf("registered session: %+v, %v", c, err)
	}
	c, _, err = r.resolve(101, 4002, 4002, false)
	if err != nil || c.Session.Valid() || !c.Unregistered || c.Login.ID != 8 || c.SessionUID != 4002 {
		t.Fatalf("unregistered session: %+v, %v; want no session, login a:8 of uid 4002", c, err)
	}
	c, _, err = r.resolve(103, 0, 0, false)
	if err != nil || c.Session.Valid() || c.Unregistered || c.Login.Valid() {
		t.Fatalf("no session: %+v, %v", c, err)
	}
	snap, err := r.Scan(false)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Sessions) != 1 || snap.Sessions[lease.Session{Kind: lease.KindAudit, ID: 7}] == nil {
		t.Fatalf("scan with a registry: %+v, want session 7 only", snap.Sessions)
	}
	if !snap.Live[7] || !snap.Live[8] || len(snap.Live) != 2 {
		t.Fatalf("live sessions: %v, want 7 and 8", snap.Live)
	}

	r.Registry = nil
	if c, _, _ := r.resolve(101, 4002, 4002, false); !c.Session.Valid() || c.Unregistered {
		t.Fatalf("without a registry the forged session is a login: %+v", c)
	}
	if snap, _ := r.Scan(false); len(snap.Sessions) != 2 || snap.Sessions[lease.Session{Kind: lease.KindAudit, ID: 8}].Procs != 2 {
		t.Fatalf("scan without a registry: %+v", snap.Sessions)
	}
}

func TestParseStatusUIDs(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want UIDs
		err  bool
	}{
		{"Name:\tsu\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n", UIDs{1000, 0, 0, 0}, false},
		{"Uid:\t0\t0\t0\t0\n", UIDs{}, false},
		{"Uid:\t4294967295\t1\t2\t3", UIDs{4294967295, 1, 2, 3}, false},
		{"Uid:\t0\t0\t0\n", UIDs{}, true},
		{"Uid:\t4294967296\t0\t0\t0\n", UIDs{}, true},
		{"Uid:\t-1\t0\t0\t0\n", UIDs{}, true},
		{"Gid:\t0\t0\t0\t0\n", UIDs{}, true},
	} {
		got, err := parseStatusUIDs([]byte(tt.in))
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("parseStatusUIDs(%q) = %+v, %v; want %+v, err %v", tt.in, got, err, tt.want, tt.err)
		}
	}
	if u, err := (Proc{Root: "/proc"}).UIDs(os.Getpid()); err != nil || u.Real != uint32(os.Getuid()) || u.Effective != uint32(os.Geteuid()) {
		t.Fatalf("own uids: %+v, %v", u, err)
	}
}

// FuzzParseStatusUIDs: /proc/PID/status as the kernel might show it. What
// parses is four uids that print back to the line they came from.
func FuzzParseStatusUIDs(f *testing.F) {
	f.Add([]byte("Name:\tsu\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n"))
	f.Add([]byte("Uid:\t0\t0\t0\t0"))
	f.Add([]byte("Uid:\t4294967296\t0\t0\t0\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		u, err := parseStatusUIDs(b)
		if err != nil {
			return
		}
		line := fmt.Sprintf("Uid:\t%d\t%d\t%d\t%d\n", u.Real, u.Effective, u.Saved, u.FS)
		if again, err := parseStatusUIDs([]byte(line)); err != nil || again != u {
			t.Fatalf("%+v printed as %q parses as %+v, %v", u, line, again, err)
		}
	})
}
