package runner

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/sim/loginsession"
	"github.com/ipvirt/ipvirt/sim/scenario"
)

// testClientEnv gives preloaded clients a fail-open timeout that a busy
// host (this suite beside every other package's tests) does not hit; the
// checks are about which address a client leaves from, not how fast its
// first answer came.
var testClientEnv = []string{"IPVIRT_TIMEOUT_MS=3000"}

func scenarioPath(name string) string { return filepath.Join("..", "..", "..", "scenarios", name) }

// Every scenario file in scenarios/, and the runner's own in testdata/, is
// an acceptance test, run side by side with the others and beside 30
// foreign login sessions: run it for real (audit sessions as root, POSIX
// otherwise; a file that needs root is skipped without it, never under
// CI=true).
func TestScenarioFiles(t *testing.T) {
	files, err := filepath.Glob(scenarioPath("*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	own, _ := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	files = append(files, own...)
	if len(files) < 4 {
		t.Fatalf("found only %v", files)
	}
	// 30 foreign login sessions stay alive through every file: a scenario's
	// outcome must not depend on what else lives on the host.
	if os.Geteuid() == 0 {
		for i := range 30 {
			s, err := loginsession.Start(context.Background(), loginsession.Audit, uint32(5300+i))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
		}
	}
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			// Side by side (go test -parallel, GOMAXPROCS by default): each
			// run has its own cgroup, namespaces, daemon and pin directory.
			t.Parallel()
			f, err := scenario.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			if slowFile(path) && os.Getenv("IPVIRT_SIM_FARM") != "1" {
				t.Skip("a farm scenario (40-70 s, three daemons and an etcd cluster): run with IPVIRT_SIM_FARM=1, or ipvirt-sim run")
			}
			var out bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			res, err := Run(ctx, f, Options{Out: &out, ClientEnv: testClientEnv})
			if err != nil {
				t.Fatalf("%v\n%s", err, out.String())
			}
			if res.Skipped != "" {
				t.Skip(res.Skipped)
			}
			if res.Failed() > 0 || len(res.Phases) != len(f.Phases) {
				t.Fatalf("%s\n%s", Summary(res), out.String())
			}
			assertNoLeftovers(t, res.WorkDir)
		})
	}
}

// A scenario must be able to fail: the same run with a wrong expectation
// reports it, names it and counts it.
func TestWrongExpectationFails(t *testing.T) {
	b, err := os.ReadFile(scenarioPath("duplicate-ip.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// Phase 1 (disabled) really accepts one client; claim three.
	wrong := strings.Replace(string(b), "      accepted: 1\n", "      accepted: 3\n", 1)
	if wrong == string(b) {
		t.Fatal("fixture changed: no 'accepted: 1' to falsify")
	}
	f, err := scenario.Parse([]byte(wrong))
	if err != nil {
		t.Fatal(err)
	}
	f.Phases = f.Phases[:1]
	var out bytes.Buffer
	res, err := Run(context.Background(), f, Options{Out: &out, ClientEnv: testClientEnv})
	if err != nil {
		t.Fatal(err)
	}
	if res.Failed() != 1 {
		t.Fatalf("failed checks = %d, want 1\n%s", res.Failed(), out.String())
	}
	if !strings.Contains(out.String(), "FAIL  accepted by the server = 3  (got 1)") {
		t.Fatalf("report does not name the failed check:\n%s", out.String())
	}
	if !strings.HasPrefix(Summary(res), "FAIL duplicate-ip") {
		t.Fatalf("summary %q", Summary(res))
	}
}

// assertNoLeftovers: no client of a finished run still runs (the clients
// run from the run's work directory, which is gone by now). Only this run's
// are looked for: another run may be going on at the same time.
// slowFile is a scenario make test only parses: the farm's (farm-*.yaml)
// take 40 to 70 s each on their own, more on a loaded 2-CPU host.
func slowFile(path string) bool { return strings.HasPrefix(filepath.Base(path), "farm-") }

func assertNoLeftovers(t *testing.T, work string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var left []string
		procs, _ := filepath.Glob("/proc/[0-9]*/exe")
		for _, p := range procs {
			exe, err := os.Readlink(p)
			if err == nil && strings.HasPrefix(exe, work+"/") {
				left = append(left, filepath.Dir(p)+" "+exe)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes left behind: %v", left)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// An alert expectation must be able to fail: exhausted.yaml claiming the
// daemon-down alert (which does not fire) reports it, and reports the
// exhaustion alert that did fire as unexpected.
func TestAlertExpectationCanFail(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(scenarioPath("exhausted.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	wrong := strings.Replace(string(b), "alerts: {fired: [IpvirtPoolExhausted]}", "alerts: {fired: [IpvirtDown], wait: 3s}", 1)
	if wrong == string(b) {
		t.Fatal("fixture changed: no exhaustion alert expectation to falsify")
	}
	f, err := scenario.Parse([]byte(wrong))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res, err := Run(context.Background(), f, Options{Out: &out, ClientEnv: testClientEnv})
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if res.Skipped != "" {
		t.Skip(res.Skipped)
	}
	for _, want := range []string{"FAIL  alert IpvirtDown fired", "FAIL  no other ipvirt alert fired  (got also fired: IpvirtPoolExhausted)"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("report lacks %q:\n%s", want, out.String())
		}
	}
}
