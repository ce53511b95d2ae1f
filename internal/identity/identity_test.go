package identity

import (
	"context"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/sim/loginsession"
)

func requireAudit(t *testing.T) {
	t.Helper()
	if ok, why := loginsession.Available(loginsession.Audit); !ok {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s (CI=true: not skipping)", why)
		}
		t.Skip(why)
	}
}

func TestParseStat(t *testing.T) {
	tests := []struct {
		name string
		line string
		want Stat
		err  bool
	}{
		{"plain", "4242 (bash) S 4200 4242 4242 34816 4300 4194560 1 2 3 4 5 6 7 8 20 0 1 0 987654 1 2", Stat{State: 'S', PPID: 4200, Session: 4242, StartTime: 987654}, false},
		{"spaces and parens in name", "99 (a) b (c)) R 1 99 77 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0", Stat{State: 'R', PPID: 1, Session: 77, StartTime: 55}, false},
		{"truncated", "1 (init) S 0 1 1", Stat{}, true},
		{"no name", "garbage", Stat{}, true},
		{"non-numeric", "1 (x) S a b c 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0", Stat{}, true},
		// Cut to 32 bits, this session would have been session 2.
		{"session past 32 bits", "9 (x) S 1 9 4294967298 0 0 0 0 0 0 0 0 0 0 0 0 0 1 0 5 0 0", Stat{}, true},
		{"session past pid_t", "9 (x) S 1 9 2147483648 0 0 0 0 0 0 0 0 0 0 0 0 0 1 0 5 0 0", Stat{}, true},
		{"negative ppid", "9 (x) S -5 9 9 0 0 0 0 0 0 0 0 0 0 0 0 0 1 0 5 0 0", Stat{}, true},
		{"largest pid", "9 (x) S 2147483647 9 2147483647 0 0 0 0 0 0 0 0 0 0 0 0 0 1 0 5 0 0", Stat{State: 'S', PPID: 2147483647, Session: 2147483647, StartTime: 5}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStat([]byte(tt.line))
			if (err != nil) != tt.err || got != tt.want {
				t.Fatalf("parseStat = %+v, %v; want %+v, err=%v", got, err, tt.want, tt.err)
			}
		})
	}
}

func FuzzParseStat(f *testing.F) {
	f.Add([]byte("4242 (bash) S 4200 4242 4242 34816 4300 4194560 1 2 3 4 5 6 7 8 20 0 1 0 987654 1 2"))
	f.Add([]byte("99 (a) b (c)) R 1 99 77 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0"))
	f.Add([]byte("9 (x) S 1 9 4294967298 0 0 0 0 0 0 0 0 0 0 0 0 0 1 0 5 0 0"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseStat(b)
		if err != nil {
			return
		}
		// What the rest relies on: pids that are pids, so a session id
		// fits lease.Session's 32 bits unchanged.
		if st.PPID < 0 || st.PPID > math.MaxInt32 || st.Session < 0 || st.Session > math.MaxInt32 {
			t.Fatalf("accepted %+v from %q", st, b)
		}
		// The same fields in a well-formed line parse the same.
		line := fmt.Sprintf("1 (x) %sZ %d 1 %d 0 0 0 0 0 0 0 0 0 0 0 0 0 1 0 %d", []byte{st.State}, st.PPID, st.Session, st.StartTime)
		if again, err := parseStat([]byte(line)); err != nil || again != st {
			t.Fatalf("%q: %+v, %v; want %+v", line, again, err, st)
		}
	})
}

// startSleeper runs sleep in a new login session and returns its pid.
func startSleeper(t *testing.T, kind loginsession.Kind, uid uint32) *exec.Cmd {
	t.Helper()
	cmd := loginsession.Command(context.Background(), kind, uid, "sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { loginsession.KillGroup(cmd); cmd.Wait() })
	// Wait for the exec so that /proc shows sleep, not the sh wrapper.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if exe, _ := os.Readlink("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/exe"); filepath.Base(exe) == "sleep" {
			return cmd
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("sleep never started")
	return nil
}

func TestResolveAuditSession(t *testing.T) {
	requireAudit(t)
	cmd := startSleeper(t, loginsession.Audit, 60001)
	pid := cmd.Process.Pid
	want, err := loginsession.SessionOf(pid)
	if err != nil {
		t.Fatal(err)
	}
	mine, _ := loginsession.SessionOf(os.Getpid())
	if want == mine || want == unsetID {
		t.Fatalf("child session %d is not a fresh session (ours %d)", want, mine)
	}
	r := NewResolver(Audit, "")
	c, err := r.Resolve(pid, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	sleepPath, _ := exec.LookPath("sleep")
	sleepPath, _ = filepath.EvalSymlinks(sleepPath)
	if c.Session != (lease.Session{Kind: lease.KindAudit, ID: want}) || c.SessionUID != 60001 || c.Exe != sleepPath {
		t.Fatalf("Resolve = %+v; want audit session %d, session uid 60001, exe %s", c, want, sleepPath)
	}

	snap, err := r.Scan(true)
	if err != nil {
		t.Fatal(err)
	}
	info := snap.Sessions[c.Session]
	if info == nil || info.UID != 60001 || info.Procs != 1 || info.Programs[sleepPath] != 1 {
		t.Fatalf("scan: %+v", info)
	}
	h := lease.Holder{Session: c.Session, Program: sleepPath}
	if !snap.Alive(h) || !snap.Alive(lease.Holder{Session: c.Session}) || snap.Alive(lease.Holder{Session: c.Session, Program: "/bin/other"}) {
		t.Fatal("Alive disagrees with the scan")
	}
	loginsession.KillGroup(cmd)
	cmd.Wait()
	snap, _ = r.Scan(true)
	if snap.Alive(h) || snap.Alive(lease.Holder{Session: c.Session}) {
		t.Fatal("session still alive after its only process was killed")
	}
}

func TestNoSessionIsSessionZero(t *testing.T) {
	r := NewResolver(Audit, "")
	// PID 1 is in no audit session on any host where the test runs outside
	// a login (CI, containers); in a login shell this test proves nothing.
	s, err := r.Session(1)
	if err != nil {
		t.Skipf("cannot read pid 1: %v", err)
	}
	if s.Valid() {
		t.Skipf("pid 1 is in audit session %v here", s)
	}
	if s != (lease.Session{}) {
		t.Fatalf("no-session is %+v, want the zero Session", s)
	}
}

func TestResolvePOSIXSession(t *testing.T) {
	cmd := startSleeper(t, loginsession.POSIX, 0)
	r := NewResolver(POSIX, "")
	c, err := r.Resolve(cmd.Process.Pid, uint32(os.Getuid()), uint32(os.Getgid()))
	if err != nil {
		t.Fatal(err)
	}
	if c.Session != (lease.Session{Kind: lease.KindPOSIX, ID: uint32(cmd.Process.Pid)}) || c.SessionUID != uint32(os.Getuid()) {
		t.Fatalf("Resolve = %+v; want POSIX session %d", c, cmd.Process.Pid)
	}
	snap, err := r.Scan(false)
	if err != nil {
		t.Fatal(err)
	}
	if info := snap.Sessions[c.Session]; info == nil || info.Procs != 1 || info.UID != uint32(os.Geteuid()) {
		t.Fatalf("scan: %+v", info)
	}
}

func TestResolveConn(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "s"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := net.Dial("unix", filepath.Join(dir, "s"))
		if err == nil {
			time.Sleep(time.Second)
			c.Close()
		}
	}()
	conn, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c, err := NewResolver(POSIX, "").ResolveConn(conn)
	if err != nil {
		t.Fatal(err)
	}
	self, _ := os.Executable()
	if c.PID != os.Getpid() || c.UID != uint32(os.Geteuid()) || c.Exe != self {
		t.Fatalf("ResolveConn = %+v; want pid %d uid %d exe %s", c, os.Getpid(), os.Geteuid(), self)
	}
	// The accept thread's per-session identification skips the executable
	// and nothing else.
	raw, _ := conn.SyscallConn()
	var quick Caller
	raw.Control(func(fd uintptr) { quick, err = NewResolver(POSIX, "").ResolveFD(int(fd), false) })
	if err != nil {
		t.Fatal(err)
	}
	want := c
	want.Exe = ""
	if quick != want {
		t.Fatalf("ResolveFD without exe = %+v; want %+v", quick, want)
	}
}

func TestReadLogind(t *testing.T) {
	s, ok := ReadLogind("testdata/sessions", 7)
	want := LogindSession{User: "alice", RemoteHost: "192.0.2.44", Type: "tty", Service: "sshd"}
	if !ok || s != want {
		t.Fatalf("ReadLogind = %+v, %v; want %+v", s, ok, want)
	}
	if _, ok := ReadLogind("testdata/sessions", 8); ok {
		t.Fatal("found a session file that does not exist")
	}
}

func TestUsersAdmin(t *testing.T) {
	u := NewUsers(time.Minute)
	users, groups := []string{"root", "4242"}, []string{"wheel-nonexistent"}
	if !u.IsAdmin(0, users, groups) {
		t.Error("root is not an admin")
	}
	if !u.IsAdmin(4242, users, groups) {
		t.Error("numeric uid in admins.users not honoured")
	}
	if u.IsAdmin(60001, users, groups) {
		t.Error("unknown uid 60001 is an admin")
	}
	if n := u.Name(60001); n != "60001" {
		t.Errorf("Name(60001) = %q", n)
	}
	if n := u.Name(0); n != "root" {
		t.Errorf("Name(0) = %q", n)
	}
	// root's primary group is root on Debian: membership is by group name.
	if !u.IsAdmin(0, nil, []string{"root"}) {
		t.Error("group membership not honoured")
	}
}

// A session id has one login uid for life (the kernel hands out a new id
// whenever a login uid is set), so a remembered one is used without a
// read: in a fake /proc the second process of session 7 has no loginuid
// file and still resolves. Resolve alone, with no pidfd to prove the reads
// described the caller, remembers nothing.
func TestLoginUIDRemembered(t *testing.T) {
	root := t.TempDir()
	proc := func(pid, session int, loginuid string) {
		dir := filepath.Join(root, strconv.Itoa(pid))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, "sessionid"), []byte(strconv.Itoa(session)), 0o644)
		if loginuid != "" {
			os.WriteFile(filepath.Join(dir, "loginuid"), []byte(loginuid), 0o644)
		}
		os.Symlink("/usr/bin/psql", filepath.Join(dir, "exe"))
	}
	proc(100, 7, "1001")
	proc(101, 7, "")
	r := NewResolver(Audit, "")
	r.Proc.Root = root
	if c, err := r.Resolve(100, 5000, 5000); err != nil || c.SessionUID != 1001 {
		t.Fatalf("pid 100: %+v, %v", c, err)
	}
	if _, ok := r.logins.get(7); ok {
		t.Fatal("Resolve remembered a login uid it could not prove was the caller's")
	}
	if _, err := r.Resolve(101, 5000, 5000); err == nil {
		t.Fatal("pid 101 resolved with no loginuid to read and none remembered")
	}
	r.logins.put(7, 1001)
	if c, err := r.Resolve(101, 5000, 5000); err != nil || c.SessionUID != 1001 {
		t.Fatalf("pid 101 with session 7 remembered: %+v, %v", c, err)
	}
}

// ResolveFD remembers the login uid of a real audit session once the
// caller outlived the reads.
func TestResolveFDRemembersLogin(t *testing.T) {
	requireAudit(t)
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	path := filepath.Join(dir, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	os.Chmod(path, 0o666)
	s, err := loginsession.Start(context.Background(), loginsession.Audit, 60003)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Debian's python3, which `make deps` installs: a pyenv shim is a script,
	// not the program the session waits to see.
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s: %v (CI=true: not skipping)", py, err)
		}
		t.Skipf("%s: %v", py, err)
	}
	if _, err := s.Run(py, "-c", "import socket,sys,time; c=socket.socket(socket.AF_UNIX); c.connect(sys.argv[1]); time.sleep(30)", path); err != nil {
		t.Fatal(err)
	}
	ln.SetDeadline(time.Now().Add(10 * time.Second))
	conn, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := NewResolver(Audit, "")
	c, err := r.ResolveConn(conn)
	if err != nil || c.SessionUID != 60003 || c.Session.ID != s.ID {
		t.Fatalf("ResolveConn = %+v, %v; want session %d of uid 60003", c, err, s.ID)
	}
	if uid, ok := r.logins.get(s.ID); !ok || uid != 60003 || len(r.logins.m) != 1 {
		t.Fatalf("session %d remembered as %d, %v; cache %v", s.ID, uid, ok, r.logins.m)
	}
}
