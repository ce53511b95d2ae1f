package preload

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/ipvirt/ipvirt/backend/wire"
)

// The tests here run testdata/fdprobe.c against a stand-in daemon that
// answers with this VIP, a loopback address, so its scope is loopback
// destinations such as the test servers on 127.0.0.1.
const standInVIP = "127.88.0.5"

const straceBin = "/usr/bin/strace"

// requireStrace makes sure strace can trace here. Under CI=true a missing
// or unusable strace fails the test; elsewhere the test is skipped.
func requireStrace(t *testing.T) {
	t.Helper()
	miss := t.Skipf
	if os.Getenv("CI") == "true" {
		miss = t.Fatalf
	}
	if _, err := os.Stat(straceBin); err != nil {
		miss("%s not found: install the Debian package strace (scripts/deps.sh lists it)", straceBin)
	}
	if out, err := exec.Command(straceBin, "-qq", "-e", "trace=none", "/bin/true").CombinedOutput(); err != nil {
		miss("strace cannot trace here (ptrace refused?): %v %s", err, out)
	}
}

// traceLine is one traced system call: "PID name(args) = result".
var traceLine = regexp.MustCompile(`^(?:\d+\s+)?([a-z_0-9]+)\((.*)$`)

// section returns the system calls strace saw between the n-th and the
// (n+1)-th close(-1), fdprobe's brackets (counting from 0), as "name(args".
func section(t *testing.T, trace string, n int) []string {
	t.Helper()
	var out []string
	seen := 0
	for _, l := range strings.Split(trace, "\n") {
		m := traceLine.FindStringSubmatch(strings.TrimSpace(l))
		if m == nil {
			continue
		}
		if m[1] == "close" && strings.HasPrefix(m[2], "-1)") {
			seen++
			continue
		}
		if seen == 2*n+1 {
			out = append(out, m[1]+"("+m[2])
		}
	}
	if seen < 2*n+2 {
		t.Fatalf("the trace has %d brackets, want %d:\n%s", seen, 2*n+2, trace)
	}
	return out
}

func names(calls []string) []string {
	var out []string
	for _, c := range calls {
		out = append(out, c[:strings.IndexByte(c, '(')])
	}
	return out
}

// TestHotPathSystemCalls: on a cached answer, a TCP connect on a fresh
// socket, two sendto on a fresh unconnected UDP socket and a bind to
// 0.0.0.0:P make no system call beyond the bind (and, for TCP, the
// IP_BIND_ADDRESS_NO_PORT) that a preload forcing the source address
// makes: socket type, protocol and bound state come from the descriptor
// table and the bind's own result, and the second send does nothing.
func TestHotPathSystemCalls(t *testing.T) {
	requireStrace(t)
	build(t)
	s := newStandIn(t, reply(vipAnswer(standInVIP, 300)))
	tcp, udp := newTCPServer(t), newUDPServer(t)
	port := freePort(t)
	vipBind := `inet_addr("` + standInVIP + `")`
	for _, c := range []struct {
		name  string
		args  []string
		want  []string
		check func(t *testing.T, calls []string)
	}{
		{"TCP connect", []string{"hottcp", "127.0.0.1", tcp.port()},
			[]string{"socket", "setsockopt", "bind", "connect", "close"},
			func(t *testing.T, calls []string) {
				if !strings.Contains(calls[1], "IP_BIND_ADDRESS_NO_PORT") || !strings.Contains(calls[2], vipBind) {
					t.Errorf("want IP_BIND_ADDRESS_NO_PORT and a bind to the VIP: %q", calls)
				}
				if got := tcp.next(t); got != standInVIP {
					t.Errorf("server saw %s, want the VIP", got)
				}
			}},
		{"UDP sendto twice", []string{"hotudp", "127.0.0.1", udp.port()},
			[]string{"socket", "bind", "sendto", "sendto", "close"},
			func(t *testing.T, calls []string) {
				if !strings.Contains(calls[1], vipBind) {
					t.Errorf("want a bind to the VIP: %q", calls)
				}
				for range 2 {
					if got := udp.next(t); got != standInVIP {
						t.Errorf("server saw %s, want the VIP", got)
					}
				}
			}},
		{"bind 0.0.0.0:P", []string{"hotbind", port},
			[]string{"socket", "bind"},
			func(t *testing.T, calls []string) {
				if !strings.Contains(calls[1], vipBind) || !strings.Contains(calls[1], "htons("+port+")") {
					t.Errorf("want a bind to the VIP, port %s: %q", port, calls)
				}
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "trace")
			// A first TCP connect asks the daemon; the calls under test
			// are the second bracket, on the cached answer.
			args := append([]string{"-f", "-qq", "-e", "trace=network,close", "-o", out,
				"-E", "LD_PRELOAD=" + libPath, "-E", "IPVIRT_SOCKET=" + s.path,
				fdPath, "hottcp", "127.0.0.1", tcp.port()}, c.args...)
			res := runPlain(t, nil, append([]string{straceBin}, args...)...)
			if res.code != 0 || res.stderr != "" {
				t.Fatalf("exit %d, stdout %q, stderr %q", res.code, res.stdout, res.stderr)
			}
			if got := tcp.next(t); got != standInVIP {
				t.Fatalf("first connect: server saw %s, want the VIP", got)
			}
			b, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			calls := section(t, string(b), 1)
			if strings.Join(names(calls), " ") != strings.Join(c.want, " ") {
				t.Fatalf("system calls %v, want %v:\n%s", names(calls), c.want, strings.Join(calls, "\n"))
			}
			c.check(t, calls)
			t.Logf("%s:\n%s", c.name, strings.Join(calls, "\n"))
		})
	}
}

// freePort is a TCP port nothing listens on at the moment.
func freePort(t *testing.T) string {
	t.Helper()
	srv := newTCPServer(t)
	p := srv.port()
	srv.l.Close()
	return p
}

// fdRun runs fdprobe's operations against a stand-in answering the VIP.
func fdRun(t *testing.T, s *standIn, args ...string) result {
	t.Helper()
	res := runPlain(t, s.env(), append([]string{fdPath}, args...)...)
	if res.code != 0 {
		t.Fatalf("fdprobe %v: exit %d, stdout %q, stderr %q", args, res.code, res.stdout, res.stderr)
	}
	return res
}

// TestDescriptorReuse: a TCP or UDP socket's number, once freed, carries
// nothing to its next holder. The number is freed each way a program can
// (close, also with an open() taking and freeing it in between; fclose of
// fdopen; close_range; closefrom; dup2 and dup3 onto it; a raw close
// system call the library never sees) and taken by a raw or ping (ICMP,
// SOCK_DGRAM like UDP) socket, made by socket() or by a raw system call
// that the library does not see either (as with dup, F_DUPFD or
// SCM_RIGHTS): each connects from the address the kernel picks, and the
// daemon is never asked. A stale entry would have the library bind it to
// the VIP. Ping sockets run in a network namespace of their own, where
// they can be allowed, when the test runs as root.
func TestDescriptorReuse(t *testing.T) {
	build(t)
	s := newStandIn(t, reply(vipAnswer(standInVIP, 300)))
	args := []string{"reuse"}
	if os.Geteuid() == 0 {
		args = []string{"netns", "reuse"}
	}
	res := fdRun(t, s, args...)
	for _, op := range []string{"reuse-open", "reuse-close", "reuse-syscall", "reuse-fclose", "reuse-close_range",
		"reuse-closefrom", "reuse-dup2", "reuse-dup3", "reuse-icmp", "reuse-icmp-close"} {
		got := res.line(t, op)
		if got == "errno 13" && strings.HasPrefix(op, "reuse-icmp") && os.Geteuid() != 0 {
			t.Logf("%s: ping sockets not allowed here (net.ipv4.ping_group_range)", op)
			continue
		}
		if ip := strings.Fields(got)[0]; ip != "127.0.0.1" {
			t.Errorf("%s: local address %q, want 127.0.0.1 (left alone)", op, got)
		}
	}
	if n := s.conns.Load(); n != 0 {
		t.Errorf("the library asked the daemon %d times for sockets it never touches", n)
	}
}

// TestDup2: dup2() of a raw socket onto a TCP socket's number leaves the
// raw socket alone; a TCP socket dup2()ed to a number the table never saw
// is asked about and still leaves from the VIP.
func TestDup2(t *testing.T) {
	build(t)
	s := newStandIn(t, reply(vipAnswer(standInVIP, 300)))
	srv := newTCPServer(t)
	res := fdRun(t, s, "dup2", "127.0.0.1", srv.port())
	if got := res.line(t, "dup2-raw"); !strings.HasPrefix(got, "127.0.0.1 ") {
		t.Errorf("raw socket dup2()ed onto a TCP socket's number: local address %q, want 127.0.0.1", got)
	}
	if got := res.ip(t, "dup2-tcp"); got != standInVIP {
		t.Errorf("TCP socket dup2()ed to 100: bound to %s, want the VIP", got)
	}
	if got := srv.next(t); got != standInVIP {
		t.Errorf("server saw %s, want the VIP", got)
	}
}

// TestInheritedSockets: sockets kept across exec() are unknown to the new
// image's table: an unbound one still leaves from the VIP, and one the
// parent bound to 127.0.0.5 with IP_BIND_ADDRESS_NO_PORT (no port yet, so
// a bind would not fail) is left alone.
func TestInheritedSockets(t *testing.T) {
	build(t)
	s := newStandIn(t, reply(vipAnswer(standInVIP, 300)))
	srv := newTCPServer(t)
	res := fdRun(t, s, "inherit", "127.0.0.1", srv.port())
	if got := res.ip(t, "inherited"); got != standInVIP {
		t.Errorf("inherited unbound socket: bound to %s, want the VIP", got)
	}
	if got := res.ip(t, "inherited-bound"); got != "127.0.0.5" {
		t.Errorf("inherited socket bound to 127.0.0.5: now %s, want it left alone", got)
	}
	for _, want := range []string{standInVIP, "127.0.0.5"} {
		if got := srv.next(t); got != want {
			t.Errorf("server saw %s, want %s", got, want)
		}
	}
}

// TestProgramBound: a socket the program bound itself, to 127.0.0.5 port 0
// with IP_BIND_ADDRESS_NO_PORT, is left alone at connect(), although a
// bind to the VIP would succeed on it: bind() marked it.
func TestProgramBound(t *testing.T) {
	build(t)
	s := newStandIn(t, reply(vipAnswer(standInVIP, 300)))
	srv := newTCPServer(t)
	res := fdRun(t, s, "progbound", "127.0.0.1", srv.port())
	if got := res.ip(t, "progbound"); got != "127.0.0.5" {
		t.Errorf("socket bound by the program to 127.0.0.5: connected from %s", got)
	}
	if got := srv.next(t); got != "127.0.0.5" {
		t.Errorf("server saw %s, want 127.0.0.5", got)
	}
}

// TestWildcardBind: a program's bind to 0.0.0.0:0 with
// IP_BIND_ADDRESS_NO_PORT, made under a MIP answer, binds nothing, so the
// socket is still unbound when its connect() comes under a VIP answer, and
// leaves from the VIP.
func TestWildcardBind(t *testing.T) {
	build(t)
	mip := answerFrame(wire.Answer{Kind: wire.KindMIP, MachineIP: netip.MustParseAddr("127.0.0.1"), TTL: 1})
	s := newStandIn(t, func(s *standIn, n int, c net.Conn) {
		if s.readQuery(c) {
			if n == 1 {
				c.Write(mip)
			} else {
				c.Write(vipAnswer(standInVIP, 300))
			}
		}
		c.Close()
	})
	srv := newTCPServer(t)
	res := fdRun(t, s, "wildcard", "127.0.0.1", srv.port())
	if got := res.ip(t, "wildcard"); got != standInVIP {
		t.Errorf("socket bound to 0.0.0.0:0 without a port: connected from %s, want the VIP", got)
	}
	if got := srv.next(t); got != standInVIP {
		t.Errorf("server saw %s, want the VIP", got)
	}
	if n := s.conns.Load(); n != 2 {
		t.Errorf("%d questions to the daemon, want 2 (MIP, expired, then VIP)", n)
	}
}

// TestBoundByTheKernel: a UDP socket that already has a port (bound by a
// bind() the library never saw, or by the kernel at a send to a
// destination out of the VIP's scope) is left alone, as the bind the
// library tries fails with EINVAL, and errno stays what the program set;
// dissolved with connect(AF_UNSPEC), which unbinds it, the socket is
// unbound again and its next send leaves from the VIP.
func TestBoundByTheKernel(t *testing.T) {
	build(t)
	s := newStandIn(t, reply(vipAnswer(standInVIP, 300)))
	srv := newUDPServer(t)
	res := fdRun(t, s, "einval", "127.0.0.1", srv.port(), "disconnect", "127.0.0.1", srv.port())
	if got := res.ip(t, "einval"); got != "0.0.0.0" {
		t.Errorf("socket with a port: bound to %s, want 0.0.0.0 (left alone)", got)
	}
	if got := res.line(t, "einval errno-after"); got != "33" {
		t.Errorf("errno after the send: %s, want 33 (EDOM kept)", got)
	}
	if got := res.ip(t, "disconnect-bound"); got != "0.0.0.0" {
		t.Errorf("socket the kernel bound: now %s, want 0.0.0.0 (left alone)", got)
	}
	if got := res.ip(t, "disconnect-fresh"); got != standInVIP {
		t.Errorf("socket unbound by connect(AF_UNSPEC): bound to %s, want the VIP", got)
	}
	for i, want := range []string{"127.0.0.1", "127.0.0.1", standInVIP} {
		if got := srv.next(t); got != want {
			t.Errorf("datagram %d: server saw %s, want %s", i, got, want)
		}
	}
}

// TestBoundByAnIPv6Send: a dual-stack UDP socket that sent to an IPv6
// address first (the kernel bound it to [::]) is left alone when it sends
// to a v4-mapped address, and, as when the library asked the kernel at
// each call, the daemon is not asked about it.
func TestBoundByAnIPv6Send(t *testing.T) {
	build(t)
	s := newStandIn(t, reply(vipAnswer(standInVIP, 300)))
	srv := newUDPServer(t)
	res := fdRun(t, s, "v6first", "127.0.0.1", srv.port())
	if got := res.line(t, "v6first-ipv6"); got != "0" {
		t.Skipf("no IPv6 loopback here: a send to [::1] gave errno %s", got)
	}
	if got := res.line(t, "v6first-mapped"); got != "0" {
		t.Fatalf("send to ::ffff:127.0.0.1: errno %s", got)
	}
	if got := srv.next(t); got != "127.0.0.1" {
		t.Errorf("server saw %s, want 127.0.0.1 (a bound socket left alone)", got)
	}
	if n := s.conns.Load(); n != 0 {
		t.Errorf("the library asked the daemon %d times about a socket the kernel had bound", n)
	}
}

// TestOthersNeverAsk: AF_UNIX, netlink, raw and ICMP sockets and IPv6
// destinations pass through without a question to the daemon.
func TestOthersNeverAsk(t *testing.T) {
	build(t)
	s := newStandIn(t, reply(vipAnswer(standInVIP, 300)))
	res := runPlain(t, s.env(), probePath, "others", filepath.Join(t.TempDir(), "absent.sock"))
	if res.code != 0 {
		t.Fatalf("sockprobe exit %d: %s", res.code, res.stderr)
	}
	for _, op := range []string{"unix", "netlink", "raw", "icmp", "ipv6"} {
		res.line(t, op)
	}
	if n := s.conns.Load(); n != 0 {
		t.Errorf("the library asked the daemon %d times:\n%s", n, res.stdout)
	}
}
