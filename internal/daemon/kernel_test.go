package daemon_test

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/ipvirt/ipvirt/internal/testenv"
	"github.com/ipvirt/ipvirt/sim/loginsession"
)

// kernelProgs counts the ipvirt programs attached at the cgroup2
// directory dir for connect4 (one per attached interceptor).
func kernelProgs(t *testing.T, dir string) int {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: ebpf.AttachCGroupInet4Connect})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range res.Programs {
		if prog, err := ebpf.NewProgramFromID(p.ID); err == nil {
			if info, err := prog.Info(); err == nil && info.Name == "ipvirt_connect4" {
				n++
			}
			prog.Close()
		}
	}
	return n
}

// TestKernelInterceptor runs ipvirtd with `interceptor: bpf`: a static C
// binary (no LD_PRELOAD possible) in a new audit session leaves from the
// VIP the daemon allocated for the session ahead of its first connect; a
// SIGKILLed daemon leaves the programs working and the next one adopts
// them; SIGTERM detaches.
func TestKernelInterceptor(t *testing.T) {
	testenv.RequireRoot(t)
	e := newEnv(t, "interceptor: bpf\nstatic_pool: {start: 127.73.0.10, end: 127.73.0.20, subnet_mask: 255.255.255.0}\nadmins: {users: [], groups: []}\n")
	// The daemon is scoped to the test's cgroup: its programs attach
	// there, and nowhere above it.
	scope := e.group.Dir
	const before = 0
	if got := kernelProgs(t, scope); got != before+1 {
		t.Fatalf("%d ipvirt connect4 programs attached at %s, want %d:\n%s", got, scope, before+1, e.d.Logs())
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	cget := filepath.Join(dir, "cget")
	if out, err := exec.Command("gcc", "-static", "-O2", "-o", cget, "../../lsp/bpf/testdata/cget.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc -static: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		mu.Lock()
		seen = append(seen, host)
		mu.Unlock()
	})}
	go srv.Serve(ln)
	defer srv.Close()
	port := fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)
	last := func() string {
		mu.Lock()
		defer mu.Unlock()
		if len(seen) == 0 {
			return ""
		}
		return seen[len(seen)-1]
	}
	get := func(s *loginsession.Session) {
		t.Helper()
		pid, err := s.Run(cget, "127.0.0.1", port)
		if err != nil {
			t.Fatal(err)
		}
		s.Reap(pid)
	}

	s := e.session(63001)
	// The daemon learns of the session without the session asking (a scan,
	// or the kernel's session event), and fills the map before the client
	// runs: no process of the session ever talks to ipvirtd.
	var vip string
	eventually(t, "a VIP for the new session", func() bool { vip = e.sessionVIP(s.ID); return vip != "" })
	get(s)
	if got := last(); got != vip {
		t.Fatalf("static binary left from %s, want the session's VIP %s", got, vip)
	}

	// SIGKILL: the kernel keeps the programs and maps; the session keeps
	// its VIP with no daemon at all.
	if err := e.d.Stop(syscall.SIGKILL); err != nil && !strings.Contains(err.Error(), "killed") {
		t.Logf("stop: %v", err)
	}
	get(s)
	if got := last(); got != vip {
		t.Fatalf("with the daemon killed the client left from %s, want %s", got, vip)
	}
	if got := kernelProgs(t, scope); got != before+1 {
		t.Fatalf("after SIGKILL %d programs attached, want %d", got, before+1)
	}
	e.start()
	st, err := e.client().Status()
	if err != nil || !strings.Contains(st.Interceptor, "adopted") {
		t.Fatalf("restarted daemon's interceptor: %q (%v), want adopted", st.Interceptor, err)
	}
	if got := kernelProgs(t, scope); got != before+1 {
		t.Fatalf("after adoption %d programs attached, want %d (no second attach)", got, before+1)
	}
	get(s)
	if got := last(); got != vip {
		t.Fatalf("after adoption the client left from %s, want %s", got, vip)
	}

	// SIGTERM detaches.
	if err := e.d.Stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if got := kernelProgs(t, scope); got != before {
		t.Fatalf("after SIGTERM %d programs attached, want %d", got, before)
	}
}

// A reload that moves static_pool moves what enforcement guards: the
// kernel refuses the new pool's addresses to sessions that do not hold
// them. (The kernel was once told the pool at start-up only, so after a
// reload it guarded the old range and let anyone bind the new one.)
func TestReloadedPoolIsEnforced(t *testing.T) {
	testenv.RequireRoot(t)
	e := newEnv(t, "interceptor: bpf\nstatic_pool: {start: 127.73.1.10, end: 127.73.1.20, subnet_mask: 255.255.255.0}\nadmins: {users: [], groups: []}\n")
	s := e.session(63101)
	eventually(t, "a VIP for the session", func() bool { return e.sessionVIP(s.ID) != "" })
	// One line: the session runs commands it reads line by line.
	const script = `import errno, socket, sys; exec("try:\n s=socket.socket(); s.bind((sys.argv[1], 0)); print('ok')\nexcept OSError as e:\n print(errno.errorcode[e.errno])")`
	bind := func(addr string) string {
		t.Helper()
		// The session's user writes the answer: a directory it can reach
		// (t.TempDir's parent is root's alone).
		dir, err := os.MkdirTemp("", "ipvirt-bind-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		os.Chmod(dir, 0o777)
		out := filepath.Join(dir, "bind")
		pid, err := s.Run("/bin/sh", "-c", `exec /usr/bin/python3 -c "$1" "$2" > "$3" 2>&1`, "sh", script, addr, out)
		if err != nil {
			t.Fatal(err)
		}
		s.Reap(pid)
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatalf("bind %s: %v", addr, err)
		}
		return strings.TrimSpace(string(b))
	}
	const next = "127.73.2.15"
	if got := bind(next); got != "ok" {
		t.Fatalf("bind %s, outside the pool, before the reload: %s", next, got)
	}
	b, err := os.ReadFile(e.d.Config)
	if err != nil {
		t.Fatal(err)
	}
	moved := strings.Replace(string(b), "start: 127.73.1.10, end: 127.73.1.20", "start: 127.73.2.10, end: 127.73.2.20", 1)
	if err := os.WriteFile(e.d.Config, []byte(moved), 0o644); err != nil {
		t.Fatal(err)
	}
	e.d.Signal(syscall.SIGHUP)
	eventually(t, "the reload", func() bool { return strings.Contains(e.d.Logs(), "configuration reloaded") })
	if got := bind(next); got != "EPERM" {
		t.Fatalf("bind %s, in the reloaded pool and not the session's: %s, want EPERM", next, got)
	}
}
