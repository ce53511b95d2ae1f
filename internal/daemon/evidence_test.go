package daemon_test

// Issue 10, requirement 4: a live VIP is never handed out again, whatever
// happened to the lease file. The lease file is damaged behind the
// daemon's back while sessions hold VIPs with sockets bound to them; the
// restarted daemon must adopt them from the kernel's evidence or refuse to
// start, and no new grant may hand out an address a socket is bound to.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/store"
	"github.com/ipvirt/ipvirt/internal/testenv"
	"github.com/ipvirt/ipvirt/sim/daemonproc"
	"github.com/ipvirt/ipvirt/sim/loginsession"
)

// holderScript binds a TCP listener and a UDP socket to its VIP, as a
// session's server or client program does, says so in a file, and keeps
// them until killed. One line: the session leader reads its commands line
// by line.
const holderScript = `import os, socket, sys, time; vip, ready = sys.argv[1], sys.argv[2]; ` +
	`t = socket.socket(); t.bind((vip, 0)); t.listen(); ` +
	`u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((vip, 0)); ` +
	`f = open(ready + ".tmp", "w"); f.write(str(t.getsockname()[1])); f.close(); os.rename(ready + ".tmp", ready); ` +
	`time.sleep(100000)`

// holdSockets starts, in session s, a process that keeps sockets bound to
// vip; it returns the process's pid and its TCP port once they are bound.
func holdSockets(t *testing.T, s *loginsession.Session, vip string) (int, string) {
	t.Helper()
	ready := filepath.Join(t.TempDir(), "ready")
	pid, err := s.Run("/usr/bin/python3", "-c", holderScript, vip, ready)
	if err != nil {
		t.Fatal(err)
	}
	var port []byte
	eventually(t, fmt.Sprintf("pid %d binds %s", pid, vip), func() bool {
		port, err = os.ReadFile(ready)
		return err == nil
	})
	return pid, string(port)
}

// nsEnv starts ipvirtd inside the network namespace ns (one uplink, eth0,
// 10.50.0.2/24), on the given config, and returns it with a function that
// opens sessions inside the namespace.
func nsEnv(t *testing.T, ns, body string) (*env, func(uid uint32) *loginsession.Session) {
	t.Helper()
	wrap := func(argv []string) []string { return append([]string{"ip", "netns", "exec", ns}, argv...) }
	d, err := daemonproc.New(t.TempDir(), daemonConfig(body), false)
	if err != nil {
		t.Fatal(err)
	}
	d.Wrap = wrap
	e := startEnv(t, d, wrap)
	return e, e.session
}

// labelled lists the addresses ipvirt labelled on eth0 in ns.
func labelled(t *testing.T, ns string) string {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "eth0", "label", "eth0:iv").CombinedOutput()
	if err != nil {
		t.Fatalf("ip addr: %v: %s", err, out)
	}
	return string(out)
}

// wipeStore empties the lease file and removes its seal, with the daemon
// stopped: what an administrator's "fresh start", a restore of the wrong
// file or a careless script does. The seal alone would have refused an
// emptied file; without it the store opens empty.
func wipeStore(t *testing.T, e *env) {
	t.Helper()
	state := filepath.Join(e.d.Dir, "state")
	if err := os.Truncate(filepath.Join(state, store.FileName), 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(state, store.FileName+".seal")); err != nil {
		t.Fatal(err)
	}
}

const nsPool = "adapter: eth0\nsource: static\nstatic_pool: {start: 10.50.0.100, end: 10.50.0.199, subnet_mask: 255.255.255.0}\n"

// The failure: leases.db emptied (and unsealed) while the daemon
// was down; every live holder used to get a new VIP and its old one went
// back to the pool with its sockets still bound to it. The restarted
// daemon adopts each holder from its sockets and its label: same VIPs, and
// a newcomer, asking first, gets none of them.
func TestEmptiedStoreAdoptsLiveHolders(t *testing.T) {
	testenv.RequireRoot(t)
	ns := uplinkHost(t, "10.50.0.2/24")
	e, session := nsEnv(t, ns, nsPool)
	const n = 5
	sessions := make([]*loginsession.Session, n)
	vips := map[string]int{}
	for i := range sessions {
		sessions[i] = session(uint32(4101 + i))
		vip := e.mustVIP(sessions[i])
		vips[vip] = i
		holdSockets(t, sessions[i], vip)
	}
	e.d.Stop(syscall.SIGKILL)
	wipeStore(t, e)
	e.start()

	newcomer := e.mustVIP(session(4199))
	if i, dup := vips[newcomer]; dup {
		t.Fatalf("a new session got %s, which live session %d still holds (its sockets are bound to it)", newcomer, i)
	}
	for vip, i := range vips {
		if got := e.mustVIP(sessions[i]); got != vip {
			t.Fatalf("session %d had %s before the lease file was emptied, %s after", i, vip, got)
		}
		if !strings.Contains(labelled(t, ns), " "+vip+"/24") {
			t.Fatalf("%s is no longer on eth0:\n%s", vip, labelled(t, ns))
		}
	}
	if got := strings.Count(e.d.Logs(), "lease adopted from the kernel's evidence"); got != n {
		t.Fatalf("%d leases adopted from the evidence, want %d", got, n)
	}
	// Adopted leases are in the store again: a plain restart keeps them.
	e.restart(syscall.SIGTERM)
	for vip, i := range vips {
		if got := e.mustVIP(sessions[i]); got != vip {
			t.Fatalf("after a second restart session %d got %s, had %s", i, got, vip)
		}
	}
}

// Evidence that proves no single live holder refuses the start, naming
// each address and what the kernel shows of it, and the advice works: a
// VIP labelled on the adapter whose session holds no socket (an idle
// session may still use it), and a VIP two sessions have sockets on. A
// provable holder beside them is adopted all the same.
func TestEmptiedStoreRefusesUnprovenEvidence(t *testing.T) {
	testenv.RequireRoot(t)
	ns := uplinkHost(t, "10.50.0.2/24")
	e, session := nsEnv(t, ns, nsPool)
	idle, shared, proven, intruder := session(4201), session(4202), session(4203), session(4204)
	vipIdle, vipShared, vipProven := e.mustVIP(idle), e.mustVIP(shared), e.mustVIP(proven)
	holdSockets(t, shared, vipShared)
	intruderPID, _ := holdSockets(t, intruder, vipShared)
	holdSockets(t, proven, vipProven)
	e.d.Stop(syscall.SIGKILL)
	wipeStore(t, e)

	err := e.d.Start(context.Background())
	if err == nil {
		t.Fatal("the daemon started over a labelled VIP no lease accounts for and a VIP two sessions use")
	}
	if !strings.Contains(err.Error(), "exit status 1") {
		t.Fatalf("start: %v, want exit status 1", err)
	}
	logs := e.d.Logs()
	for _, want := range []string{
		"ipvirtd: start-up cross-check: 2 pool address(es) in use that no lease in ",
		"  " + vipIdle + ": labelled on eth0 [not adopted: no process of a live session holds a socket on it",
		"  " + vipShared + ": bound by pid ",
		fmt.Sprintf("session a:%d", intruder.ID),
		fmt.Sprintf("several holders use it: a:%d, a:%d", min(shared.ID, intruder.ID), max(shared.ID, intruder.ID)),
		"ip addr del " + vipIdle + "/24 dev eth0",
	} {
		if e.kind == loginsession.Audit && !strings.Contains(logs, want) {
			t.Fatalf("the refusal does not say %q:\n%s", want, logs)
		}
	}
	if !strings.Contains(logs, "TCP "+vipShared+":") || !strings.Contains(logs, "UDP "+vipShared+":") {
		t.Fatalf("the refusal does not name the sockets on %s:\n%s", vipShared, logs)
	}

	// The administrator follows the advice: the intruder ends, the idle
	// session's address is removed; the daemon starts with every holder
	// that is left adopted.
	intruder.Kill(intruderPID)
	out, err := exec.Command("ip", "-n", ns, "addr", "del", vipIdle+"/24", "dev", "eth0").CombinedOutput()
	if err != nil {
		t.Fatalf("ip addr del: %v: %s", err, out)
	}
	e.start()
	if got := e.mustVIP(proven); got != vipProven {
		t.Fatalf("the provable holder got %s, had %s", got, vipProven)
	}
	if got := e.mustVIP(shared); got != vipShared {
		t.Fatalf("the shared VIP's holder got %s, had %s", got, vipShared)
	}
}

// A lease deleted from the store behind the daemon's back (what bbolt's
// fall-back to its older meta page does to the last transaction's leases)
// while its holder's sockets are bound to the VIP: the address is not
// granted to a new session; its holder keeps it.
func TestLeaseLostFromStoreNotRegranted(t *testing.T) {
	testenv.RequireRoot(t)
	e := newEnv(t, "static_pool: {start: 127.70.6.10, end: 127.70.6.20, subnet_mask: 255.255.255.0}\n")
	holder := e.session(4301)
	r, err := e.whoami(holder)
	if err != nil || r.Result != "vip" {
		t.Fatalf("whoami: %+v, %v", r, err)
	}
	holdSockets(t, holder, r.VIP)
	e.d.Stop(syscall.SIGKILL)
	st, err := store.Open(filepath.Join(e.d.Dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	h, err := lease.ParseHolder(r.Holder)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Delete(h); err != nil {
		t.Fatal(err)
	}
	st.Close()
	e.start()

	if got := e.mustVIP(e.session(4302)); got == r.VIP {
		t.Fatalf("a new session got %s, whose holder's sockets are still bound to it", got)
	}
	if got := e.mustVIP(holder); got != r.VIP {
		t.Fatalf("the holder got %s, had %s", got, r.VIP)
	}
}

// The pre-grant check: an administrator's release takes a VIP from a
// session whose program keeps its sockets bound to it. The address is not
// granted again while they are (the pool has no other: the newcomer gets
// the machine IP), and is once they are closed.
func TestReleasedVIPWithLiveSocketsNotRegranted(t *testing.T) {
	testenv.RequireRoot(t)
	e := newEnv(t, "static_pool: {start: 127.70.7.10, end: 127.70.7.11, subnet_mask: 255.255.255.0}\n")
	old, other := e.session(4401), e.session(4402)
	vip := e.mustVIP(old)
	pid, _ := holdSockets(t, old, vip)
	e.mustVIP(other)
	if rel, err := e.client().Release(fmt.Sprint(old.ID)); err != nil || len(rel) != 1 {
		t.Fatalf("release: %v, %v", rel, err)
	}
	newcomer := e.session(4403)
	r, err := e.whoami(newcomer)
	if err != nil {
		t.Fatal(err)
	}
	if r.VIP == vip {
		t.Fatalf("a new session got %s, released a moment ago but still bound by pid %d", vip, pid)
	}
	if r.Result != "mip" {
		t.Fatalf("the newcomer got %s (%s), want the machine IP: the only free address has sockets on it", r.Result, r.Reason)
	}
	// The log comes through a pipe: it may lag the answer.
	eventually(t, "the daemon to say why the address is not granted", func() bool {
		return strings.Contains(e.d.Logs(), "set aside until its sockets are closed")
	})
	if v, err := e.d.Metric("ipvirt_addresses_set_aside"); err != nil || v != 1 {
		t.Fatalf("ipvirt_addresses_set_aside = %v, %v; want 1", v, err)
	}
	old.Kill(pid)
	deadline := time.Now().Add(20 * time.Second)
	for {
		r, err := e.whoami(newcomer)
		if err == nil && r.VIP == vip {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not granted after its sockets closed: %+v, %v", vip, r, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// The kernel interceptor's maps are evidence too: a SIGKILLed daemon leaves
// them pinned, with each holder's VIP, and its programs keep using them
// with no daemon at all. With the lease file emptied meanwhile, the next
// daemon adopts the holder its maps name (read before anything touches
// them), rather than dropping the entry and giving the holder whatever
// address comes first. Per program, with a program only this test runs: a
// per-session kernel interceptor would give every session on the host a
// VIP, other tests' included.
func TestEmptiedStoreAdoptsFromKernelMaps(t *testing.T) {
	testenv.RequireRoot(t)
	if _, err := os.Stat("/sys/fs/cgroup/unified/cgroup.procs"); err != nil {
		t.Skip("this test looks for the cgroup2 root at /sys/fs/cgroup/unified")
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	sleep, _ := filepath.EvalSymlinks("/bin/sleep")
	body, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	prog := filepath.Join(dir, "erp-client")
	if err := os.WriteFile(prog, body, 0o755); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, "interceptor: bpf\nmode: per-program\nprograms: ["+prog+"]\n"+
		"static_pool: {start: 127.70.8.10, end: 127.70.8.20, subnet_mask: 255.255.255.0}\nadmins: {users: [], groups: []}\n")
	// Runs before newEnv's SIGKILL: nothing stays attached to the host.
	t.Cleanup(func() { e.d.Stop(syscall.SIGTERM) })
	programVIP := func(id uint32) string {
		t.Helper()
		c := e.client()
		rows, err := c.Sessions()
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			for _, p := range r.Programs {
				if r.ID == id && p.Program == prog {
					return p.VIP
				}
			}
		}
		return ""
	}
	run := func(s *loginsession.Session) string {
		t.Helper()
		if _, err := s.Run(prog, "100000"); err != nil {
			t.Fatal(err)
		}
		var vip string
		eventually(t, fmt.Sprintf("a VIP for %s in session %d", prog, s.ID), func() bool { vip = programVIP(s.ID); return vip != "" })
		return vip
	}
	gone := e.session(4501)
	run(gone)
	s := e.session(4502)
	vip := run(s)
	// The first address goes back to the pool: a fresh start would give it
	// to whoever comes first.
	gone.Close()
	eventually(t, "the ended session's release", func() bool { return programVIP(gone.ID) == "" })
	if err := e.d.Stop(syscall.SIGKILL); err != nil && !strings.Contains(err.Error(), "killed") {
		t.Logf("stop: %v", err)
	}
	wipeStore(t, e)
	e.start()
	if got := programVIP(s.ID); got != vip {
		t.Fatalf("the program's VIP is %q after the restart, had %s (its kernel map entry said so)", got, vip)
	}
	if !strings.Contains(e.d.Logs(), "kernel interceptor map: session "+fmt.Sprint(s.ID)+", executable ") {
		t.Fatalf("the adoption does not name the map entry:\n%s", e.d.Logs())
	}
	if nv := run(e.session(4503)); nv == vip {
		t.Fatalf("a new session's program got %s, the live one's", vip)
	}
}

// An administrator's release leaves a program's sockets bound to the old
// VIP, now removed from the adapter; then the daemon restarts. The address
// is no one's VIP (no label), so the start is not refused, but it stays out
// of the pool until the sockets close.
func TestReleasedVIPWithLiveSocketsAcrossRestart(t *testing.T) {
	testenv.RequireRoot(t)
	ns := uplinkHost(t, "10.50.0.2/24")
	e, session := nsEnv(t, ns, "adapter: eth0\nsource: static\nstatic_pool: {start: 10.50.0.100, end: 10.50.0.101, subnet_mask: 255.255.255.0}\n")
	old, other := session(4701), session(4702)
	vip := e.mustVIP(old)
	pid, _ := holdSockets(t, old, vip)
	e.mustVIP(other)
	if rel, err := e.client().Release(fmt.Sprint(old.ID)); err != nil || len(rel) != 1 {
		t.Fatalf("release: %v, %v", rel, err)
	}
	if strings.Contains(labelled(t, ns), " "+vip+"/") {
		t.Fatalf("%s still on eth0 after its release", vip)
	}
	e.restart(syscall.SIGTERM)
	newcomer := session(4703)
	if r, err := e.whoami(newcomer); err != nil || r.VIP == vip || r.Result != "mip" {
		t.Fatalf("a new session got %+v (%v); want the machine IP: %s is bound by pid %d", r, err, vip, pid)
	}
	if !strings.Contains(e.d.Logs(), "pool address in use though no VIP: kept out of the pool") {
		t.Fatalf("the restarted daemon does not say it keeps %s out of the pool:\n%s", vip, e.d.Logs())
	}
	old.Kill(pid)
	eventually(t, vip+" granted once its sockets are closed", func() bool {
		r, err := e.whoami(newcomer)
		return err == nil && r.VIP == vip
	})
}
