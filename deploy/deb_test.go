package deploy

// The Debian package: scripts/deb.sh builds it, and these tests check what
// it holds, install it into an empty root with `dpkg --root`, run the
// installed programs, remove and purge it, and run its maintainer scripts
// as on a live systemd host with stand-ins for systemctl and
// pam-auth-update.

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/ipvirt/ipvirt/internal/testenv"
)

// requireTool returns the path of a program, or skips the test naming the
// Debian package that has it (fails under CI=true, where scripts/deps.sh
// has installed it).
func requireTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found: install the Debian package %s (scripts/deps.sh lists it)", name, pkg)
	}
	t.Skipf("%s not found (Debian package %s)", name, pkg)
	return ""
}

func run(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	out, err := runErr(env, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func runErr(env []string, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// The package is built once per test binary, into debDir, which TestMain
// removes.
var (
	debOnce sync.Once
	debDir  string
	debPath string
	debErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if debDir != "" {
		os.RemoveAll(debDir)
	}
	os.Exit(code)
}

// buildDeb returns the path of the package scripts/deb.sh builds from
// $IPVIRT_BIN (make test sets it to bin/), or from binaries built here.
func buildDeb(t *testing.T) string {
	t.Helper()
	if os.Getenv("IPVIRT_BIN") == "" {
		requireTool(t, "gcc", "gcc")
		requireTool(t, "make", "make")
	}
	debOnce.Do(func() {
		if debDir, debErr = os.MkdirTemp("", "ipvirt-deb-"); debErr == nil {
			debPath, debErr = makeDeb(debDir)
		}
	})
	if debErr != nil {
		t.Fatal(debErr)
	}
	return debPath
}

func makeDeb(dir string) (string, error) {
	bin := os.Getenv("IPVIRT_BIN")
	if bin != "" {
		for _, f := range []string{"ipvirtd", "ipvirtctl", "libipvirt.so"} {
			if _, err := os.Stat(filepath.Join(bin, f)); err != nil {
				return "", fmt.Errorf("%w (run make build)", err)
			}
		}
	} else {
		bin = filepath.Join(dir, "bin")
		cmd := exec.Command("go", "build", "-o", bin+"/", "./cmd/ipvirtd", "./cmd/ipvirtctl")
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go build: %v\n%s", err, out)
		}
		if out, err := runErr(nil, "make", "--no-print-directory", "-C", "../lsp/preload", "OUT="+bin); err != nil {
			return "", fmt.Errorf("make -C lsp/preload: %v\n%s", err, out)
		}
	}
	// Uncompressed: xz takes most of a minute on a busy machine.
	out, err := runErr([]string{"DEB_COMPRESSION=none"}, "../scripts/deb.sh", bin, dir)
	if err != nil {
		return "", fmt.Errorf("scripts/deb.sh: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	deb := lines[len(lines)-1]
	if _, err := os.Stat(deb); err != nil {
		return "", fmt.Errorf("scripts/deb.sh printed %q: %w", out, err)
	}
	return deb, nil
}

// packaged is every file of the package, with its mode as dpkg-deb lists it.
var packaged = map[string]string{
	"etc/ipvirt/ipvirt.yaml":                         "-rw-r--r--",
	"usr/sbin/ipvirtd":                               "-rwxr-xr-x",
	"usr/bin/ipvirtctl":                              "-rwxr-xr-x",
	"usr/lib/ipvirt/libipvirt.so":                    "-rw-r--r--",
	"usr/lib/systemd/system/ipvirtd.service":         "-rw-r--r--",
	"usr/share/pam-configs/ipvirt":                   "-rw-r--r--",
	"usr/share/doc/ipvirt/README.md":                 "-rw-r--r--",
	"usr/share/doc/ipvirt/copyright":                 "-rw-r--r--",
	"usr/share/ipvirt/prometheus/ipvirt-rules.yml":   "-rw-r--r--",
	"usr/share/ipvirt/grafana/ipvirt-dashboard.json": "-rw-r--r--",
}

// startVerbs are what a maintainer script must never ask of systemd: the
// daemon is started and enabled by its administrator alone.
var startVerbs = regexp.MustCompile(`\b(systemctl|deb-systemd-invoke|deb-systemd-helper|invoke-rc\.d)\b[^\n]*\s(start|restart|reload-or-restart|enable|reenable|preset|unmask|--now)\b`)

// checkScripts checks the maintainer scripts in dir: valid sh, never the
// preload list, never a start or an enable.
func checkScripts(t *testing.T, dir string) {
	t.Helper()
	for _, s := range []string{"postinst", "prerm", "postrm"} {
		p := filepath.Join(dir, s)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		run(t, nil, "sh", "-n", p)
		if strings.Contains(string(b), "ld.so.preload") {
			t.Errorf("%s mentions ld.so.preload: maintainer scripts must never touch it", s)
		}
		if m := startVerbs.FindString(string(b)); m != "" {
			t.Errorf("%s: %q: maintainer scripts must never start or enable ipvirtd", s, m)
		}
	}
}

// TestDebContents builds the package and checks what it holds: its control
// fields, every file with its mode and owner, the conffile list, and the
// maintainer scripts.
func TestDebContents(t *testing.T) {
	requireTool(t, "dpkg-deb", "dpkg")
	requireTool(t, "strip", "binutils")
	requireTool(t, "objdump", "binutils")
	deb := buildDeb(t)
	arch := strings.TrimSpace(run(t, nil, "dpkg", "--print-architecture"))
	fields := strings.Split(strings.TrimRight(run(t, nil, "dpkg-deb", "--showformat", "${Package}\n${Version}\n${Architecture}\n${Depends}\n", "--show", deb), "\n"), "\n")
	if len(fields) != 4 || fields[0] != "ipvirt" || fields[2] != arch || !strings.HasPrefix(fields[3], "libc6 (>= 2.") {
		t.Fatalf("control fields Package, Version, Architecture, Depends: %q", fields)
	}
	version := fields[1]
	run(t, nil, "dpkg", "--validate-version", version)
	if want := fmt.Sprintf("ipvirt_%s_%s.deb", version, arch); filepath.Base(deb) != want {
		t.Errorf("package file %s, want %s", filepath.Base(deb), want)
	}

	found := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(run(t, nil, "dpkg-deb", "--contents", deb)))
	for sc.Scan() {
		// -rw-r--r-- root/root 1175 2026-11-30 02:27 ./etc/ipvirt/ipvirt.yaml
		f := strings.Fields(sc.Text())
		if len(f) != 6 {
			t.Errorf("dpkg-deb --contents: %q", sc.Text())
			continue
		}
		mode, owner, path := f[0], f[1], strings.TrimPrefix(f[5], "./")
		if owner != "root/root" {
			t.Errorf("%s is owned by %s", path, owner)
		}
		if mode[0] == 'd' {
			if mode != "drwxr-xr-x" {
				t.Errorf("directory %s has mode %s", path, mode)
			}
			continue
		}
		want, ok := packaged[path]
		switch {
		case !ok:
			t.Errorf("unexpected file in the package: %s %s", mode, path)
		case mode != want:
			t.Errorf("%s has mode %s, want %s", path, mode, want)
		}
		found[path] = true
	}
	for p := range packaged {
		if !found[p] {
			t.Errorf("%s missing from the package", p)
		}
	}

	ctrl := t.TempDir()
	run(t, nil, "dpkg-deb", "--control", deb, ctrl)
	conffiles, err := os.ReadFile(filepath.Join(ctrl, "conffiles"))
	if err != nil {
		t.Fatal(err)
	}
	if string(conffiles) != "/etc/ipvirt/ipvirt.yaml\n" {
		t.Errorf("conffiles: %q, want the example config alone", conffiles)
	}
	md5sums, err := os.ReadFile(filepath.Join(ctrl, "md5sums"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(md5sums), "\n"); n != len(packaged)-1 || strings.Contains(string(md5sums), "etc/ipvirt") {
		t.Errorf("md5sums: %d lines, want every file but the conffile:\n%s", n, md5sums)
	}
	checkScripts(t, ctrl)
}

// TestDebScriptsChecker: the check of TestDebContents finds what it is
// for, so that its passing means something.
func TestDebScriptsChecker(t *testing.T) {
	for _, bad := range []string{
		"systemctl start ipvirtd.service",
		"systemctl --no-block start ipvirtd",
		"systemctl enable --now ipvirtd",
		"systemctl restart ipvirtd.service || true",
		"deb-systemd-invoke start ipvirtd.service",
		"deb-systemd-helper enable ipvirtd.service",
		"invoke-rc.d ipvirtd start",
	} {
		if !startVerbs.MatchString(bad) {
			t.Errorf("not caught: %s", bad)
		}
	}
	for _, good := range []string{
		"systemctl daemon-reload || true",
		`if [ -n "$2" ] && ! systemctl try-restart ipvirtd.service; then`,
		"systemctl stop ipvirtd.service || true",
	} {
		if startVerbs.MatchString(good) {
			t.Errorf("caught, but never starts a stopped daemon: %s", good)
		}
	}
}

// stubs writes systemctl and pam-auth-update stand-ins into a directory to
// put first in PATH: each appends its arguments as a line to log.
func stubs(t *testing.T, log string) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"systemctl", "pam-auth-update"} {
		script := fmt.Sprintf("#!/bin/sh\necho \"%s $*\" >> %q\n", name, log)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// calls returns the log's lines since the last call, and empties it.
func calls(t *testing.T, log string) []string {
	t.Helper()
	b, err := os.ReadFile(log)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	os.Remove(log)
	return strings.FieldsFunc(string(b), func(r rune) bool { return r == '\n' })
}

// TestDebInstall installs the package into an empty root with dpkg --root,
// runs the installed ipvirtd --check on the installed example config and
// ipvirtctl, verifies the unit, upgrades (reinstalls) over an edited
// config, then removes it (only the conffile stays) and purges it (nothing
// of ipvirt stays).
func TestDebInstall(t *testing.T) {
	testenv.RequireRoot(t)
	requireTool(t, "dpkg", "dpkg")
	requireTool(t, "dpkg-deb", "dpkg")
	requireTool(t, "strip", "binutils")
	requireTool(t, "objdump", "binutils")
	requireTool(t, "unshare", "util-linux")
	requireTool(t, "ip", "iproute2")
	deb := buildDeb(t)

	// An empty root with a dpkg database whose only package stands for
	// the C library (the one dependency), so that nothing is forced.
	root := t.TempDir()
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates", "var/log", "usr/sbin", "etc/systemd/system/multi-user.target.wants"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	arch := strings.TrimSpace(run(t, nil, "dpkg", "--print-architecture"))
	libc := strings.TrimSpace(run(t, nil, "dpkg-query", "--showformat", "${Version}", "--show", "libc6:"+arch))
	status := fmt.Sprintf("Package: libc6\nStatus: install ok installed\nPriority: optional\nSection: libs\nMaintainer: none\nArchitecture: %s\nVersion: %s\nDescription: the C library (stands for the host's in this test)\n\n", arch, libc)
	writeFile(t, filepath.Join(root, "var/lib/dpkg/status"), status, 0o644)
	writeFile(t, filepath.Join(root, "var/lib/dpkg/available"), "", 0o644)
	writeFile(t, filepath.Join(root, "var/lib/dpkg/info/libc6.list"), "", 0o644)
	// The root's PAM is managed by pam-auth-update (libpam-runtime), so the
	// scripts call it, with --root: the stand-in in PATH records how.
	writeFile(t, filepath.Join(root, "usr/sbin/pam-auth-update"), "#!/bin/sh\nexit 0\n", 0o755)
	log := filepath.Join(t.TempDir(), "calls")
	path := stubs(t, log) + ":" + os.Getenv("PATH") + ":/usr/sbin:/sbin"
	env := []string{"PATH=" + path}
	dpkg := func(args ...string) string {
		t.Helper()
		// Scripts run outside the root (it has no shell), with DPKG_ROOT
		// set; dpkg's log stays in the root.
		return run(t, env, "dpkg", append([]string{"--root=" + root, "--force-script-chrootless",
			"--log=" + filepath.Join(root, "var/log/dpkg.log"), "--force-confdef", "--force-confold"}, args...)...)
	}
	// statusOf is "" once dpkg knows nothing of the package.
	statusOf := func() string {
		out, _ := exec.Command("dpkg-query", "--admindir="+filepath.Join(root, "var/lib/dpkg"), "--showformat", "${Status}", "--show", "ipvirt").Output()
		return strings.TrimSpace(string(out))
	}
	at := func(p string) string { return filepath.Join(root, p) }

	dpkg("--install", deb)
	if s := statusOf(); s != "install ok installed" {
		t.Fatalf("after install: status %q", s)
	}
	if got, want := calls(t, log), []string{"pam-auth-update --root " + root + " --package"}; !slices.Equal(got, want) {
		t.Errorf("install ran %q, want %q (and no systemctl: the root's systemd is not running)", got, want)
	}
	if out := run(t, nil, "dpkg", "--root="+root, "--verify", "ipvirt"); out != "" {
		t.Errorf("dpkg --verify: %s", out)
	}
	for p := range packaged {
		if _, err := os.Stat(at(p)); err != nil {
			t.Errorf("installed: %v", err)
		}
	}
	sameAs(t, at("etc/ipvirt/ipvirt.yaml"), "ipvirt.yaml")
	sameAs(t, at("usr/share/pam-configs/ipvirt"), "pam-configs/ipvirt")
	sameAs(t, at("usr/share/doc/ipvirt/README.md"), "../README.md")

	t.Run("check", func(t *testing.T) { installedCheck(t, root) })
	t.Run("ipvirtctl", func(t *testing.T) {
		out := run(t, nil, at("usr/bin/ipvirtctl"), "--help")
		if !strings.Contains(out, "Usage: ipvirtctl") {
			t.Errorf("ipvirtctl --help:\n%s", out)
		}
		// ipvirtctl run finds the library where the package put it.
		out = run(t, nil, at("usr/bin/ipvirtctl"), "run", "--", "printenv", "LD_PRELOAD")
		if got := strings.TrimSpace(out); got != at("usr/lib/ipvirt/libipvirt.so") {
			t.Errorf("ipvirtctl run preloads %q, want the installed library", got)
		}
	})
	t.Run("unit", func(t *testing.T) { checkUnit(t, root) })

	// What the administrator and the daemon add: an edited config and a
	// copy of the original, the unit enabled, a lease store and a runtime
	// directory.
	orig := readFile(t, at("etc/ipvirt/ipvirt.yaml"))
	edited := orig + "# edited for this host\n"
	writeFile(t, at("etc/ipvirt/ipvirt.yaml"), edited, 0o644)
	writeFile(t, at("etc/ipvirt/ipvirt.yaml.orig"), orig, 0o644)
	if err := os.Symlink("/usr/lib/systemd/system/ipvirtd.service", at("etc/systemd/system/multi-user.target.wants/ipvirtd.service")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"var/lib/ipvirt/leases.db", "run/ipvirt/ipvirt.sock"} {
		if err := os.MkdirAll(filepath.Dir(at(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, at(p), "", 0o600)
	}

	// An upgrade (here to the same version) keeps the edited config.
	dpkg("--install", deb)
	if s := statusOf(); s != "install ok installed" {
		t.Fatalf("after upgrade: status %q", s)
	}
	if got := readFile(t, at("etc/ipvirt/ipvirt.yaml")); got != edited {
		t.Errorf("upgrade replaced the edited config")
	}
	if got, want := calls(t, log), []string{"pam-auth-update --root " + root + " --package"}; !slices.Equal(got, want) {
		t.Errorf("upgrade ran %q, want %q", got, want)
	}

	// Remove: the conffile, the state and the enablement stay.
	dpkg("--remove", "ipvirt")
	if s := statusOf(); s != "deinstall ok config-files" {
		t.Fatalf("after remove: status %q", s)
	}
	if got, want := calls(t, log), []string{"pam-auth-update --root " + root + " --package --remove ipvirt"}; !slices.Equal(got, want) {
		t.Errorf("remove ran %q, want %q", got, want)
	}
	if got := readFile(t, at("etc/ipvirt/ipvirt.yaml")); got != edited {
		t.Errorf("remove changed the config")
	}
	for p := range packaged {
		if _, err := os.Lstat(at(p)); err == nil && p != "etc/ipvirt/ipvirt.yaml" {
			t.Errorf("after remove: %s is still there", p)
		}
	}
	for _, p := range []string{"etc/ipvirt/ipvirt.yaml.orig", "var/lib/ipvirt/leases.db", "run/ipvirt/ipvirt.sock", "etc/systemd/system/multi-user.target.wants/ipvirtd.service"} {
		if _, err := os.Lstat(at(p)); err != nil {
			t.Errorf("remove took what purge alone should: %v", err)
		}
	}

	// Purge: nothing of ipvirt is left anywhere in the root.
	dpkg("--purge", "ipvirt")
	if s := statusOf(); s != "" {
		t.Errorf("after purge: status %q", s)
	}
	if got := calls(t, log); len(got) != 0 {
		t.Errorf("purge ran %q", got)
	}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Error(err)
			return nil
		}
		if strings.Contains(d.Name(), "ipvirt") {
			t.Errorf("after purge: %s is left", strings.TrimPrefix(p, root))
		}
		return nil
	})
	if strings.Contains(readFile(t, at("var/lib/dpkg/status")), "ipvirt") {
		t.Errorf("after purge: the dpkg database still names ipvirt")
	}
}

// installedCheck runs the installed ipvirtd --check on the installed
// example config, in network namespaces of its own: with the adapter the
// example names (eth0, with an address in the subnet of its static pool,
// 10.0.0.0/24) it is valid; without one the check says so, which shows it
// looked at the host.
func installedCheck(t *testing.T, root string) {
	ipvirtd, cfg := filepath.Join(root, "usr/sbin/ipvirtd"), filepath.Join(root, "etc/ipvirt/ipvirt.yaml")
	check := func(setup string) (string, error) {
		return runErr(nil, "unshare", "--net", "sh", "-c", setup+`exec "$0" --check --config "$1"`, ipvirtd, cfg)
	}
	out, err := check("ip link add eth0 type veth peer name peer0 && ip addr add 10.0.0.1/24 dev eth0 && ip link set eth0 up && ")
	if err != nil || !strings.Contains(out, "is valid: per-session mode, source static, adapter eth0 (machine IP 10.0.0.1)") {
		t.Errorf("ipvirtd --check with eth0 in 10.0.0.0/24: %v\n%s", err, out)
	}
	out, err = check("")
	if err == nil || !strings.Contains(out, `no interface named "eth0"`) {
		t.Errorf("ipvirtd --check without eth0: %v\n%s", err, out)
	}
}

// checkUnit checks the installed unit's paths and sandbox, and has
// systemd-analyze verify it.
func checkUnit(t *testing.T, root string) {
	unit := readFile(t, filepath.Join(root, "usr/lib/systemd/system/ipvirtd.service"))
	src := readFile(t, "ipvirtd.service")
	if want := strings.ReplaceAll(src, "/usr/local/", "/usr/"); unit != want {
		t.Errorf("the packaged unit is not deploy/ipvirtd.service with /usr/local/ made /usr/")
	}
	keys := map[string][]string{}
	for _, line := range strings.Split(unit, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			keys[k] = append(keys[k], v)
		}
	}
	one := func(k string) string {
		if len(keys[k]) != 1 {
			t.Errorf("%s= set %d times", k, len(keys[k]))
			return ""
		}
		return keys[k][0]
	}
	for k, want := range map[string]string{
		"ProtectSystem": "strict", "ProtectHome": "read-only", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
		"Documentation": "file:///usr/share/doc/ipvirt/README.md",
	} {
		if got := one(k); got != want {
			t.Errorf("%s=%s, want %s", k, got, want)
		}
	}
	for _, k := range []string{"ExecStartPre", "ExecStart"} {
		if got := one(k); !strings.HasPrefix(got, "/usr/sbin/ipvirtd ") || !strings.Contains(got, "--config /etc/ipvirt/ipvirt.yaml") {
			t.Errorf("%s=%s", k, got)
		}
	}
	if _, err := os.Stat(filepath.Join(root, strings.TrimPrefix(one("Documentation"), "file://"))); err != nil {
		t.Errorf("Documentation=: %v", err)
	}
	caps := strings.Fields(one("CapabilityBoundingSet"))
	slices.Sort(caps)
	// See the unit's comment for what each is for.
	want := []string{"CAP_BPF", "CAP_DAC_READ_SEARCH", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_PERFMON", "CAP_SYS_PTRACE"}
	if !slices.Equal(caps, want) {
		t.Errorf("CapabilityBoundingSet=%s, want %s", caps, want)
	}
	rw := strings.Fields(one("ReadWritePaths"))
	for _, p := range []string{"/var/lib/ipvirt", "/run/ipvirt", "-/sys/fs/bpf"} {
		if !slices.Contains(rw, p) {
			t.Errorf("ReadWritePaths=%s lacks %s", rw, p)
		}
	}

	analyze := requireTool(t, "systemd-analyze", "systemd")
	// verify wants the programs the unit runs to exist on this host: a
	// copy runs the installed ones.
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "ipvirtd.service"), strings.ReplaceAll(unit, "/usr/sbin/ipvirtd", filepath.Join(root, "usr/sbin/ipvirtd")), 0o644)
	// verify exits 0 on unknown keys and bad values too, saying so.
	out, err := runErr(nil, analyze, "verify", filepath.Join(dir, "ipvirtd.service"))
	if err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestDebScriptsOnSystemd runs the maintainer scripts as dpkg would on a
// running systemd host (no DPKG_ROOT, /run/systemd/system present: a
// tmpfs over /run in a mount namespace of their own), with systemctl and
// pam-auth-update stand-ins, and checks every call they make. Purge is
// left to TestDebInstall: here it would remove this host's directories.
func TestDebScriptsOnSystemd(t *testing.T) {
	testenv.RequireRoot(t)
	requireTool(t, "unshare", "util-linux")
	log := filepath.Join(t.TempDir(), "calls")
	path := stubs(t, log) + ":" + os.Getenv("PATH")
	// pam-auth-update runs where libpam-runtime manages the PAM stacks.
	pam := func(args string) []string {
		if _, err := os.Stat("/usr/sbin/pam-auth-update"); err != nil {
			return nil
		}
		return []string{"pam-auth-update " + args}
	}
	for _, c := range []struct {
		script string
		args   []string
		want   []string
	}{
		{"postinst", []string{"configure", ""}, append(pam("--package"), "systemctl daemon-reload")},
		{"postinst", []string{"configure", "0.0~git20260101000000.0123456"}, append(pam("--package"), "systemctl daemon-reload", "systemctl try-restart ipvirtd.service")},
		{"postinst", []string{"abort-upgrade", "1.0"}, nil},
		{"prerm", []string{"upgrade", "1.0"}, nil},
		{"prerm", []string{"deconfigure", "in-favour", "x", "1.0"}, nil},
		{"prerm", []string{"remove"}, append(pam("--package --remove ipvirt"), "systemctl stop ipvirtd.service")},
		{"postrm", []string{"remove"}, []string{"systemctl daemon-reload"}},
		{"postrm", []string{"upgrade", "1.0"}, nil},
	} {
		script, _ := filepath.Abs(filepath.Join("debian", c.script))
		cmd := exec.Command("unshare", append([]string{"--mount", "--propagation", "private", "sh", "-c",
			`mount -t tmpfs ipvirt-test /run && mkdir -p /run/systemd/system && exec "$@"`, "sh", script}, c.args...)...)
		cmd.Env = []string{"PATH=" + path}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s %s: %v\n%s", c.script, strings.Join(c.args, " "), err, out)
		}
		if got := calls(t, log); !slices.Equal(got, c.want) {
			t.Errorf("%s %s ran %q, want %q", c.script, strings.Join(c.args, " "), got, c.want)
		}
	}
}

func sameAs(t *testing.T, installed, source string) {
	t.Helper()
	if readFile(t, installed) != readFile(t, source) {
		t.Errorf("%s differs from %s", installed, source)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFile(t *testing.T, p, s string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), mode); err != nil {
		t.Fatal(err)
	}
}

// TestDebVersion: the versions deb.sh derives from git are valid Debian
// versions that sort in commit order, tags included.
func TestDebVersion(t *testing.T) {
	requireTool(t, "git", "git")
	requireTool(t, "dpkg", "dpkg")
	repo := t.TempDir()
	if err := os.MkdirAll(filepath.Join(repo, "scripts"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(repo, "scripts/deb.sh"), readFile(t, "../scripts/deb.sh"), 0o755)
	git := func(date string, args ...string) string {
		t.Helper()
		return strings.TrimSpace(run(t, []string{"GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com", "GIT_COMMITTER_NAME=t",
			"GIT_COMMITTER_EMAIL=t@example.com", "GIT_AUTHOR_DATE=" + date, "GIT_COMMITTER_DATE=" + date, "GIT_CONFIG_GLOBAL=/dev/null"},
			"git", append([]string{"-C", repo}, args...)...))
	}
	commit := func(date string) string {
		git(date, "add", "-A")
		git(date, "commit", "-q", "-m", date)
		return git(date, "rev-parse", "--short=7", "HEAD")
	}
	version := func(env ...string) string {
		return strings.TrimSpace(run(t, env, filepath.Join(repo, "scripts/deb.sh"), "--version"))
	}
	git("", "init", "-q")
	x := filepath.Join(repo, "x")
	writeFile(t, x, "1\n", 0o644)
	h1 := commit("2026-01-02T03:04:05Z")
	var got []string
	expect := func(want string) {
		t.Helper()
		v := version()
		if v != want {
			t.Errorf("version %q, want %q", v, want)
		}
		run(t, nil, "dpkg", "--validate-version", v)
		got = append(got, v)
	}
	expect("0.0~git20260102030405." + h1)
	writeFile(t, x, "2\n", 0o644)
	expect("0.0~git20260102030405." + h1 + "+dirty")
	got = got[:len(got)-1]                    // not a later version, another build of the same
	h2 := commit("2026-01-02T13:00:00+05:00") // 08:00 UTC
	expect("0.0~git20260102080000." + h2)
	git("", "tag", "v1.2.3")
	expect("1.2.3")
	writeFile(t, x, "3\n", 0o644)
	h3 := commit("2026-02-01T00:00:00Z")
	expect("1.2.3+git20260201000000." + h3)
	git("", "tag", "v2.0-rc1")
	expect("2.0~rc1")
	got = append(got, "2.0")
	for i := 1; i < len(got); i++ {
		run(t, nil, "dpkg", "--compare-versions", got[i-1], "lt", got[i])
	}
	if v := version("DEB_VERSION=3.1-1"); v != "3.1-1" {
		t.Errorf("DEB_VERSION=3.1-1 gave %q", v)
	}
}

// TestPAMProfile runs Debian's pam-auth-update on the profile the package
// installs, in a directory standing for a root (--root) and with a debconf
// database of its own (DEBCONF_SYSTEMRC), so this host's PAM and debconf
// stay untouched: off by default, on with --enable, kept by the postinst's
// --package, gone with the prerm's --remove.
func TestPAMProfile(t *testing.T) {
	tool := requireTool(t, "pam-auth-update", "libpam-runtime")
	root, db := t.TempDir(), t.TempDir()
	for _, d := range []string{"etc/pam.d", "usr/share/pam-configs", "var/lib/pam"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// pam_unix's profile, which libpam-runtime ships, makes a whole stack.
	writeFile(t, filepath.Join(root, "usr/share/pam-configs/unix"), readFile(t, "/usr/share/pam-configs/unix"), 0o644)
	writeFile(t, filepath.Join(root, "usr/share/pam-configs/ipvirt"), readFile(t, "pam-configs/ipvirt"), 0o644)
	rc := filepath.Join(db, "debconf.conf")
	writeFile(t, rc, fmt.Sprintf("Config: configdb\nTemplates: templatedb\n\nName: configdb\nDriver: File\nFilename: %s/config.dat\n\n"+
		"Name: templatedb\nDriver: File\nFilename: %s/templates.dat\n", db, db), 0o644)
	env := []string{"DEBCONF_SYSTEMRC=" + rc, "DEBIAN_FRONTEND=noninteractive"}
	session := func(args ...string) []string {
		t.Helper()
		run(t, env, tool, append([]string{"--root", root}, args...)...)
		// Both stacks: cron and other non-interactive logins set a login
		// uid too, and under session_trust: pam are virtualized only if
		// registered.
		var stacks [2][]string
		for i, name := range []string{"common-session", "common-session-noninteractive"} {
			for _, l := range strings.Split(readFile(t, filepath.Join(root, "etc/pam.d", name)), "\n") {
				if strings.Contains(l, "ipvirt") {
					stacks[i] = append(stacks[i], l)
				}
			}
		}
		if !slices.Equal(stacks[0], stacks[1]) {
			t.Errorf("common-session has %q, common-session-noninteractive %q", stacks[0], stacks[1])
		}
		return stacks[0]
	}
	// As libpam-runtime's postinst makes the stacks on a new system.
	if got := session("--package", "--force"); len(got) != 0 {
		t.Errorf("the profile is on by default: %q", got)
	}
	want := []string{
		"session\toptional\tpam_exec.so quiet type=open_session /usr/bin/ipvirtctl session open",
		"session\toptional\tpam_exec.so quiet type=close_session /usr/bin/ipvirtctl session close",
	}
	if got := session("--enable", "ipvirt"); !slices.Equal(got, want) {
		t.Errorf("enabled, common-session has %q, want %q", got, want)
	}
	if got := session("--package"); !slices.Equal(got, want) {
		t.Errorf("after the postinst's call, common-session has %q, want %q", got, want)
	}
	if got := session("--package", "--remove", "ipvirt"); len(got) != 0 {
		t.Errorf("after the prerm's call, common-session has %q", got)
	}
}
