package identity

import (
	"os"
	"path/filepath"
	"testing"
)

func TestInScope(t *testing.T) {
	for _, tt := range []struct {
		path, scope string
		want        bool
	}{
		{"/user.slice/user-1000.slice/session-3.scope", "/user.slice", true},
		{"/user.slice", "/user.slice", true},
		{"/user.slicex/a", "/user.slice", false},
		{"/system.slice/sshd.service", "/user.slice", false},
		{"/", "/user.slice", false},
		{"/anything", "", true},
		{"/anything", "/", true},
	} {
		if got := InScope(tt.path, tt.scope); got != tt.want {
			t.Errorf("InScope(%q, %q) = %v, want %v", tt.path, tt.scope, got, tt.want)
		}
	}
}

// TestCgroupAndScope: the cgroup2 line is found among v1 lines, and a
// caller outside the scope is in no session, with its cgroup named.
func TestCgroupAndScope(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "42"), 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(root, "42", name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("cgroup", "12:pids:/x\n1:name=systemd:/y\n0::/system.slice/cron.service\n")
	write("sessionid", "7\n")
	write("loginuid", "1000\n")
	p := Proc{Root: root}
	if cg, err := p.Cgroup(42); err != nil || cg != "/system.slice/cron.service" {
		t.Fatalf("Cgroup = %q, %v", cg, err)
	}
	r := Resolver{Proc: p, Identity: Audit, Scope: "/user.slice"}
	c, _, err := r.resolve(42, 1000, 1000, false)
	if err != nil {
		t.Fatal(err)
	}
	if c.Session.Valid() || c.OutOfScope != "/system.slice/cron.service" {
		t.Fatalf("caller outside the scope: %+v", c)
	}
	r.Scope = "/system.slice"
	if c, _, _ := r.resolve(42, 1000, 1000, false); !c.Session.Valid() || c.OutOfScope != "" {
		t.Fatalf("caller inside the scope: %+v", c)
	}
}
