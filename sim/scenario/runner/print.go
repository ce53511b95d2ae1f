package runner

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/ipvirt/ipvirt/sim/scenario"
	"github.com/ipvirt/ipvirt/sim/scenario/check"
)

func (r *fileRun) header() {
	w := r.opts.Out
	fmt.Fprintf(w, "\n== %s\n", r.f.Name)
	if d := strings.TrimSpace(r.f.Description); d != "" {
		for _, line := range strings.Split(d, "\n") {
			fmt.Fprintf(w, "   %s\n", strings.TrimSpace(line))
		}
	}
	kind := "audit (kernel login sessions, as pam_loginuid makes them)"
	if r.kind != "audit" {
		kind = "POSIX (setsid; run as root for kernel audit sessions)"
	}
	fmt.Fprintf(w, "   sessions: %s; machine IP %s; database server %s\n", kind, r.topo.MachineIP(), r.srv.Addr())
}

func (r *fileRun) print(i int, p *scenario.Phase, pr *PhaseResult) {
	w := r.opts.Out
	fmt.Fprintf(w, "\n-- phase %d/%d: %s  [interceptor: %s]\n", i+1, len(r.f.Phases), p.Name, p.Interceptor)
	for _, line := range wrap(p.Says, 76) {
		fmt.Fprintf(w, "   %s\n", line)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "   SESSION\tUSER\tPROGRAM\tLEFT FROM\tSERVER SAID\tCONNECT")
	shown := pr.Clients
	if len(shown) > 24 { // a logon storm: the checks below cover every client
		shown = shown[:8]
	}
	for _, c := range shown {
		src := "-"
		if c.Source.IsValid() {
			src = c.Source.Addr().String()
			switch {
			case c.Source.Addr() == r.machineIPOf(c.Host):
				src += " (machine IP)"
			case c.Source.Addr() == c.VIP:
				src += " (VIP)"
			}
		}
		verdict := c.Verdict
		if c.Errno != "" {
			verdict += " (" + c.Errno + ")"
		}
		sess := c.Session + " " + c.Key
		if c.Key == "-" {
			sess = c.Session + " (no session)"
		}
		fmt.Fprintf(tw, "   %s\t%d\t%s\t%s\t%s\t%s\n", sess, c.UID, c.Name, src, verdict, c.Connect.Round(1000))
	}
	tw.Flush()
	if n := len(pr.Clients) - len(shown); n > 0 {
		fmt.Fprintf(w, "   ... and %d more clients\n", n)
	}
	for _, note := range pr.Notes {
		fmt.Fprintf(w, "   %s\n", note)
	}
	for _, o := range pr.Outcomes {
		fmt.Fprintf(w, "   %s\n", OutcomeLine(o))
	}
}

// OutcomeLine is an expectation's line in the report: "PASS  what" or
// "FAIL  what  (got ...)".
func OutcomeLine(o check.Outcome) string {
	if o.OK {
		return "PASS  " + o.What
	}
	if o.Got != "" {
		return "FAIL  " + o.What + "  (got " + o.Got + ")"
	}
	return "FAIL  " + o.What
}

// Summary prints the closing line of a file's run.
func Summary(r *Result) string {
	if r.Skipped != "" {
		return fmt.Sprintf("SKIP %s: %s", r.Name, r.Skipped)
	}
	checks, skipped := 0, ""
	for _, p := range r.Phases {
		checks += len(p.Outcomes)
		if p.Skipped != "" {
			skipped = fmt.Sprintf(", phase %q skipped: %s", p.Name, p.Skipped)
		}
	}
	if f := r.Failed(); f > 0 {
		return fmt.Sprintf("FAIL %s: %d of %d checks failed (%s)", r.Name, f, checks, r.Took.Round(1e7))
	}
	return fmt.Sprintf("PASS %s: %d phases, %d checks (%s)%s", r.Name, len(r.Phases), checks, r.Took.Round(1e7), skipped)
}

// wrap breaks text into lines of at most width columns, at spaces.
func wrap(text string, width int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(text) {
		if line != "" && len(line)+1+len(w) > width {
			lines = append(lines, line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}
