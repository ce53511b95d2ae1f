package daemon_test

// Integration tests: the real ipvirtd and ipvirtctl binaries, real
// processes in real login sessions (audit sessions as root, POSIX sessions
// otherwise), a real bbolt file, SIGKILL and restarts.

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/ipvirt/ipvirt/backend/api"
	"github.com/ipvirt/ipvirt/internal/testenv"
	"github.com/ipvirt/ipvirt/sim/daemonproc"
	"github.com/ipvirt/ipvirt/sim/loginsession"
)

func TestSessionsGetDistinctVIPsAndKeepThem(t *testing.T) {
	e := newEnv(t, "")
	seen := map[string]bool{}
	for i := range 3 {
		s := e.session(uint32(60001 + i))
		vip := e.mustVIP(s)
		if seen[vip] {
			t.Fatalf("VIP %s handed to two sessions", vip)
		}
		seen[vip] = true
		if again := e.mustVIP(s); again != vip {
			t.Fatalf("session %d asked again and got %s, first %s", s.ID, again, vip)
		}
	}
	rows, err := e.client().Sessions()
	if err != nil {
		t.Fatal(err)
	}
	reported := 0
	for _, r := range rows {
		if seen[r.VIP] {
			reported++
		}
	}
	if reported != 3 {
		t.Fatalf("ipvirtctl sessions reports %d of the 3 VIPs: %+v", reported, rows)
	}
}

func TestHolderEndReleasesAfterGrace(t *testing.T) {
	e := newEnv(t, "")
	s := e.session(60001)
	e.mustVIP(s)
	if n := e.leases(); n != 1 {
		t.Fatalf("%d leases, want 1", n)
	}
	s.Close()
	eventually(t, "the ended session's lease is released", func() bool { return e.leases() == 0 })
	if v, _ := e.d.Metric("ipvirt_releases_total", `reason="holder-ended"`); v != 1 {
		t.Fatalf("ipvirt_releases_total{reason=holder-ended} = %v, want 1", v)
	}
}

// TestKill9MidStorm kills the daemon with SIGKILL while many sessions ask
// for VIPs at once, restarts it, and checks that every session that was
// answered a VIP gets the same one back and that no VIP is held twice.
func TestKill9MidStorm(t *testing.T) {
	e := newEnv(t, "")
	const n = 40
	sessions := make([]*loginsession.Session, n)
	for i := range sessions {
		sessions[i] = e.session(uint32(61000 + i))
	}
	// Every session keeps asking until the daemon dies, so that requests
	// are in flight (some mid-acquisition) when SIGKILL lands.
	got := make([]string, n)
	var mu sync.Mutex
	holding := 0
	dead := make(chan struct{})
	kill := sync.OnceFunc(func() { e.d.Signal(syscall.SIGKILL); close(dead) })
	var wg sync.WaitGroup
	for i, s := range sessions {
		wg.Go(func() {
			for {
				select {
				case <-dead:
					return
				default:
				}
				r, err := e.whoami(s)
				if err != nil || r.Result != "vip" {
					continue
				}
				mu.Lock()
				if got[i] == "" {
					got[i] = r.VIP
					holding++
				} else if got[i] != r.VIP {
					t.Errorf("session %d got %s then %s", i, got[i], r.VIP)
				}
				if holding >= n/2 {
					kill()
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if holding == n {
		t.Logf("every session was answered before SIGKILL landed; the kill was not mid-storm this time")
	}
	e.restart(syscall.SIGKILL)
	answered := 0
	after := map[string]int{}
	for i, s := range sessions {
		vip := e.mustVIP(s)
		if other, dup := after[vip]; dup {
			t.Fatalf("VIP %s given to sessions %d and %d after the restart", vip, other, i)
		}
		after[vip] = i
		if got[i] != "" {
			answered++
			if vip != got[i] {
				t.Fatalf("session %d had %s before SIGKILL, %s after", i, got[i], vip)
			}
		}
	}
	t.Logf("%d of %d sessions were answered before SIGKILL", answered, n)
	if answered < n/2 {
		t.Fatalf("only %d sessions held a VIP at SIGKILL, want at least %d", answered, n/2)
	}
	if v, _ := e.d.Metric("ipvirt_duplicate_vips"); v != 0 {
		t.Fatalf("ipvirt_duplicate_vips = %v", v)
	}
}

func TestRestartKeepsLiveReleasesDead(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			e := newEnv(t, "")
			live := e.session(60001)
			dead := e.session(60002)
			vipLive, vipDead := e.mustVIP(live), e.mustVIP(dead)
			e.d.Stop(sig)
			dead.Close() // ends while the daemon is down
			e.start()
			if v := e.mustVIP(live); v != vipLive {
				t.Fatalf("live session got %s after restart, had %s", v, vipLive)
			}
			if n := e.leases(); n != 1 {
				t.Fatalf("%d leases after restart, want 1 (the dead session's released)", n)
			}
			if !strings.Contains(e.d.Logs(), "released=1") {
				t.Fatalf("restore did not report the release:\n%s", e.d.Logs())
			}
			// Its address is free again, and never handed to the live one.
			newcomer := e.mustVIP(e.session(60003))
			if newcomer == vipLive {
				t.Fatalf("new session got the live session's VIP %s", vipLive)
			}
			_ = vipDead
		})
	}
}

func TestExhaustedAnswers(t *testing.T) {
	for _, mode := range []string{"machine-ip", "deny"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t, "static_pool: {start: 127.70.0.10, end: 127.70.0.10, subnet_mask: 255.255.255.0}\non_exhausted: "+mode+"\n")
			e.mustVIP(e.session(60001))
			r, err := e.whoami(e.session(60002))
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]string{"machine-ip": "mip", "deny": "denied"}[mode]
			if r.Result != want || !strings.Contains(r.Reason, "no virtual IP available") {
				t.Fatalf("second session got %s (%s), want %s", r.Result, r.Reason, want)
			}
			if v, _ := e.d.Metric("ipvirt_exhausted_total"); v != 1 {
				t.Fatalf("ipvirt_exhausted_total = %v, want 1", v)
			}
			if !strings.Contains(e.d.Logs(), "event=110") {
				t.Fatalf("no event-110 log line for the unvirtualized session:\n%s", e.d.Logs())
			}
		})
	}
}

func TestPerProgramMode(t *testing.T) {
	dir := t.TempDir()
	sleep, _ := filepath.EvalSymlinks("/bin/sleep")
	body, _ := os.ReadFile(sleep)
	listed := filepath.Join(dir, "erp-client")
	os.WriteFile(listed, body, 0o755)
	e := newEnv(t, "mode: per-program\nprograms: ["+listed+"]\n")
	s := e.session(60001)
	// ipvirtctl itself is not listed: machine IP.
	if r, _ := e.whoami(s); r.Result != "mip" || !strings.Contains(r.Reason, "not in the per-program list") {
		t.Fatalf("unlisted program got %s (%s)", r.Result, r.Reason)
	}
	// Listing ipvirtctl at run time makes it a per-program holder. Only
	// root and administrators may, and an administrator's own sessions are
	// never virtualized, so without root this half cannot be shown.
	testenv.RequireRoot(t)
	c := e.client()
	real, _ := filepath.EvalSymlinks(e.ctl)
	if _, err := c.AddProgram(real); err != nil {
		t.Fatal(err)
	}
	r, _ := e.whoami(s)
	if r.Result != "vip" || !strings.HasSuffix(r.Holder, "|"+real) {
		t.Fatalf("listed program got %s holder %q", r.Result, r.Holder)
	}
	// The addition survives a restart; the file's entry stays too.
	e.restart(syscall.SIGTERM)
	c2 := e.client()
	list, err := c2.Programs()
	if err != nil {
		t.Fatal(err)
	}
	from := map[string]string{}
	for _, p := range list {
		from[p.Path] = p.From
	}
	if from[real] != "runtime" || from[listed] != "config" || len(list) != 2 {
		t.Fatalf("programs after restart: %+v", list)
	}
	if _, err := c2.RemoveProgram("/not/listed"); err == nil || !strings.Contains(err.Error(), "/not/listed is not in the program list") {
		t.Fatalf("removing an unlisted program: %v", err)
	}
}

func TestNonAdminRefusedAndFiltered(t *testing.T) {
	testenv.RequireRoot(t)
	e := newEnv(t, "")
	mine := e.session(60001)
	e.mustVIP(mine)
	theirs := e.session(60002)
	e.mustVIP(theirs)

	// t.TempDir is 0700; the socket's directory must be reachable by the
	// unprivileged user, as /run/ipvirt is.
	os.Chmod(filepath.Dir(e.d.Dir), 0o755)
	os.Chmod(e.d.Dir, 0o755)
	asUser := func(args ...string) (string, int) {
		cmd := e.ctlCmd(args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 60001, Gid: 60001}}
		return run(t, cmd)
	}
	out, code := asUser("release", fmt.Sprint(mine.ID))
	if code != 1 || !strings.Contains(out, "only root and administrators may release sessions") {
		t.Fatalf("non-admin release: exit %d, %q", code, out)
	}
	out, code = asUser("programs", "add", "/usr/bin/psql")
	if code != 1 || !strings.Contains(out, "only root and administrators") {
		t.Fatalf("non-admin programs add: exit %d, %q", code, out)
	}
	out, code = asUser("-o", "json", "sessions")
	var rows []struct {
		ID  uint32 `json:"id"`
		UID uint32 `json:"uid"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &rows) != nil {
		t.Fatalf("non-admin sessions: exit %d, %q", code, out)
	}
	// Other tests on this host may run sessions of uid 60001 too: every row
	// must be that user's, its session among them, the other user's not.
	sawMine := false
	for _, r := range rows {
		if r.UID != 60001 || r.ID == theirs.ID {
			t.Fatalf("uid 60001 sees %+v, want only its own sessions", rows)
		}
		sawMine = sawMine || r.ID == mine.ID
	}
	if !sawMine {
		t.Fatalf("uid 60001 does not see its session %d: %+v", mine.ID, rows)
	}
	// Root releases; the session's next question gets a VIP again.
	rel, err := e.client().Release(fmt.Sprint(mine.ID))
	if err != nil || len(rel) != 1 {
		t.Fatalf("root release: %v %v", rel, err)
	}
}

func TestReloadMovesPoolKeepsLeases(t *testing.T) {
	e := newEnv(t, "")
	s := e.session(60001)
	old := e.mustVIP(s)
	body := daemonConfig(staticConfig("static_pool: {start: 127.78.0.10, end: 127.78.0.20, subnet_mask: 255.255.255.0}\n"))
	if err := e.d.WriteConfig(body); err != nil {
		t.Fatal(err)
	}
	e.d.Signal(syscall.SIGHUP)
	eventually(t, "the reload is logged", func() bool { return strings.Contains(e.d.Logs(), "configuration reloaded") })
	if !strings.Contains(e.d.Logs(), "stays with its holder") {
		t.Fatalf("reload did not say the old VIP was kept:\n%s", e.d.Logs())
	}
	if v := e.mustVIP(s); v != old {
		t.Fatalf("live session lost its VIP on reload: %s -> %s", old, v)
	}
	v := netip.MustParseAddr(e.mustVIP(e.session(60002)))
	if !netip.MustParsePrefix("127.78.0.0/24").Contains(v) {
		t.Fatalf("new session got %s, not from the new pool", v)
	}
	// A broken file changes nothing.
	e.d.WriteConfig("mode: sideways\n")
	e.d.Signal(syscall.SIGHUP)
	eventually(t, "the failed reload is logged", func() bool { return strings.Contains(e.d.Logs(), "reload failed") })
	if v := e.mustVIP(s); v != old {
		t.Fatalf("a failed reload changed the session's VIP")
	}
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name, body, want string
		code             int
	}{
		{"valid", "adapter: lo\nsource: static\nstatic_pool: {start: 127.77.0.10, end: 127.77.0.20, subnet_mask: 255.255.255.0}\n", "is valid", 0},
		{"pool outside adapter", "adapter: lo\nsource: static\nstatic_pool: {start: 10.0.0.10, end: 10.0.0.20, subnet_mask: 255.255.255.0}\n", "not inside lo's subnet 127.0.0.0/8", 1},
		{"no such adapter", "adapter: nosuch0\nsource: static\nstatic_pool: {start: 127.77.0.10, end: 127.77.0.20, subnet_mask: 255.255.255.0}\n", `no interface named "nosuch0"`, 1},
		{"unknown key", "adapter: lo\npool: {}\n", "field pool not found", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code := checkConfig(t, tt.body)
			if code != tt.code || !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d, output %q; want exit %d and %q", code, out, tt.code, tt.want)
			}
		})
	}
}

func TestExcludedSessionsGetMachineIP(t *testing.T) {
	e := newEnv(t, "")
	if e.kind == loginsession.Audit {
		r, err := e.whoami(e.session(0)) // root: an administrator by default
		if err != nil {
			t.Fatal(err)
		}
		if r.Result != "mip" || !strings.Contains(r.Reason, "administrator root") {
			t.Fatalf("root's session got %s (%s), want mip as an administrator", r.Result, r.Reason)
		}
	}
	if e.kind != loginsession.Audit {
		t.Skip("POSIX sessions: every process is in some session; session 0 needs audit sessions (root)")
	}
	mine, _ := os.ReadFile("/proc/self/sessionid")
	if strings.TrimSpace(string(mine)) != "4294967295" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the test runs inside audit session %s; CI must run outside a login session", mine)
		}
		t.Skipf("this test runs inside audit session %s: a session-0 process cannot be made from here", mine)
	}
	out, err := e.ctlCmd("-o", "json", "whoami").Output()
	if err != nil {
		t.Fatal(err)
	}
	var r api.WhoamiReport
	json.Unmarshal(out, &r)
	if r.Result != "mip" || r.Rule != "no-session" {
		t.Fatalf("a process in no session got %s (%s)", r.Result, r.Reason)
	}
}

// A per-program entry that is a script never matches (its processes show
// the interpreter): Debian's /usr/bin/psql is one. --check, the daemon's
// log, `programs list` and `programs add` all say so.
func TestProgramEntryThatCannotMatchIsReported(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "erp-launcher")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexec /usr/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	added := filepath.Join(dir, "added-launcher")
	if err := os.Symlink(script, added); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, "mode: per-program\nprograms: ["+script+"]\n")
	const want = "is a script run by /bin/sh"

	bin, err := daemonproc.Binary("ipvirtd")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "--check", "--config", e.d.Config).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "warning: programs[0]: "+script+" "+want) {
		t.Fatalf("--check: %v\n%s", err, out)
	}
	list, err := e.client().Programs()
	if err != nil || len(list) != 1 || !strings.Contains(list[0].Warning, want) {
		t.Fatalf("programs: %+v %v", list, err)
	}
	if !strings.Contains(e.d.Logs(), "programs: entry will not match") {
		t.Fatalf("no warning in the log:\n%s", e.d.Logs())
	}
	testenv.RequireRoot(t) // programs add: root and administrators only
	var stderr strings.Builder
	cmd := e.ctlCmd("programs", "add", added)
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil || !strings.Contains(stderr.String(), "warning: "+added+" (a symlink to "+script+") "+want) ||
		!strings.Contains(string(stdout), "WARNING") {
		t.Fatalf("programs add: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr.String())
	}
}
