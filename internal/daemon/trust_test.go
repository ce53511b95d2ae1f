package daemon_test

// session_trust: pam against the real daemon, with real kernel login
// sessions and real processes: a session is virtualized once a root process
// in it has run `ipvirtctl session open` (what pam_exec does), not before
// and not after `session close`; a service account that writes its own
// login uid is a login under loginuid trust and is not under pam.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/backend/api"
	"github.com/ipvirt/ipvirt/internal/testenv"
	"github.com/ipvirt/ipvirt/sim/loginsession"
)

// sessionOp runs `ipvirtctl -o json session OP` inside s as root, as
// pam_exec would: as a child of the session's leader (the shell exec's
// into it), with the PAM environment pam_exec sets.
func (e *env) sessionOp(s *loginsession.Session, op string) (api.RegistrationReport, string) {
	e.t.Helper()
	out := filepath.Join(e.t.TempDir(), "session-"+op)
	pid, err := s.RunEnv([]string{"PAM_USER=u" + fmt.Sprint(s.UID), "PAM_SERVICE=ipvirt-test", "PAM_TYPE=" + op + "_session"},
		"/bin/sh", "-c", `exec "$1" --socket "$2" -o json session "$3" > "$4" 2>&1`, "sh", e.ctl, e.d.Socket, op, out)
	if err != nil {
		e.t.Fatal(err)
	}
	s.Reap(pid)
	b, err := os.ReadFile(out)
	if err != nil {
		e.t.Fatal(err)
	}
	var r api.RegistrationReport
	json.Unmarshal(b, &r)
	return r, string(b)
}

// mustRule asks from s and fails unless the answer is the machine IP for
// rule.
func (e *env) mustRule(s *loginsession.Session, rule string) api.WhoamiReport {
	e.t.Helper()
	r, err := e.whoami(s)
	if err != nil {
		e.t.Fatal(err)
	}
	if r.Result != "mip" || r.Rule != rule {
		e.t.Fatalf("session %d got %s (rule %s, %s, VIP %s), want the machine IP by rule %s", s.ID, r.Result, r.Rule, r.Reason, r.VIP, rule)
	}
	return r
}

func (e *env) status() api.StatusReport {
	e.t.Helper()
	st, err := e.client().Status()
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

// With session_trust: pam a login session is virtualized from its
// registration to its close, and never pre-allocated before; a `sudo`
// inside it (the session stack run again by another process) neither
// registers it twice nor unregisters it.
func TestPAMTrustVirtualizesRegisteredSessions(t *testing.T) {
	testenv.RequireRoot(t)
	e := newEnv(t, "session_trust: pam\npreallocate: true\n")
	s := e.session(4001)

	r := e.mustRule(s, "unregistered-session")
	if r.SessionUID != 4001 || !strings.Contains(r.Reason, fmt.Sprintf("audit session %d (login uid 4001) was not registered by PAM", s.ID)) {
		t.Fatalf("unregistered session: %+v", r)
	}
	// Several scans: nothing is pre-allocated for it, and it is listed
	// nowhere.
	time.Sleep(500 * time.Millisecond)
	if n := e.leases(); n != 0 || e.sessionVIP(s.ID) != "" {
		t.Fatalf("unregistered session: %d leases, VIP %q; want none", n, e.sessionVIP(s.ID))
	}

	// A set-uid program a user started (su) runs the session stack with
	// its user's real uid beside an effective 0: not root enough.
	out := filepath.Join(t.TempDir(), "setuid")
	pid, err := s.Run("/bin/sh", "-c", `exec setpriv --ruid=4001 "$1" --socket "$2" session open > "$3" 2>&1`, "sh", e.ctl, e.d.Socket, out)
	if err != nil {
		t.Fatal(err)
	}
	s.Reap(pid)
	if b, _ := os.ReadFile(out); !strings.Contains(string(b), "has real uid 4001; only a process whose real and effective uids are 0 may") {
		t.Fatalf("session open with real uid 4001, effective 0: %s", b)
	}

	reg, raw := e.sessionOp(s, "open")
	if reg.Result != "registered" || reg.ID != s.ID || reg.UID != 4001 || reg.Leader != s.LeaderPID() {
		t.Fatalf("session open: %s; want session %d of uid 4001 registered by leader %d", raw, s.ID, s.LeaderPID())
	}
	// Pre-allocated at registration, before any process asks.
	eventually(t, "the registered session is pre-allocated", func() bool { return e.sessionVIP(s.ID) != "" })
	vip := e.mustVIP(s)
	if st := e.status(); st.SessionTrust != "pam" || st.Registered != 1 {
		t.Fatalf("status: trust %q, %d registered", st.SessionTrust, st.Registered)
	}

	// A sudo inside the session: the session stack runs again from another
	// process of the session, open then close.
	out = filepath.Join(t.TempDir(), "sudo")
	pid, err = s.Run("/bin/sh", "-c", `"$1" --socket "$2" session open > "$3" 2>&1; "$1" --socket "$2" session close >> "$3" 2>&1`,
		"sh", e.ctl, e.d.Socket, out)
	if err != nil {
		t.Fatal(err)
	}
	s.Reap(pid)
	b, _ := os.ReadFile(out)
	if !strings.Contains(string(b), "already registered") || !strings.Contains(string(b), ": kept") {
		t.Fatalf("open and close from a sudo inside the session:\n%s", b)
	}
	if again := e.mustVIP(s); again != vip {
		t.Fatalf("after the sudo: VIP %s, want %s", again, vip)
	}

	reg, raw = e.sessionOp(s, "close")
	if reg.Result != "unregistered" {
		t.Fatalf("session close: %s", raw)
	}
	e.mustRule(s, "unregistered-session")
	eventually(t, "the closed session's VIP is released", func() bool { return e.leases() == 0 })
	if reg, raw = e.sessionOp(s, "close"); reg.Result != "not registered" {
		t.Fatalf("second close: %s", raw)
	}
	// One warning for the session, however often it asked.
	logs := e.d.Logs()
	line := fmt.Sprintf("session=a:%d loginuid=4001", s.ID)
	if n := strings.Count(logs, "forged or unregistered login session: not virtualized"); n != 1 || !strings.Contains(logs, line) {
		t.Fatalf("%d warnings (want 1 naming %s) in:\n%s", n, line, logs)
	}
}

// The attack: a service account (here uid 4002, in no login
// session) writes its own /proc/self/loginuid, which the kernel allows once
// without privilege, and asks. Under loginuid trust it is then root's
// session (0) or a session of user 4002 with a VIP; under pam it is session
// 0, and it cannot register itself.
func TestForgedLoginUIDNotVirtualizedUnderPAM(t *testing.T) {
	testenv.RequireRoot(t)
	for _, trust := range []string{"pam", "loginuid"} {
		t.Run(trust, func(t *testing.T) {
			e := newEnv(t, "session_trust: "+trust+"\n")
			for _, luid := range []uint32{0, 4002} {
				var r api.WhoamiReport
				out := e.forged(luid, "-o", "json", "whoami")
				if err := json.Unmarshal([]byte(out), &r); err != nil {
					t.Fatalf("forged whoami (login uid %d) said %q", luid, out)
				}
				if r.UID != 4002 || r.SessionUID != luid {
					t.Fatalf("forged caller seen as uid %d of login uid %d, want 4002 and %d: %+v", r.UID, r.SessionUID, luid, r)
				}
				switch {
				case trust == "pam" && (r.Result != "mip" || r.Rule != "unregistered-session"):
					t.Fatalf("pam, forged login uid %d: %s by rule %s (VIP %s), want the machine IP by unregistered-session", luid, r.Result, r.Rule, r.VIP)
				case trust == "loginuid" && luid == 0 && r.Rule != "admin":
					t.Fatalf("loginuid, forged login uid 0: rule %s, want admin (taken for root's session)", r.Rule)
				case trust == "loginuid" && luid == 4002 && r.Result != "vip":
					t.Fatalf("loginuid, forged login uid 4002: %s (%s), want a VIP", r.Result, r.Reason)
				}
			}
			if trust == "loginuid" {
				return
			}
			if n := e.leases(); n != 0 {
				t.Fatalf("%d leases after forged sessions asked, want 0", n)
			}
			// An unprivileged process cannot register its (forged) session.
			out := e.forged(4002, "session", "open")
			if !strings.Contains(out, "only root may register login sessions") {
				t.Fatalf("unprivileged session open: %q", out)
			}
			if st := e.status(); st.Registered != 0 {
				t.Fatalf("%d sessions registered after an unprivileged open", st.Registered)
			}
			// One warning for each forged session that asked for an address.
			if n := strings.Count(e.d.Logs(), "forged or unregistered login session"); n != 2 {
				t.Fatalf("%d warnings for 2 forged sessions:\n%s", n, e.d.Logs())
			}
		})
	}
}

// forgerUID is the service account of TestForgedLoginUIDNotVirtualizedUnderPAM.
const forgerUID = 4002

// forged runs ipvirtctl ARGS as a service account would: uid forgerUID,
// no privilege, its login uid unset; it first writes luid to its own
// /proc/self/loginuid. It starts in the test's cgroup, so that the daemon's
// scope is not what refuses it, and returns what ipvirtctl printed.
//
// A process inherits its login uid from its parent, and the test may run
// inside a login: a root shell clears its own login uid first, then becomes
// the service account with setpriv. (Dropping to the account through the
// test's own fork, SysProcAttr.Credential, would need the test's thread to
// clear its login uid, and the thread cannot be given back: ending it
// would SIGKILL every child it forked with Pdeathsig, such as the daemon.)
func (e *env) forged(luid uint32, args ...string) string {
	e.t.Helper()
	// The socket's directories are root's (t.TempDir is 0700); /run/ipvirt
	// is open to all.
	os.Chmod(filepath.Dir(e.d.Dir), 0o755)
	os.Chmod(e.d.Dir, 0o755)
	dir := e.t.TempDir()
	os.Chmod(dir, 0o777)
	out := filepath.Join(dir, "out")
	const service = `echo "$1" > /proc/self/loginuid || exit 97; out=$2; shift 2; exec "$@" > "$out" 2>&1`
	root := fmt.Sprintf(`echo 4294967295 > /proc/self/loginuid || exit 96; `+
		`exec setpriv --reuid=%d --regid=%d --clear-groups /bin/sh -c "$0" sh "$@"`, forgerUID, forgerUID)
	argv := append([]string{"/bin/sh", "-c", root, service, fmt.Sprint(luid), out, e.ctl, "--socket", e.d.Socket}, args...)
	argv = e.wrap(argv)
	err := exec.Command(argv[0], argv[1:]...).Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee) && ee.ExitCode() == 96:
		e.t.Fatal("root could not clear its login uid")
	case errors.As(err, &ee) && ee.ExitCode() == loginsession.ExitSetupFailed:
		e.t.Fatalf("uid %d could not write login uid %d to its own /proc/self/loginuid", forgerUID, luid)
	}
	b, _ := os.ReadFile(out)
	return string(b)
}

// Registrations are in the lease store: a restart, even after SIGKILL,
// keeps a registered session virtualized with its VIP (PAM will not run
// again for it), keeps a closed one unregistered, and drops the
// registration of a session none of whose processes is left.
func TestSessionRegistrationSurvivesRestart(t *testing.T) {
	testenv.RequireRoot(t)
	e := newEnv(t, "session_trust: pam\n")
	s := e.session(4003)
	closed := e.session(4004)
	gone := e.session(4005)
	for _, x := range []*loginsession.Session{s, closed, gone} {
		if reg, raw := e.sessionOp(x, "open"); reg.Result != "registered" {
			t.Fatalf("session open in %d: %s", x.ID, raw)
		}
	}
	vip := e.mustVIP(s)
	e.mustVIP(closed)
	if reg, raw := e.sessionOp(closed, "close"); reg.Result != "unregistered" {
		t.Fatalf("session close: %s", raw)
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		if sig == syscall.SIGKILL {
			gone.Close()
		}
		e.restart(sig)
		if got := e.mustVIP(s); got != vip {
			t.Fatalf("after %v: VIP %s, want %s", sig, got, vip)
		}
		e.mustRule(closed, "unregistered-session")
	}
	eventually(t, "the ended session's registration is dropped", func() bool { return e.status().Registered == 1 })
}
