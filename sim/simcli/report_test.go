package simcli

import (
	"encoding/json"
	"encoding/xml"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/sim/scenario/check"
	"github.com/ipvirt/ipvirt/sim/scenario/runner"
)

func sampleResults() []fileResult {
	return []fileResult{
		{Path: "scenarios/a.yaml", Result: &runner.Result{Name: "a", Took: 1500 * time.Millisecond, Phases: []runner.PhaseResult{
			{Name: "per-session", Outcomes: []check.Outcome{
				{OK: true, What: "accepted by the server = 3"},
				{OK: false, What: "refused by the server = 0", Got: "1"},
			}},
			{Name: "kernel", Skipped: "needs root"},
		}}},
		{Path: "scenarios/b.yaml", Err: errors.New("line 3: unknown key \"sesions\"")},
	}
}

// TestJUnitReport: one test case per expectation, named by phase and
// check; a failure carries its FAIL line; a file that could not run is an
// error; a skipped phase is skipped. The counts add up.
func TestJUnitReport(t *testing.T) {
	path := filepath.Join(t.TempDir(), "junit.xml")
	if err := writeJUnit(path, sampleResults()); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var got junitSuites
	if err := xml.Unmarshal(b, &got); err != nil {
		t.Fatalf("not XML: %v\n%s", err, b)
	}
	if got.Tests != 4 || got.Failures != 1 || got.Errors != 1 || got.Skipped != 1 || len(got.Suites) != 2 {
		t.Fatalf("counts tests %d failures %d errors %d skipped %d suites %d\n%s", got.Tests, got.Failures, got.Errors, got.Skipped, len(got.Suites), b)
	}
	a := got.Suites[0]
	if a.Name != "a" || a.Cases[1].Name != "per-session / refused by the server = 0" || a.Cases[1].Failure == nil ||
		a.Cases[1].Failure.Message != "FAIL  refused by the server = 0  (got 1)" || a.Time != "1.500" {
		t.Fatalf("suite a: %+v", a)
	}
	if a.Cases[0].Failure != nil || a.Cases[2].Skipped == nil || a.Cases[2].Skipped.Message != "needs root" {
		t.Fatalf("suite a cases: %+v", a.Cases)
	}
	if e := got.Suites[1].Cases[0].Error; e == nil || !strings.Contains(e.Message, "sesions") {
		t.Fatalf("an unrunnable file is not an error case: %+v", got.Suites[1])
	}
}

func TestJSONReport(t *testing.T) {
	path := filepath.Join(t.TempDir(), "report.json")
	if err := writeJSON(path, sampleResults()); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	var got jsonReport
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.Passed || len(got.Scenarios) != 2 || got.Scenarios[0].Failed != 1 ||
		got.Scenarios[0].Phases[0].Outcomes[1].Got != "1" || got.Scenarios[1].Error == "" {
		t.Fatalf("report:\n%s", b)
	}
}
