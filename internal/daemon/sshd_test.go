package daemon_test

// A real login through the real sshd and PAM: the PAM stack opens the audit
// session (pam_loginuid) and, with the lines of deploy/pam-configs/ipvirt,
// registers it (pam_exec runs ipvirtctl session open).

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ipvirt/ipvirt/backend/api"
	"github.com/ipvirt/ipvirt/internal/testenv"
	"github.com/ipvirt/ipvirt/sim/daemonproc"
)

// pamExecPaths are where Debian and other distributions keep pam_exec.
var pamExecPaths = []string{"/lib/x86_64-linux-gnu/security/pam_exec.so", "/usr/lib/x86_64-linux-gnu/security/pam_exec.so",
	"/lib/security/pam_exec.so", "/usr/lib64/security/pam_exec.so", "/usr/lib/security/pam_exec.so"}

// requireSSHD skips (fails with CI=true: scripts/deps.sh installs
// openssh-server) unless sshd, ssh, ssh-keygen and pam_exec are here.
func requireSSHD(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t)
	missing := func(what string) {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s missing (CI=true: not skipping; scripts/deps.sh installs openssh-server)", what)
		}
		t.Skipf("%s missing (apt-get install openssh-server)", what)
	}
	for _, p := range []string{"/usr/sbin/sshd", "/usr/bin/ssh", "/usr/bin/ssh-keygen"} {
		if _, err := os.Stat(p); err != nil {
			missing(p)
		}
	}
	for _, p := range pamExecPaths {
		if _, err := os.Stat(p); err == nil {
			return
		}
	}
	missing("pam_exec.so")
}

// profileLines are the session lines of deploy/pam-configs/ipvirt as they go
// into a PAM service file, with ipvirtctl pointed at this test's daemon.
func profileLines(t *testing.T, e *env) string {
	t.Helper()
	root, err := daemonproc.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "deploy", "pam-configs", "ipvirt"))
	if err != nil {
		t.Fatal(err)
	}
	_, body, ok := strings.Cut(string(b), "\nSession:\n")
	if !ok {
		t.Fatal("deploy/pam-configs/ipvirt has no Session: section")
	}
	var out strings.Builder
	for line := range strings.SplitSeq(strings.TrimSpace(body), "\n") {
		if !strings.Contains(line, "/usr/bin/ipvirtctl") {
			t.Fatalf("pam-configs line %q does not run /usr/bin/ipvirtctl", line)
		}
		line = strings.Replace(strings.TrimSpace(line), "/usr/bin/ipvirtctl", e.ctl+" --socket "+e.d.Socket, 1)
		out.WriteString("session " + line + "\n")
	}
	return out.String()
}

// sshd is one sshd on a loopback port, started in the test's cgroup (the
// daemon's scope), with a PAM service of its own.
type sshd struct {
	port int
	key  string // the client's private key, authorized for root
}

// startSSHD starts sshd with pam_loginuid and the extra session lines in
// its PAM stack. sshd names its PAM service after the name it was run by,
// so a symlink of its own gives it a service file of its own in /etc/pam.d,
// removed with the test: the host's sshd configuration is not touched.
func startSSHD(t *testing.T, e *env, name, session string) sshd {
	t.Helper()
	dir := t.TempDir()
	run := func(argv ...string) {
		t.Helper()
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", argv, err, out)
		}
	}
	run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, "host"))
	run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, "client"))
	pub, err := os.ReadFile(filepath.Join(dir, "client.pub"))
	if err != nil {
		t.Fatal(err)
	}
	write := func(path, body string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(dir, "authorized_keys"), string(pub))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	write(filepath.Join(dir, "sshd_config"), fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s/host
PidFile %s/sshd.pid
AuthorizedKeysFile %s/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM yes
StrictModes no
LogLevel VERBOSE
`, port, dir, dir, dir))

	service := fmt.Sprintf("ipvirt-test-%s-%d", name, os.Getpid())
	pamFile := filepath.Join("/etc/pam.d", service)
	write(pamFile, "auth required pam_permit.so\naccount required pam_permit.so\npassword required pam_deny.so\n"+
		"session required pam_loginuid.so\n"+session)
	t.Cleanup(func() { os.Remove(pamFile) })
	bin := filepath.Join(dir, service)
	if err := os.Symlink("/usr/sbin/sshd", bin); err != nil {
		t.Fatal(err)
	}
	// The privilege separation directory, which the package's service
	// would create.
	os.MkdirAll("/run/sshd", 0o755)

	argv := e.wrap([]string{bin, "-D", "-e", "-f", filepath.Join(dir, "sshd_config")})
	cmd := exec.Command(argv[0], argv[1:]...)
	logs := &strings.Builder{}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logged := make(chan struct{})
	go func() {
		defer close(logged)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logs.WriteString(sc.Text() + "\n")
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		<-logged
		if t.Failed() {
			t.Logf("sshd log:\n%s", logs.String())
		}
	})
	eventually(t, "sshd listens", func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return sshd{port: port, key: filepath.Join(dir, "client")}
}

// whoami logs in as root over ssh and runs `ipvirtctl whoami` in the login
// session sshd and PAM made.
func (s sshd) whoami(t *testing.T, e *env) api.WhoamiReport {
	t.Helper()
	cmd := exec.Command("ssh", "-F", "/dev/null", "-p", fmt.Sprint(s.port), "-i", s.key, "-o", "BatchMode=yes",
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
		"root@127.0.0.1", fmt.Sprintf("%s --socket %s -o json whoami", e.ctl, e.d.Socket))
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("ssh: %v\n%s%s", err, out, stderr)
	}
	var r api.WhoamiReport
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("whoami over ssh said %q: %v", out, err)
	}
	return r
}

// TestSSHDLoginRegisteredByPAM: root logs in through the real sshd, whose
// PAM stack has pam_loginuid and, in one case, the lines of
// deploy/pam-configs/ipvirt. With them the login is registered and gets a
// VIP, and sshd's close_session unregisters it at logout; without them the
// same login is an unregistered session on the machine IP. (Administrators
// are none here, so that root's login may be virtualized.)
func TestSSHDLoginRegisteredByPAM(t *testing.T) {
	requireSSHD(t)
	const cfg = "session_trust: pam\nadmins: {users: [], groups: []}\n"
	t.Run("pam_exec", func(t *testing.T) {
		e := newEnv(t, cfg)
		s := startSSHD(t, e, "pam", profileLines(t, e))
		r := s.whoami(t, e)
		if r.Result != "vip" || r.SessionUID != 0 {
			t.Fatalf("login through sshd with the PAM lines: %s (rule %s: %s), login uid %d; want a VIP", r.Result, r.Rule, r.Reason, r.SessionUID)
		}
		id := strings.TrimPrefix(r.Session, "a:")
		// At logout sshd's session process, the registering one, runs
		// close_session.
		eventually(t, "sshd's close_session unregisters the login", func() bool {
			return strings.Contains(e.d.Logs(), `msg="login session unregistered" session=a:`+id+" ")
		})
		logs := e.d.Logs()
		if !strings.Contains(logs, `msg="login session registered" session=a:`+id+" ") || !strings.Contains(logs, "service=ipvirt-test-pam") {
			t.Fatalf("no registration of session %s by PAM in the log:\n%s", id, logs)
		}
	})
	t.Run("no pam_exec", func(t *testing.T) {
		e := newEnv(t, cfg)
		s := startSSHD(t, e, "nopam", "")
		r := s.whoami(t, e)
		if r.Result != "mip" || r.Rule != "unregistered-session" || r.SessionUID != 0 {
			t.Fatalf("login through sshd without the PAM lines: %s (rule %s), login uid %d; want the machine IP, unregistered-session", r.Result, r.Rule, r.SessionUID)
		}
	})
}
