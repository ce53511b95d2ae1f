package cgroup

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/ipvirt/ipvirt/internal/testenv"
)

func TestFindMount(t *testing.T) {
	info := "22 1 0:21 / /sys rw - sysfs sysfs rw\n" +
		"35 22 0:30 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n" +
		"40 35 0:35 / /sys/fs/cgroup/my\\040cgroup rw - cgroup2 cgroup2 rw\n"
	if m, ok := FindMount(strings.NewReader(info)); !ok || m != "/sys/fs/cgroup/my cgroup" {
		t.Fatalf("FindMount = %q, %v", m, ok)
	}
	if _, ok := FindMount(strings.NewReader("22 1 0:21 / /sys rw - sysfs sysfs rw\n")); ok {
		t.Fatal("found a cgroup2 mount where there is none")
	}
}

// TestGroup: a process started through Wrap is in the group (its
// /proc/PID/cgroup says so), and Remove ends it and the group.
func TestGroup(t *testing.T) {
	testenv.RequireRoot(t)
	g, err := Create("ipvirt-test-group-" + strings.ReplaceAll(t.Name(), "/", "-"))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Remove()
	out, err := runOut(g.Wrap([]string{"/bin/cat", "/proc/self/cgroup"}))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "0::"+g.Path+"\n") {
		t.Fatalf("a wrapped process is in %q, want %s", out, g.Path)
	}
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(g.Dir); !os.IsNotExist(err) {
		t.Fatalf("the group is still there: %v", err)
	}
}

func runOut(argv []string) (string, error) {
	out, err := exec.Command(argv[0], argv[1:]...).Output()
	return string(out), err
}
