package preload

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// TestPythonSessionsGetTheirVIPs: python3 in two sessions connects over
// AF_INET, over a dual-stack AF_INET6 socket to a v4-mapped address, and
// from an AF_INET6 socket bound to [::]; the server sees each session's own
// VIP every time, and the two sessions differ.
func TestPythonSessionsGetTheirVIPs(t *testing.T) {
	requireTool(t, python3, "python3")
	e := newEnv(t, "")
	srv := newTCPServer(t)
	seen := map[string]bool{}
	for _, uid := range []uint32{60001, 60002} {
		s := e.session(uid)
		vip := e.vip(s)
		if seen[vip] {
			t.Fatalf("two sessions share VIP %s", vip)
		}
		seen[vip] = true
		res := runIn(t, s, e.preloadEnv(), python3, probeScript(t),
			"connect", "127.0.0.1", srv.port(),
			"connect6", "::ffff:127.0.0.1", srv.port(),
			"bind6any", "::ffff:127.0.0.1", srv.port())
		if res.code != 0 || len(res.ipvirtLines()) != 0 {
			t.Fatalf("python3 exit %d, stderr:\n%s", res.code, res.stderr)
		}
		for _, op := range []string{"connect", "connect6", "bind6any"} {
			if got := srv.next(t); got != vip {
				t.Errorf("session %d (%s): server saw %s, want the VIP %s", s.ID, op, got, vip)
			}
			if got := res.ip(t, op); got != vip {
				t.Errorf("session %d (%s): socket bound to %s, want %s", s.ID, op, got, vip)
			}
		}
	}
}

// TestCurl: curl in two sessions fetches from an HTTP server on 127.0.0.1,
// which sees each session's VIP as RemoteAddr.
func TestCurl(t *testing.T) {
	requireTool(t, curlBin, "curl")
	e := newEnv(t, "")
	var mu sync.Mutex
	var remotes []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		mu.Lock()
		remotes = append(remotes, host)
		mu.Unlock()
		io.WriteString(w, host)
	}))
	defer srv.Close()
	var vips []string
	for _, uid := range []uint32{60011, 60012} {
		s := e.session(uid)
		vip := e.vip(s)
		vips = append(vips, vip)
		res := runIn(t, s, e.preloadEnv(), curlBin, "-sS", "--max-time", "30", srv.URL+"/")
		if res.code != 0 {
			t.Fatalf("curl exit %d: %s", res.code, res.stderr)
		}
		if strings.TrimSpace(res.stdout) != vip {
			t.Errorf("session %d: server answered curl %q, want the VIP %s; curl's stderr:\n%s", s.ID, res.stdout, vip, res.stderr)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(remotes) != 2 || remotes[0] != vips[0] || remotes[1] != vips[1] || vips[0] == vips[1] {
		t.Fatalf("server saw %v, sessions have %v", remotes, vips)
	}
}

// TestNetcat: OpenBSD netcat over TCP and over UDP (a connected UDP
// socket) comes from the session's VIP.
func TestNetcat(t *testing.T) {
	requireTool(t, netcat, "netcat-openbsd")
	e := newEnv(t, "")
	s := e.session(60021)
	vip := e.vip(s)

	tcp := newTCPServer(t)
	res := startInput(t, s, e.preloadEnv(), "hello\n", netcat, "-N", "-w", "10", "127.0.0.1", tcp.port()).wait()
	if res.code != 0 {
		t.Fatalf("nc (TCP) exit %d: %s", res.code, res.stderr)
	}
	if got := tcp.next(t); got != vip {
		t.Errorf("TCP server saw %s, want the VIP %s", got, vip)
	}

	udp := newUDPServer(t)
	res = startInput(t, s, e.preloadEnv(), "hello\n", netcat, "-u", "-w", "1", "127.0.0.1", udp.port()).wait()
	if res.code != 0 {
		t.Fatalf("nc -u exit %d: %s", res.code, res.stderr)
	}
	if got := udp.next(t); got != vip {
		t.Errorf("UDP server saw %s, want the VIP %s", got, vip)
	}
}

// TestIpvirtctlRun: `ipvirtctl --socket S run CMD` finds the library
// through $IPVIRT_PRELOAD and passes the socket on.
func TestIpvirtctlRun(t *testing.T) {
	requireTool(t, python3, "python3")
	e := newEnv(t, "")
	s := e.session(60031)
	vip := e.vip(s)
	srv := newTCPServer(t)
	res := runIn(t, s, []string{"IPVIRT_PRELOAD=" + libPath}, e.ctl, "--socket", e.d.Socket, "run", "--",
		python3, probeScript(t), "connect", "127.0.0.1", srv.port())
	if res.code != 0 {
		t.Fatalf("ipvirtctl run exit %d: %s", res.code, res.stderr)
	}
	if got := srv.next(t); got != vip {
		t.Fatalf("server saw %s, want the VIP %s", got, vip)
	}
}

// TestMIPChangesNothing: a daemon that answers MIP (virtualization
// disabled) leaves every call as the program made it, and the library
// prints nothing.
func TestMIPChangesNothing(t *testing.T) {
	requireTool(t, python3, "python3")
	e := newEnv(t, "enabled: false\n")
	s := e.session(60041)
	srv := newTCPServer(t)
	res := runIn(t, s, e.preloadEnv(), python3, probeScript(t),
		"connect", "127.0.0.1", srv.port(), "bind", "0.0.0.0", "0")
	if res.code != 0 || res.stderr != "" {
		t.Fatalf("python3 exit %d, stderr %q", res.code, res.stderr)
	}
	if got := srv.next(t); got != "127.0.0.1" {
		t.Errorf("server saw %s, want 127.0.0.1", got)
	}
	if got := res.ip(t, "bind"); got != "0.0.0.0" {
		t.Errorf("bind to 0.0.0.0 became %s under a MIP answer", got)
	}
	if n := e.queries(); n != 1 {
		t.Errorf("daemon served %d QUERYs, want 1", n)
	}
	if !strings.Contains(res.stdout, "connect 127.0.0.1") {
		t.Errorf("output: %s", res.stdout)
	}
}
