package preload

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/backend/wire"
)

// TestDaemonStopped: with ipvirtd killed (a stale socket) or never started
// (no socket), programs fail open to the machine IP with one stderr line,
// are silent with IPVIRT_QUIET=1, and with IPVIRT_FAIL=closed refuse with
// EACCES what would have used the machine IP.
func TestDaemonStopped(t *testing.T) {
	requireTool(t, python3, "python3")
	e := newEnv(t, "")
	if err := e.d.Stop(syscall.SIGKILL); err == nil {
		t.Fatal("ipvirtd survived SIGKILL")
	}
	srv := newTCPServer(t)
	for _, c := range []struct{ name, socket, why string }{
		{"killed", e.d.Socket, "connection refused"},
		{"never started", e.d.Socket + ".absent", "no such file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			env := []string{"LD_PRELOAD=" + libPath, "IPVIRT_SOCKET=" + c.socket}
			res := runPlain(t, env, python3, probeScript(t),
				"connect", "127.0.0.1", srv.port(), "connect", "127.0.0.1", srv.port(), "bind", "0.0.0.0", "0")
			for range 2 {
				if got := srv.next(t); got != "127.0.0.1" {
					t.Errorf("server saw %s, want the machine IP 127.0.0.1", got)
				}
			}
			if got := res.ip(t, "bind"); got != "0.0.0.0" {
				t.Errorf("bind to 0.0.0.0 became %s with the daemon down", got)
			}
			lines := res.ipvirtLines()
			if res.code != 0 || len(lines) != 1 || !strings.Contains(lines[0], c.why) || !strings.Contains(lines[0], "machine IP") {
				t.Fatalf("exit %d, want one ipvirt: line saying %q; stderr:\n%s", res.code, c.why, res.stderr)
			}

			res = runPlain(t, append(env, "IPVIRT_QUIET=1"), python3, probeScript(t), "connect", "127.0.0.1", srv.port())
			srv.next(t)
			if res.code != 0 || res.stderr != "" {
				t.Fatalf("IPVIRT_QUIET=1: exit %d, stderr %q", res.code, res.stderr)
			}

			// Fail closed: no VIP was ever seen, so the refusal covers what
			// a deployment virtualizes (non-loopback destinations, wildcard
			// binds); loopback traffic still flows.
			res = runPlain(t, append(env, "IPVIRT_FAIL=closed"), python3, probeScript(t),
				"connect", "192.0.2.1", "9", "bind", "0.0.0.0", "0", "connect", "127.0.0.1", srv.port())
			if got := res.line(t, "connect"); got != "errno 13" {
				t.Errorf("IPVIRT_FAIL=closed: connect to 192.0.2.1 gave %q, want errno 13 (EACCES)", got)
			}
			if got := res.line(t, "bind"); got != "errno 13" {
				t.Errorf("IPVIRT_FAIL=closed: bind to 0.0.0.0 gave %q, want errno 13 (EACCES)", got)
			}
			if got := srv.next(t); got != "127.0.0.1" {
				t.Errorf("IPVIRT_FAIL=closed: loopback connect came from %s", got)
			}
			if lines := res.ipvirtLines(); len(lines) != 1 || !strings.Contains(lines[0], "IPVIRT_FAIL=closed") {
				t.Errorf("IPVIRT_FAIL=closed: stderr %q", res.stderr)
			}
		})
	}
}

// TestDaemonHung: a daemon that accepts and never answers, one whose
// backlog is never accepted, and one that answers after the timeout: the
// call returns and falls back to the machine IP, and the library does not
// ask again on every call (20 connects, one connection to the daemon).
func TestDaemonHung(t *testing.T) {
	build(t)
	srv := newTCPServer(t)
	for _, c := range []struct {
		name  string
		serve serveFunc
	}{
		{"accepts, never answers", nil},
		{"answers too late", func(s *standIn, _ int, c net.Conn) {
			s.readQuery(c)
			time.Sleep(3 * time.Second)
			c.Write(vipAnswer("127.88.0.9", 300))
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newStandIn(t, c.serve)
			args := []string{probePath}
			for range 20 {
				args = append(args, "connect", "127.0.0.1", srv.port())
			}
			res := runPlain(t, s.env(), args...)
			for range 20 {
				if got := srv.next(t); got != "127.0.0.1" {
					t.Fatalf("server saw %s, want the machine IP", got)
				}
			}
			if lines := res.ipvirtLines(); len(lines) != 1 || !strings.Contains(lines[0], "timed out") {
				t.Fatalf("stderr %q, want one ipvirt: line saying timed out", res.stderr)
			}
			if n := s.conns.Load(); n != 1 {
				t.Fatalf("the library connected to the daemon %d times for 20 calls, want 1 (back off after a failure)", n)
			}
		})
	}

	t.Run("never accepted", func(t *testing.T) {
		s := newStandIn(t, nil)
		s.l.Close() // a socket file whose listener is gone: refused at once
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: s.path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close() // never accepts: the connection sits in the backlog
		res := runPlain(t, s.env(), probePath, "connect", "127.0.0.1", srv.port())
		if got := srv.next(t); got != "127.0.0.1" || len(res.ipvirtLines()) != 1 {
			t.Fatalf("server saw %s; stderr %q", got, res.stderr)
		}
	})

	t.Run("IPVIRT_TIMEOUT_MS", func(t *testing.T) {
		s := newStandIn(t, nil)
		res := runPlain(t, s.env("IPVIRT_TIMEOUT_MS=2500"), probePath, "connect", "127.0.0.1", srv.port())
		if got := srv.next(t); got != "127.0.0.1" {
			t.Fatalf("server saw %s", got)
		}
		// A lower bound only: it proves the setting is read, and holds on
		// any machine however loaded.
		if res.elapsed < 2500*time.Millisecond {
			t.Fatalf("gave up after %v with IPVIRT_TIMEOUT_MS=2500", res.elapsed)
		}
	})
}

// TestGarbageAnswers: whatever a broken or foreign daemon sends, the
// program goes on from the machine IP with one stderr line. The first row
// is a well-formed answer from the same stand-in, so the harness is shown
// to deliver answers the library takes.
func TestGarbageAnswers(t *testing.T) {
	build(t)
	srv := newTCPServer(t)
	lo, zero := [4]byte{127, 0, 0, 1}, [4]byte{}
	vip := [4]byte{127, 88, 0, 5}
	answer := rawAnswer(1, 24, vip, lo, 300, "")
	for _, c := range []struct {
		name  string
		reply []byte
		want  string // source the server sees
		why   string // in the stderr line; "" means no line at all
	}{
		{"control: valid VIP", vipAnswer("127.88.0.5", 300), "127.88.0.5", ""},
		{"control: later version's trailing fields", rawFrame("IPVT", 1, 1, 40, append(answer, 1, 2, 3, 4, 5, 6, 7, 8)), "127.88.0.5", ""},
		{"HTTP", []byte("HTTP/1.1 400 Bad Request\r\n\r\n"), "127.0.0.1", "bad magic"},
		{"bad magic", rawFrame("IPVX", 1, 1, 32, answer), "127.0.0.1", "bad magic"},
		{"version 2", rawFrame("IPVT", 2, 1, 32, answer), "127.0.0.1", "version 2"},
		{"version 0", rawFrame("IPVT", 0, 1, 32, answer), "127.0.0.1", "version 0"},
		{"ERROR frame", wire.AppendFrame(nil, wire.RespError, wire.AppendError(nil, wire.CodeInternal, "store broken")), "127.0.0.1", "store broken"},
		{"JSON frame", wire.AppendFrame(nil, wire.RespJSON, []byte(`{"vip":"127.88.0.5"}`)), "127.0.0.1", "frame type 2"},
		{"payload too short", rawFrame("IPVT", 1, 1, 31, answer[:31]), "127.0.0.1", "payload of 31"},
		{"payload absurdly long", rawFrame("IPVT", 1, 1, 16<<20, answer), "127.0.0.1", "payload of"},
		{"kind 0", rawFrame("IPVT", 1, 1, 32, rawAnswer(0, 24, vip, lo, 300, "")), "127.0.0.1", "kind 0"},
		{"kind 4", rawFrame("IPVT", 1, 1, 32, rawAnswer(4, 24, vip, lo, 300, "")), "127.0.0.1", "kind 4"},
		{"prefix 33", rawFrame("IPVT", 1, 1, 32, rawAnswer(1, 33, vip, lo, 300, "")), "127.0.0.1", "prefix"},
		{"VIP 0.0.0.0", rawFrame("IPVT", 1, 1, 32, rawAnswer(1, 24, zero, lo, 300, "")), "127.0.0.1", "not a unicast"},
		{"VIP multicast", rawFrame("IPVT", 1, 1, 32, rawAnswer(1, 24, [4]byte{239, 1, 1, 1}, lo, 300, "")), "127.0.0.1", "not a unicast"},
		{"MIP answer carrying a VIP", rawFrame("IPVT", 1, 1, 32, rawAnswer(2, 0, vip, lo, 300, "")), "127.0.0.1", "not a VIP"},
		{"reason overruns", rawFrame("IPVT", 1, 1, 36, rawAnswer(3, 0, zero, lo, 5, "0123456789")[:36]), "127.0.0.1", "overruns"},
		{"truncated, then closed", rawFrame("IPVT", 1, 1, 32, answer[:20]), "127.0.0.1", "middle of an ANSWER"},
		{"closed without a reply", nil, "127.0.0.1", "without a reply"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newStandIn(t, reply(c.reply))
			res := runPlain(t, s.env(), probePath, "connect", "127.0.0.1", srv.port())
			if got := srv.next(t); got != c.want {
				t.Errorf("server saw %s, want %s", got, c.want)
			}
			lines := res.ipvirtLines()
			switch {
			case res.code != 0:
				t.Errorf("exit %d: %s", res.code, res.stderr)
			case c.why == "" && res.stderr != "":
				t.Errorf("stderr %q, want nothing", res.stderr)
			case c.why != "" && (len(lines) != 1 || !strings.Contains(lines[0], c.why)):
				t.Errorf("stderr %q, want one ipvirt: line saying %q", res.stderr, c.why)
			}
		})
	}

	t.Run("truncated, then silent", func(t *testing.T) {
		s := newStandIn(t, func(s *standIn, _ int, c net.Conn) {
			s.readQuery(c)
			c.Write(vipAnswer("127.88.0.5", 300)[:20]) // and keep the connection open
		})
		res := runPlain(t, s.env(), probePath, "connect", "127.0.0.1", srv.port())
		if got := srv.next(t); got != "127.0.0.1" || len(res.ipvirtLines()) != 1 {
			t.Fatalf("server saw %s; stderr %q", got, res.stderr)
		}
	})
}

// pendingFrame announces that the answer will take up to wait.
func pendingFrame(wait time.Duration) []byte {
	return wire.AppendFrame(nil, wire.RespPending, wire.AppendPending(nil, wait))
}

// TestPending: a daemon acquiring a DHCP lease says PENDING within the
// library's short timeout, and the library then waits for the answer
// (bounded by the daemon's announcement and IPVIRT_PENDING_MS) instead of
// failing open; a hung daemon still costs only the short timeout.
func TestPending(t *testing.T) {
	build(t)
	srv := newTCPServer(t)
	later := func(wait, after time.Duration, answer []byte) serveFunc {
		return func(s *standIn, _ int, c net.Conn) {
			s.readQuery(c)
			c.Write(pendingFrame(wait))
			time.Sleep(after)
			if answer != nil {
				c.Write(answer)
			}
		}
	}
	for _, c := range []struct {
		name  string
		serve serveFunc
		env   []string
		want  string // the source the server sees
		why   string // in the stderr line; "" means none
	}{
		{"answer 800 ms after PENDING", later(5*time.Second, 800*time.Millisecond, vipAnswer("127.88.0.6", 300)), nil, "127.88.0.6", ""},
		{"PENDING then silence, bounded by the announcement", later(300*time.Millisecond, time.Hour, nil), nil, "127.0.0.1", "timed out"},
		{"PENDING then silence, bounded by IPVIRT_PENDING_MS", later(time.Hour, time.Hour, nil), []string{"IPVIRT_PENDING_MS=500"}, "127.0.0.1", "timed out"},
		{"PENDING twice", func(s *standIn, _ int, c net.Conn) {
			s.readQuery(c)
			c.Write(append(pendingFrame(time.Second), pendingFrame(time.Second)...))
		}, nil, "127.0.0.1", "PENDING twice"},
		{"PENDING with a bad payload", reply(rawFrame("IPVT", 1, 4, 2, []byte{0, 1})), nil, "127.0.0.1", "PENDING payload of 2"},
		{"PENDING not offered", reply(pendingFrame(time.Second)), []string{"IPVIRT_PENDING_MS=0"}, "127.0.0.1", "not offered"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newStandIn(t, c.serve)
			res := runPlain(t, s.env(c.env...), probePath, "connect", "127.0.0.1", srv.port())
			if got := srv.next(t); got != c.want {
				t.Errorf("server saw %s, want %s (stderr %q)", got, c.want, res.stderr)
			}
			lines := res.ipvirtLines()
			switch {
			case c.why == "" && res.stderr != "":
				t.Errorf("stderr %q, want nothing", res.stderr)
			case c.why != "" && (len(lines) != 1 || !strings.Contains(lines[0], c.why)):
				t.Errorf("stderr %q, want one ipvirt: line saying %q", res.stderr, c.why)
			}
			// Bounded: an hour-long announcement is cut by IPVIRT_PENDING_MS
			// or the default 30 s; these cases end well before either.
			if res.elapsed > 10*time.Second {
				t.Errorf("took %v", res.elapsed)
			}
		})
	}
}

// A program that closes its descriptors and opens a data file, which then
// takes descriptor 2, used to get the library's warning written into that
// file. The line now goes to fd 2 only when fd 2 is the file it was at load.
func TestWarningNeverLandsInProgramData(t *testing.T) {
	requireTool(t, python3, "python3")
	build(t)
	data := filepath.Join(t.TempDir(), "data.bin")
	script := `import os, socket, sys
os.closerange(0, 1024)
os.open("/dev/null", os.O_RDONLY)            # fd 0
os.open("/dev/null", os.O_WRONLY)            # fd 1
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)
assert fd == 2, fd
s = socket.socket()
try:
    s.connect(("192.0.2.1", 9))
except OSError:
    pass
os.write(fd, b"DATA")
`
	env := []string{"LD_PRELOAD=" + libPath, "IPVIRT_SOCKET=" + filepath.Join(t.TempDir(), "absent.sock"), "IPVIRT_TIMEOUT_MS=50"}
	res := runPlain(t, env, python3, "-c", script, data)
	if res.code != 0 {
		t.Fatalf("probe exit %d: %s", res.code, res.stderr)
	}
	got, err := os.ReadFile(data)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "DATA" {
		t.Fatalf("the program's data file holds %q, want only %q", got, "DATA")
	}
	// The same program with its standard error left alone still warns.
	res = runPlain(t, env, python3, "-c", `import socket
s = socket.socket()
try:
    s.connect(("192.0.2.1", 9))
except OSError:
    pass
`)
	if lines := res.ipvirtLines(); len(lines) != 1 {
		t.Fatalf("with fd 2 untouched: exit %d, stderr %q, stdout %q, want one ipvirt: line", res.code, res.stderr, res.stdout)
	}
}
