package daemon_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/internal/testenv"
	"github.com/ipvirt/ipvirt/sim/loginsession"
)

// acceptLog is a TCP server on 127.0.0.1 that records the source address
// of every connection at accept(), as a database that keys on the client
// address sees it, and answers enough for cget to exit 0.
type acceptLog struct {
	port string
	mu   sync.Mutex
	from map[string]int
	n    int
}

func newAcceptLog(t *testing.T) *acceptLog {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &acceptLog{port: fmt.Sprint(ln.Addr().(*net.TCPAddr).Port), from: map[string]int{}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			a.mu.Lock()
			a.from[host]++
			a.n++
			a.mu.Unlock()
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				buf := make([]byte, 256)
				c.Read(buf)
				io.WriteString(c, "HTTP/1.0 200 OK\r\n\r\nok\n")
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return a
}

func (a *acceptLog) snapshot() (map[string]int, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string]int, len(a.from))
	for k, v := range a.from {
		out[k] = v
	}
	return out, a.n
}

// buildCget builds the static C client (no LD_PRELOAD possible) into a
// directory every session user can read, at name.
func buildCget(t *testing.T, names ...string) []string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ipvirt-cget-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	var out []string
	for _, n := range names {
		p := filepath.Join(dir, n)
		if b, err := exec.Command("gcc", "-static", "-O2", "-o", p, "../../lsp/bpf/testdata/cget.c").CombinedOutput(); err != nil {
			t.Fatalf("gcc -static: %v\n%s", err, b)
		}
		out = append(out, p)
	}
	return out
}

// storm logs on n sessions at once (uids from uid0) and has each run argv
// as its very first program, the moment its logon is done: no scan, no
// pre-allocation and no question to the daemon can come first. It returns
// the sessions once every program has exited.
func storm(t *testing.T, e *env, n int, uid0 uint32, argv func(i int) []string) []*loginsession.Session {
	t.Helper()
	sess := make([]*loginsession.Session, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			s, err := loginsession.StartWrapped(context.Background(), e.kind, uid0+uint32(i), e.wrap)
			if err != nil {
				errs <- err
				return
			}
			sess[i] = s
			a := argv(i)
			pid, err := s.Run(a[0], a[1:]...)
			if err != nil {
				errs <- err
				return
			}
			s.Reap(pid)
		})
	}
	wg.Wait()
	for _, s := range sess {
		if s != nil {
			t.Cleanup(func() { s.Close() })
		}
	}
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return sess
}

const firstUsePool = "static_pool: {start: 127.72.0.1, end: 127.72.3.250, subnet_mask: 255.255.0.0}\n"

// TestFirstConnectAtLogon (issue 11): 200 sessions log on at once and each
// connects as its very first act, with pre-allocation off and nothing in
// the session ever asking the daemon: every connection reaches the
// server's accept() from a VIP of its own, none from the machine IP. The
// kernel took each from the stock; the daemon then made each a durable
// lease of its session.
func TestFirstConnectAtLogon(t *testing.T) {
	testenv.RequireRoot(t)
	const n = 200
	e := newEnv(t, "interceptor: bpf\n"+firstUsePool+"kernel_stock: 256\npreallocate: false\nadmins: {users: [], groups: []}\n")
	eventually(t, "a full stock", func() bool { return stockFull(e, 256) })
	srv := newAcceptLog(t)
	cget := buildCget(t, "cget")[0]
	sess := storm(t, e, n, 64000, func(int) []string { return []string{cget, "127.0.0.1", srv.port} })

	from, total := srv.snapshot()
	if total != n {
		t.Fatalf("the server accepted %d connections, want %d", total, n)
	}
	if from["127.0.0.1"] != 0 {
		t.Fatalf("%d of %d first connects left from the machine IP: %v", from["127.0.0.1"], n, from)
	}
	for addr, c := range from {
		if !strings.HasPrefix(addr, "127.72.") || c != 1 {
			t.Fatalf("%s made %d connections, want one VIP per session from the pool: %v", addr, c, from)
		}
	}
	// The daemon records each as its session's lease.
	eventually(t, "every assignment recorded as its session's lease", func() bool {
		for _, s := range sess {
			vip := e.sessionVIP(s.ID)
			if vip == "" || from[vip] != 1 {
				return false
			}
		}
		return true
	})
	if v, err := e.d.Metric("ipvirt_duplicate_vips"); err != nil || v != 0 {
		t.Fatalf("ipvirt_duplicate_vips = %v (%v)", v, err)
	}
	// And refills the stock behind them.
	eventually(t, "the stock refilled", func() bool { return stockFull(e, 256) })
}

// TestFirstExecOfAListedProgram (issue 11): per program, 200 sessions each
// run a listed program as their first act; each leaves from a VIP of its
// own, while an unlisted program (the same binary under another path)
// leaves from the machine IP.
func TestFirstExecOfAListedProgram(t *testing.T) {
	testenv.RequireRoot(t)
	const n = 200
	bins := buildCget(t, "listed", "unlisted")
	e := newEnv(t, "interceptor: bpf\nmode: per-program\nprograms: ["+bins[0]+"]\n"+firstUsePool+
		"kernel_stock: 256\npreallocate: false\nadmins: {users: [], groups: []}\n")
	eventually(t, "a full stock", func() bool { return stockFull(e, 256) })
	srv := newAcceptLog(t)
	sess := storm(t, e, n, 65000, func(int) []string { return []string{bins[0], "127.0.0.1", srv.port} })
	from, total := srv.snapshot()
	if total != n || from["127.0.0.1"] != 0 || len(from) != n {
		t.Fatalf("%d connections from %d addresses, %d from the machine IP; want %d from %d VIPs: %v",
			total, len(from), from["127.0.0.1"], n, n, from)
	}
	// The unlisted program in the same sessions: machine IP.
	for _, s := range sess[:5] {
		pid, err := s.Run(bins[1], "127.0.0.1", srv.port)
		if err != nil {
			t.Fatal(err)
		}
		s.Reap(pid)
	}
	if got, _ := srv.snapshot(); got["127.0.0.1"] != 5 {
		t.Fatalf("the unlisted program left from the machine IP %d times of 5: %v", got["127.0.0.1"], got)
	}
	eventually(t, "every assignment recorded", func() bool {
		return e.leases() == n
	})
}

// TestFirstUseRules: the daemon tells the kernel its rules: an
// administrator's session (admins.users) leaves from the machine IP and
// takes nothing from a stock of kernel_stock addresses.
func TestFirstUseRules(t *testing.T) {
	testenv.RequireRoot(t)
	e := newEnv(t, "interceptor: bpf\n"+firstUsePool+"kernel_stock: 4\npreallocate: false\nadmins: {users: ['64990'], groups: []}\n")
	eventually(t, "a full stock", func() bool { return stockFull(e, 4) })
	srv := newAcceptLog(t)
	cget := buildCget(t, "cget")[0]
	storm(t, e, 1, 64990, func(int) []string { return []string{cget, "127.0.0.1", srv.port} })
	if from, _ := srv.snapshot(); from["127.0.0.1"] != 1 {
		t.Fatalf("an administrator's first connect left from %v, want the machine IP", from)
	}
	if !stockFull(e, 4) {
		t.Fatal("an administrator's connect took a VIP from the stock")
	}
}

// TestAssignmentSurvivesACrash: the kernel hands out stock addresses while
// no daemon runs (killed with SIGKILL); the next daemon finds them in the
// maps and makes them its sessions' leases, and never hands them out again.
func TestAssignmentSurvivesACrash(t *testing.T) {
	testenv.RequireRoot(t)
	e := newEnv(t, "interceptor: bpf\n"+firstUsePool+"kernel_stock: 16\npreallocate: false\nadmins: {users: [], groups: []}\n")
	eventually(t, "a full stock", func() bool { return stockFull(e, 16) })
	if err := e.d.Stop(syscall.SIGKILL); err != nil && !strings.Contains(err.Error(), "killed") {
		t.Logf("stop: %v", err)
	}
	srv := newAcceptLog(t)
	cget := buildCget(t, "cget")[0]
	sess := storm(t, e, 8, 64100, func(int) []string { return []string{cget, "127.0.0.1", srv.port} })
	from, _ := srv.snapshot()
	if len(from) != 8 || from["127.0.0.1"] != 0 {
		t.Fatalf("with no daemon: %v, want 8 VIPs", from)
	}
	e.start()
	for _, s := range sess {
		eventually(t, "the assignment adopted", func() bool { return from[e.sessionVIP(s.ID)] == 1 })
	}
	// New sessions get other addresses.
	sess2 := storm(t, e, 8, 64200, func(int) []string { return []string{cget, "127.0.0.1", srv.port} })
	from2, _ := srv.snapshot()
	if len(from2) != 16 || from2["127.0.0.1"] != 0 {
		t.Fatalf("after the restart: %v, want 16 distinct VIPs", from2)
	}
	_ = sess2
}

// stockFull reports whether status shows a stock of want.
func stockFull(e *env, want int) bool {
	st, err := e.client().Status()
	return err == nil && strings.Contains(st.Interceptor, fmt.Sprintf("stock of %d/%d", want, want))
}

// TestExhaustedPoolServedFromStock: with the pool taken but for the
// kernel's stock, sessions that ask the daemon (the preload path) are
// served from the stock, one address each, rather than refused; only when
// the stock is empty too is a session refused a VIP.
func TestExhaustedPoolServedFromStock(t *testing.T) {
	testenv.RequireRoot(t)
	e := newEnv(t, "interceptor: both\nstatic_pool: {start: 127.72.9.1, end: 127.72.9.6, subnet_mask: 255.255.0.0}\n"+
		"kernel_stock: 3\npreallocate: false\nadmins: {users: [], groups: []}\n")
	eventually(t, "a full stock", func() bool { return stockFull(e, 3) })
	seen := map[string]bool{}
	for i := range 6 {
		vip := e.mustVIP(e.session(uint32(64300 + i)))
		if seen[vip] {
			t.Fatalf("session %d was given %s twice", i, vip)
		}
		seen[vip] = true
	}
	r, err := e.whoami(e.session(64310))
	if err != nil {
		t.Fatal(err)
	}
	if r.Result == "vip" {
		t.Fatalf("a seventh session got %s from a pool of 6", r.VIP)
	}
	if v, err := e.d.Metric("ipvirt_duplicate_vips"); err != nil || v != 0 {
		t.Fatalf("ipvirt_duplicate_vips = %v (%v)", v, err)
	}
}
