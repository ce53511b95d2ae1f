package daemon_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"github.com/ipvirt/ipvirt/sim/daemonproc"
)

// A second ipvirtd started by mistake on the adapter of a running one (its
// own state_dir and socket) used to reconcile the adapter before failing,
// deleting the running daemon's VIP addresses for good. It must fail while
// touching nothing: the running daemon's VIP stays on the adapter.
func TestSecondDaemonTouchesNothing(t *testing.T) {
	ns := twoUplinkHost(t)
	wrap := func(argv []string) []string { return append([]string{"ip", "netns", "exec", ns}, argv...) }
	ctl, err := daemonproc.Binary("ipvirtctl")
	if err != nil {
		t.Fatal(err)
	}
	body := "adapter: eth0\nsource: static\nmode: per-program\nprograms: [" + ctl + "]\n" +
		"static_pool: {start: 10.50.0.100, end: 10.50.0.199, subnet_mask: 255.255.255.0}\n"
	first, err := daemonproc.New(t.TempDir(), daemonConfig(body), false)
	if err != nil {
		t.Fatal(err)
	}
	first.Wrap = wrap
	e := startEnv(t, first, nil)
	vip := e.mustVIP(e.session(4011))
	onAdapter := func() bool {
		out, _ := exec.Command("ip", "-n", ns, "-4", "addr", "show", "eth0").CombinedOutput()
		return strings.Contains(string(out), vip+"/24")
	}
	if !onAdapter() {
		t.Fatalf("the first daemon's VIP %s is not on eth0", vip)
	}

	second, err := daemonproc.New(t.TempDir(), daemonConfig(body), false)
	if err != nil {
		t.Fatal(err)
	}
	second.Wrap = wrap
	err = second.Start(context.Background())
	if err == nil {
		second.Stop(9)
		t.Fatal("a second daemon on the same adapter started")
	}
	if !strings.Contains(second.Logs(), "managed by another ipvirtd") {
		t.Fatalf("the second daemon did not say why it stopped:\n%s", second.Logs())
	}
	if !onAdapter() {
		t.Fatalf("the second daemon removed the first one's VIP %s from eth0:\n%s", vip, second.Logs())
	}
	if got := e.mustVIP(e.session(4012)); got == vip {
		t.Fatalf("two sessions got %s", vip)
	}
}
