package simcli

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"os"

	"github.com/ipvirt/ipvirt/sim/scenario/runner"
)

// fileResult is one scenario file's run, for the machine-readable reports:
// its result, or the error that kept it from running.
type fileResult struct {
	Path   string
	Result *runner.Result // nil when Err is set
	Err    error
}

// jsonReport is what --json writes: one object per scenario file.
type jsonReport struct {
	Scenarios []jsonScenario `json:"scenarios"`
	Passed    bool           `json:"passed"`
}

type jsonScenario struct {
	File    string      `json:"file"`
	Name    string      `json:"name,omitempty"`
	Error   string      `json:"error,omitempty"`
	Skipped string      `json:"skipped,omitempty"`
	Seconds float64     `json:"seconds"`
	Failed  int         `json:"failed"`
	Phases  []jsonPhase `json:"phases,omitempty"`
}

type jsonPhase struct {
	Name     string        `json:"name"`
	Skipped  string        `json:"skipped,omitempty"`
	Notes    []string      `json:"notes,omitempty"`
	Outcomes []jsonOutcome `json:"outcomes"`
}

type jsonOutcome struct {
	OK   bool   `json:"ok"`
	What string `json:"what"`
	Got  string `json:"got,omitempty"`
}

func writeJSON(path string, files []fileResult) error {
	rep := jsonReport{Scenarios: []jsonScenario{}, Passed: true}
	for _, f := range files {
		s := jsonScenario{File: f.Path}
		if f.Err != nil {
			s.Error, rep.Passed = f.Err.Error(), false
			rep.Scenarios = append(rep.Scenarios, s)
			continue
		}
		r := f.Result
		s.Name, s.Skipped, s.Seconds, s.Failed = r.Name, r.Skipped, r.Took.Seconds(), r.Failed()
		if s.Failed > 0 {
			rep.Passed = false
		}
		for _, p := range r.Phases {
			jp := jsonPhase{Name: p.Name, Skipped: p.Skipped, Notes: p.Notes, Outcomes: []jsonOutcome{}}
			for _, o := range p.Outcomes {
				jp.Outcomes = append(jp.Outcomes, jsonOutcome{OK: o.OK, What: o.What, Got: o.Got})
			}
			s.Phases = append(s.Phases, jp)
		}
		rep.Scenarios = append(rep.Scenarios, s)
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// JUnit XML as CI systems read it (Jenkins, GitLab, GitHub Actions report
// actions): a test suite per scenario file, a test case per expectation,
// named "phase / expectation".
type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Name     string       `xml:"name,attr"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Errors   int          `xml:"errors,attr"`
	Skipped  int          `xml:"skipped,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name     string      `xml:"name,attr"`
	File     string      `xml:"file,attr,omitempty"`
	Tests    int         `xml:"tests,attr"`
	Failures int         `xml:"failures,attr"`
	Errors   int         `xml:"errors,attr"`
	Skipped  int         `xml:"skipped,attr"`
	Time     string      `xml:"time,attr"`
	Cases    []junitCase `xml:"testcase"`
}

type junitCase struct {
	ClassName string        `xml:"classname,attr"`
	Name      string        `xml:"name,attr"`
	Failure   *junitMessage `xml:"failure,omitempty"`
	Error     *junitMessage `xml:"error,omitempty"`
	Skipped   *junitMessage `xml:"skipped,omitempty"`
}

type junitMessage struct {
	Message string `xml:"message,attr"`
	Text    string `xml:",chardata"`
}

func writeJUnit(path string, files []fileResult) error {
	all := junitSuites{Name: "ipvirt-sim"}
	for _, f := range files {
		suite := junitSuite{Name: f.Path, File: f.Path, Time: "0"}
		add := func(c junitCase) {
			suite.Tests++
			switch {
			case c.Failure != nil:
				suite.Failures++
			case c.Error != nil:
				suite.Errors++
			case c.Skipped != nil:
				suite.Skipped++
			}
			suite.Cases = append(suite.Cases, c)
		}
		if f.Err != nil {
			add(junitCase{ClassName: f.Path, Name: "run", Error: &junitMessage{Message: firstLine(f.Err.Error()), Text: f.Err.Error()}})
		} else {
			r := f.Result
			suite.Name, suite.Time = r.Name, fmt.Sprintf("%.3f", r.Took.Seconds())
			if r.Skipped != "" {
				add(junitCase{ClassName: r.Name, Name: "run", Skipped: &junitMessage{Message: r.Skipped}})
			}
			for _, p := range r.Phases {
				if p.Skipped != "" {
					add(junitCase{ClassName: r.Name, Name: p.Name, Skipped: &junitMessage{Message: p.Skipped}})
				}
				for _, o := range p.Outcomes {
					c := junitCase{ClassName: r.Name, Name: p.Name + " / " + o.What}
					if !o.OK {
						line := runner.OutcomeLine(o)
						c.Failure = &junitMessage{Message: line, Text: line}
					}
					add(c)
				}
			}
		}
		all.Tests += suite.Tests
		all.Failures += suite.Failures
		all.Errors += suite.Errors
		all.Skipped += suite.Skipped
		all.Suites = append(all.Suites, suite)
	}
	b, err := xml.MarshalIndent(all, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append([]byte(xml.Header), append(b, '\n')...), 0o644)
}
