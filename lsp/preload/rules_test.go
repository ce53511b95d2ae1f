package preload

import (
	"fmt"
	"strings"
	"testing"
)

// TestBindRules: a socket the program bound to a specific address is left
// alone; a bind to 0.0.0.0 becomes a bind to the VIP with the port kept.
func TestBindRules(t *testing.T) {
	requireTool(t, python3, "python3")
	e := newEnv(t, "")
	s := e.session(60101)
	vip := e.vip(s)
	srv := newTCPServer(t)
	res := runIn(t, s, e.preloadEnv(), python3, probeScript(t),
		"bindconnect", "127.0.0.5", "127.0.0.1", srv.port(),
		"bind", "0.0.0.0", "0",
		"bind", "127.0.0.6", "0")
	if res.code != 0 {
		t.Fatalf("python3 exit %d, stderr:\n%s", res.code, res.stderr)
	}
	if got := srv.next(t); got != "127.0.0.5" {
		t.Errorf("explicitly bound socket: server saw %s, want 127.0.0.5 (left alone)", got)
	}
	lines := strings.Split(strings.TrimSpace(res.stdout), "\n")
	var binds []string
	for _, l := range lines {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "bind" {
			binds = append(binds, f[1])
		}
	}
	if len(binds) != 2 || binds[0] != vip || binds[1] != "127.0.0.6" {
		t.Fatalf("binds %v, want [%s 127.0.0.6] (0.0.0.0 → VIP, specific address kept)\n%s", binds, vip, res.stdout)
	}
}

// TestDenied: with on_exhausted: deny and the pool taken, connect fails
// with EACCES, and errno is exactly that.
func TestDenied(t *testing.T) {
	requireTool(t, python3, "python3")
	build(t)
	e := newEnv(t, "on_exhausted: deny\nstatic_pool: {start: 127.77.1.10, end: 127.77.1.10, subnet_mask: 255.255.255.0}\n")
	first := e.session(60111)
	e.vip(first) // takes the only address
	late := e.session(60112)
	srv := newTCPServer(t)
	res := runIn(t, late, e.preloadEnv(), probePath, "connect", "127.0.0.1", srv.port(), "udpconnect", "127.0.0.1", "9")
	if got := res.line(t, "connect"); got != "errno 13" {
		t.Errorf("connect under a denied answer: %q, want errno 13 (EACCES)", got)
	}
	if got := res.line(t, "udpconnect"); got != "errno 13" {
		t.Errorf("UDP connect under a denied answer: %q, want errno 13 (EACCES)", got)
	}
	// Nothing reached the server.
	select {
	case a := <-srv.peers:
		t.Errorf("server accepted %s from a denied session", a)
	default:
	}
}

// TestUDPWithoutConnect: sendto, sendmsg and sendmmsg on an unconnected UDP
// socket leave from the VIP.
func TestUDPWithoutConnect(t *testing.T) {
	requireTool(t, python3, "python3")
	build(t)
	e := newEnv(t, "")
	s := e.session(60121)
	vip := e.vip(s)
	srv := newUDPServer(t)
	res := runIn(t, s, e.preloadEnv(), python3, probeScript(t), "udp", "127.0.0.1", srv.port(), "udpmsg", "127.0.0.1", srv.port())
	if res.code != 0 {
		t.Fatalf("python3 exit %d, stderr:\n%s", res.code, res.stderr)
	}
	for _, op := range []string{"sendto", "sendmsg"} {
		if got := srv.next(t); got != vip {
			t.Errorf("%s: server saw %s, want the VIP %s", op, got, vip)
		}
	}
	res = runIn(t, s, e.preloadEnv(), probePath, "sendmmsg", "127.0.0.1", srv.port())
	if res.code != 0 {
		t.Fatalf("sockprobe exit %d, stderr:\n%s", res.code, res.stderr)
	}
	for i := 0; i < 2; i++ {
		if got := srv.next(t); got != vip {
			t.Errorf("sendmmsg datagram %d: server saw %s, want the VIP %s", i, got, vip)
		}
	}
}

// TestForkReusesTheAnswer: a child forked after the first connect uses the
// cached answer: same VIP, no second round trip to the daemon.
func TestForkReusesTheAnswer(t *testing.T) {
	requireTool(t, python3, "python3")
	e := newEnv(t, "")
	s := e.session(60131)
	vip := e.vip(s)
	before := e.queries()
	srv := newTCPServer(t)
	res := runIn(t, s, e.preloadEnv(), python3, probeScript(t), "fork", "127.0.0.1", srv.port())
	if res.code != 0 {
		t.Fatalf("python3 exit %d, stderr:\n%s", res.code, res.stderr)
	}
	for _, who := range []string{"parent", "child"} {
		if got := srv.next(t); got != vip {
			t.Errorf("%s: server saw %s, want the VIP %s", who, got, vip)
		}
	}
	if got := res.ip(t, "child"); got != vip {
		t.Errorf("child bound to %s, want %s", got, vip)
	}
	if n := e.queries() - before; n != 1 {
		t.Errorf("parent and forked child made %d QUERYs, want 1", n)
	}
}

// TestManyThreads: 64 threads released at once all leave from the VIP, and
// the process asks the daemon once (concurrent first calls share one round
// trip), with errno intact on every thread.
func TestManyThreads(t *testing.T) {
	build(t)
	e := newEnv(t, "")
	s := e.session(60141)
	vip := e.vip(s)
	before := e.queries()
	srv := newTCPServer(t)
	const n = 64
	res := runIn(t, s, e.preloadEnv(), probePath, "threads", fmt.Sprint(n), "127.0.0.1", srv.port())
	if res.code != 0 {
		t.Fatalf("sockprobe exit %d, stderr:\n%s", res.code, res.stderr)
	}
	got := 0
	for _, l := range strings.Split(res.stdout, "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || f[0] != "thread" {
			continue
		}
		got++
		if f[1] != vip {
			t.Errorf("thread line %q, want the VIP %s", l, vip)
		}
	}
	if got != n {
		t.Fatalf("%d thread lines, want %d:\n%s", got, n, res.stdout)
	}
	for i := 0; i < n; i++ {
		if a := srv.next(t); a != vip {
			t.Errorf("server saw %s, want the VIP %s", a, vip)
		}
	}
	q := e.queries() - before
	t.Logf("%d threads: %d daemon round trips", n, q)
	if q < 1 || q > 2 {
		t.Errorf("%d threads made %d QUERYs; want 1 (one more allowed for a thread that raced the first)", n, q)
	}
}

// TestErrnoPreserved: a successful intercepted connect leaves errno as the
// program set it (C code reads errno after successful calls more often than
// it should).
func TestErrnoPreserved(t *testing.T) {
	build(t)
	e := newEnv(t, "")
	s := e.session(60151)
	vip := e.vip(s)
	srv := newTCPServer(t)
	res := runIn(t, s, e.preloadEnv(), probePath, "errno", "127.0.0.1", srv.port())
	line := res.line(t, "errno")
	if !strings.HasPrefix(line, vip+" ") || !strings.HasSuffix(strings.TrimSpace(res.stdout), "errno-after 33") {
		t.Fatalf("errno probe: %q, want a connect from %s and errno-after 33 (EDOM kept)", res.stdout, vip)
	}
	srv.next(t)
}
