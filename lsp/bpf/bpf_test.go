package bpf

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/ipvirt/ipvirt/internal/testenv"
	"github.com/ipvirt/ipvirt/sim/loginsession"
)

// These tests attach at the host's cgroup2 root, as ipvirtd does: every
// process on the machine passes through the programs, and only sessions
// in the maps (created here, with VIPs from 127.74.0.0/24) are changed.

var pool = []Range{{Start: netip.MustParseAddr("127.74.0.10"), End: netip.MustParseAddr("127.74.0.20")}}

// open attaches a fresh interceptor with its own pin directory.
func open(t *testing.T, enforce bool) (*Interceptor, string) {
	t.Helper()
	testenv.RequireRoot(t)
	pin := fmt.Sprintf("/sys/fs/bpf/ipvirt-test-%d-%s", os.Getpid(), strings.NewReplacer("/", "-", ".", "-").Replace(t.Name()))
	ic, err := Open(Options{PinDir: pin, Enforce: enforce, MachineIP: netip.MustParseAddr("127.0.0.1"), Pool: pool})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { ic.Close(); os.RemoveAll(pin) })
	return ic, pin
}

// peers is an HTTP server on 127.0.0.1 recording each client's address.
type peers struct {
	srv  *http.Server
	addr netip.AddrPort
	mu   sync.Mutex
	seen []string
}

func newPeers(t *testing.T) *peers {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &peers{addr: ln.Addr().(*net.TCPAddr).AddrPort()}
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		p.mu.Lock()
		p.seen = append(p.seen, host)
		p.mu.Unlock()
		fmt.Fprintln(w, "ok")
	})}
	go p.srv.Serve(ln)
	t.Cleanup(func() { p.srv.Close() })
	return p
}

func (p *peers) last() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.seen) == 0 {
		return ""
	}
	return p.seen[len(p.seen)-1]
}

// runIn runs argv in session s and returns its combined output; the
// session's leader discards output, so the program writes to a file.
func runIn(t *testing.T, s *loginsession.Session, argv ...string) (string, int) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	os.Chmod(filepath.Dir(out), 0o777)
	script := `"$@" >` + out + ` 2>&1; echo "exit $?" >>` + out
	pid, err := s.Run("/bin/sh", append([]string{"-c", script, "sh"}, argv...)...)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(out)
		if i := strings.LastIndex(string(b), "exit "); i >= 0 && strings.HasSuffix(string(b), "\n") {
			s.Reap(pid)
			var code int
			fmt.Sscanf(string(b[i:]), "exit %d", &code)
			return string(b[:i]), code
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%v did not finish", argv)
	return "", 0
}

// buildStatic builds the static Go and C clients.
func buildStatic(t *testing.T) (goBin, cBin string) {
	t.Helper()
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	goBin, cBin = filepath.Join(dir, "gohttp"), filepath.Join(dir, "cget")
	cmd := exec.Command("go", "build", "-o", goBin, "./testdata/gohttp")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if out, err := exec.Command("gcc", "-static", "-O2", "-o", cBin, "testdata/cget.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc -static (Debian package libc6-dev): %v\n%s", err, out)
	}
	return goBin, cBin
}

// TestProgramsLeaveFromTheirSessionsVIP: programs LD_PRELOAD cannot reach
// (a static Go binary, a static C binary) and ordinary ones (curl, python3)
// leave from their session's VIP; a session without an entry is untouched.
func TestProgramsLeaveFromTheirSessionsVIP(t *testing.T) {
	ic, _ := open(t, false)
	goBin, cBin := buildStatic(t)
	p := newPeers(t)
	url := "http://" + p.addr.String() + "/"
	vips := []string{"127.74.0.10", "127.74.0.11"}
	for i, vip := range vips {
		s := testenv.AuditSession(t, uint32(62001+i))
		if err := ic.SetSession(s.ID, netip.MustParseAddr(vip)); err != nil {
			t.Fatal(err)
		}
		for _, argv := range [][]string{
			{goBin, url},
			{cBin, p.addr.Addr().String(), fmt.Sprint(p.addr.Port())},
			{"/usr/bin/curl", "-s", "-o", "/dev/null", url},
			{"/usr/bin/python3", "-c", "import urllib.request,sys; urllib.request.urlopen(sys.argv[1]).read()", url},
		} {
			out, code := runIn(t, s, argv...)
			if code != 0 {
				t.Fatalf("%s in session %d: exit %d: %s", filepath.Base(argv[0]), s.ID, code, out)
			}
			if got := p.last(); got != vip {
				t.Errorf("%s in session %d: server saw %s, want the VIP %s", filepath.Base(argv[0]), s.ID, got, vip)
			}
		}
	}
	plain := testenv.AuditSession(t, 62009)
	if out, code := runIn(t, plain, cBin, p.addr.Addr().String(), fmt.Sprint(p.addr.Port())); code != 0 {
		t.Fatalf("session without entry: exit %d: %s", code, out)
	}
	if got := p.last(); got != "127.0.0.1" {
		t.Errorf("a session without an entry left from %s, want 127.0.0.1 (untouched)", got)
	}
	st, err := ic.Stats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel counters: %+v; session events: %v", st, ic.SessionEvents())
}

// bindProbe binds a TCP socket to argv[1] and prints the errno (0: bound).
// One line: the session leader reads its commands line by line.
const bindProbe = `exec("import socket,sys\ns=socket.socket()\ntry:\n s.bind((sys.argv[1],0)); print(0)\nexcept OSError as e:\n print(e.errno)")`

// TestEnforcement: a session binding another session's VIP, or a pool
// address nobody gave it, gets EPERM, and the kernel counts it.
func TestEnforcement(t *testing.T) {
	ic, _ := open(t, true)
	a, b, other := testenv.AuditSession(t, 62101), testenv.AuditSession(t, 62102), testenv.AuditSession(t, 62103)
	if err := ic.SetSession(a.ID, netip.MustParseAddr("127.74.0.12")); err != nil {
		t.Fatal(err)
	}
	if err := ic.SetSession(b.ID, netip.MustParseAddr("127.74.0.13")); err != nil {
		t.Fatal(err)
	}
	before, _ := ic.Denials()
	tests := []struct {
		name string
		s    *loginsession.Session
		addr string
		want string
	}{
		{"own VIP", a, "127.74.0.12", "0"},
		{"another session's VIP", a, "127.74.0.13", "1"},
		{"pool address held by nobody", a, "127.74.0.19", "1"},
		{"unvirtualized session, pool address", other, "127.74.0.18", "1"},
		{"unvirtualized session, held VIP", other, "127.74.0.12", "1"},
		{"outside the pool", a, "127.0.0.9", "0"},
		{"wildcard becomes the VIP", a, "0.0.0.0", "0"},
	}
	for _, tt := range tests {
		out, code := runIn(t, tt.s, "/usr/bin/python3", "-c", bindProbe, tt.addr)
		if code != 0 || strings.TrimSpace(out) != tt.want {
			t.Errorf("%s: bind %s printed %q (exit %d), want errno %s", tt.name, tt.addr, out, code, tt.want)
		}
	}
	after, err := ic.Denials()
	if err != nil {
		t.Fatal(err)
	}
	if after-before != 4 {
		t.Errorf("denials counted %d, want 4", after-before)
	}
}

// attached lists the names of programs attached to the cgroup for hook.
func attached(t *testing.T, cgroup string, hook ebpf.AttachType) []string {
	t.Helper()
	f, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: hook})
	if err != nil {
		t.Fatalf("query %s: %v", cgroup, err)
	}
	var names []string
	for _, p := range res.Programs {
		prog, err := ebpf.NewProgramFromID(p.ID)
		if err != nil {
			continue
		}
		if info, err := prog.Info(); err == nil {
			names = append(names, info.Name)
		}
		prog.Close()
	}
	return names
}

func countPrefix(names []string, prefix string) int {
	n := 0
	for _, s := range names {
		if strings.HasPrefix(s, prefix) {
			n++
		}
	}
	return n
}

var hooks = []ebpf.AttachType{ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupUDP4Sendmsg, ebpf.AttachCGroupInet4Bind,
	ebpf.AttachCGroupInet6Connect, ebpf.AttachCGroupUDP6Sendmsg, ebpf.AttachCGroupInet6Bind}

// TestCloseDetaches: after Close nothing of ours is attached and the pins
// are gone.
func TestCloseDetaches(t *testing.T) {
	testenv.RequireRoot(t)
	pin := fmt.Sprintf("/sys/fs/bpf/ipvirt-test-%d-close", os.Getpid())
	ic, err := Open(Options{PinDir: pin})
	if err != nil {
		t.Fatal(err)
	}
	cg := ic.CgroupPath()
	mine := func() int {
		n := 0
		for _, h := range hooks {
			n += countPrefix(attached(t, cg, h), "ipvirt_")
		}
		return n
	}
	// Other tests may run an interceptor at the same time: count relative.
	during := mine()
	if during < len(hooks) {
		t.Fatalf("%d ipvirt programs attached to %s, want at least %d", during, cg, len(hooks))
	}
	if err := ic.Close(); err != nil {
		t.Fatal(err)
	}
	if after := mine(); after != during-len(hooks) {
		t.Errorf("after Close %d ipvirt programs attached, want %d", after, during-len(hooks))
	}
	if _, err := os.Stat(pin); !os.IsNotExist(err) {
		t.Errorf("pin directory %s left behind: %v", pin, err)
	}
}

// TestReleaseKeepsWorkingAndAdopts: a daemon killed with SIGKILL leaves
// its programs attached and pinned (Release is what the kernel keeps of a
// dead process): live sessions keep their VIP, and the next Open adopts.
func TestReleaseKeepsWorkingAndAdopts(t *testing.T) {
	ic, pin := open(t, false)
	_, cBin := buildStatic(t)
	p := newPeers(t)
	s := testenv.AuditSession(t, 62201)
	vip := netip.MustParseAddr("127.74.0.14")
	if err := ic.SetSession(s.ID, vip); err != nil {
		t.Fatal(err)
	}
	if err := ic.Release(); err != nil {
		t.Fatal(err)
	}
	if out, code := runIn(t, s, cBin, p.addr.Addr().String(), fmt.Sprint(p.addr.Port())); code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	if got := p.last(); got != vip.String() {
		t.Errorf("with no daemon holding the interceptor the server saw %s, want %s", got, vip)
	}
	again, err := Open(Options{PinDir: pin, MachineIP: netip.MustParseAddr("127.0.0.1"), Pool: pool})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	t.Cleanup(func() { again.Close() })
	if !again.Adopted() {
		t.Fatal("the second Open attached fresh instead of adopting the pins")
	}
	entries, err := again.Entries()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range entries {
		if e.Session == s.ID && e.VIP == vip {
			found = true
		}
	}
	if !found {
		t.Fatalf("adopted entries %+v lack session %d → %s", entries, s.ID, vip)
	}
}
