package check

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ipvirt/ipvirt/sim/daemonproc"
	"github.com/ipvirt/ipvirt/sim/scenario/strictyaml"
)

// Alerts checks the alert rules ipvirt ships (deploy/prometheus) against the
// phase, with a real Prometheus (Debian's) scraping the phase's daemon every
// second: each alert in Fired must have fired at some moment of the phase,
// and no other ipvirt alert may have. The rules' `for:` windows are set to
// zero here, since a phase lasts seconds; promtool's unit tests
// (ipvirt-rules_test.yml) check the windows themselves.
type Alerts struct {
	Fired []string            `yaml:"fired"`
	Wait  strictyaml.Duration `yaml:"wait"` // how long to wait for Fired after the phase (default 20s)
}

func init() {
	Register("alerts", func(spec *yaml.Node, at Site) (Check, error) {
		var a Alerts
		if err := at.Decode(spec, &a); err != nil {
			return nil, err
		}
		for _, name := range a.Fired {
			if !strings.HasPrefix(name, "Ipvirt") {
				return nil, strictyaml.Errorf(at.Line, "%s expect.alerts: %q is not one of ipvirt's alerts (IpvirtPoolExhausted, ...)", at.Phase, name)
			}
		}
		return &a, nil
	})
}

// Begin starts Prometheus beside the daemon (in its network namespace) and
// waits for its first scrape, so that every change in the phase is seen.
func (a *Alerts) Begin(ctx context.Context, env *Env) (func(context.Context) []Outcome, error) {
	if env.Daemon.HTTP == "" {
		return nil, fmt.Errorf("alerts: the daemon serves no HTTP")
	}
	p, err := startPrometheus(ctx, env)
	if err != nil {
		return nil, err
	}
	began := time.Now()
	return func(ctx context.Context) []Outcome {
		defer p.stop()
		wait := time.Duration(a.Wait)
		if wait == 0 {
			wait = 20 * time.Second
		}
		var fired []string
		var err error
		for deadline := time.Now().Add(wait); ; time.Sleep(500 * time.Millisecond) {
			fired, err = p.firedSince(ctx, began)
			if err == nil && subset(a.Fired, fired) || time.Now().After(deadline) || ctx.Err() != nil {
				break
			}
		}
		if len(a.Fired) == 0 {
			// A quiet phase: give the rules a few evaluations to speak up.
			time.Sleep(3 * time.Second)
			fired, err = p.firedSince(ctx, began)
		}
		if err != nil {
			return []Outcome{{What: "alerts", Got: err.Error()}}
		}
		var out []Outcome
		for _, name := range a.Fired {
			out = append(out, Outcome{OK: slices.Contains(fired, name), What: "alert " + name + " fired",
				Got: "fired: " + orNone(fired)})
		}
		var extra []string
		for _, name := range fired {
			if !slices.Contains(a.Fired, name) {
				extra = append(extra, name)
			}
		}
		out = append(out, Outcome{OK: len(extra) == 0, What: "no other ipvirt alert fired", Got: "also fired: " + orNone(extra)})
		return out
	}, nil
}

func subset(want, have []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

type prometheus struct {
	cmd    *exec.Cmd
	dir    string
	addr   string
	client *http.Client
}

// forLine matches a rule's `for:` line, to set its window to zero.
var forLine = regexp.MustCompile(`(?m)^(\s+for:\s*)\S+\s*$`)

func startPrometheus(ctx context.Context, env *Env) (*prometheus, error) {
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		return nil, fmt.Errorf("alerts: prometheus not found: install the Debian package prometheus (scripts/deps.sh lists it)")
	}
	root, err := daemonproc.ModuleRoot()
	if err != nil {
		return nil, err
	}
	rules, err := os.ReadFile(filepath.Join(root, "deploy", "prometheus", "ipvirt-rules.yml"))
	if err != nil {
		return nil, fmt.Errorf("alerts: %w", err)
	}
	dir, err := os.MkdirTemp("", "ipvirt-sim-prometheus-")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "rules.yml"), forLine.ReplaceAll(rules, []byte("${1}0s")), 0o644); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [%s]
scrape_configs:
  - job_name: ipvirt
    static_configs: [{targets: ["%s"]}]
`, filepath.Join(dir, "rules.yml"), env.Daemon.HTTP)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	p := &prometheus{dir: dir, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), client: &http.Client{Timeout: 5 * time.Second}}
	if env.Daemon.DialHTTP != nil {
		p.client.Transport = &http.Transport{DialContext: env.Daemon.DialHTTP, DisableKeepAlives: true}
	}
	argv := env.Topology.Wrap("session", []string{bin, "--config.file=" + filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path=" + filepath.Join(dir, "data"), "--web.listen-address=" + p.addr, "--log.level=warn"})
	p.cmd = exec.Command(argv[0], argv[1:]...)
	logs := &daemonproc.LockedBuffer{}
	p.cmd.Stdout, p.cmd.Stderr = logs, logs
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("alerts: start prometheus: %w", err)
	}
	// Ready once it has scraped the daemon.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if v, err := p.query(ctx, `up{job="ipvirt"}`); err == nil && len(v) == 1 && v[0].value == "1" {
			return p, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			p.stop()
			return nil, fmt.Errorf("alerts: prometheus did not scrape the daemon within 30s:\n%s", logs)
		}
	}
}

func (p *prometheus) stop() {
	if p.cmd.Process != nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
	os.RemoveAll(p.dir)
}

type sample struct {
	labels map[string]string
	value  string
}

func (p *prometheus) query(ctx context.Context, q string) ([]sample, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+p.addr+"/api/v1/query?query="+url.QueryEscape(q), nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, err
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("prometheus: %s", r.Error)
	}
	var out []sample
	for _, s := range r.Data.Result {
		v, _ := s.Value[1].(string)
		out = append(out, sample{labels: s.Metric, value: v})
	}
	return out, nil
}

// firedSince lists the alerts that were firing at any evaluation since t.
func (p *prometheus) firedSince(ctx context.Context, t time.Time) ([]string, error) {
	window := time.Since(t).Round(time.Second) + time.Second
	res, err := p.query(ctx, fmt.Sprintf(`max by (alertname) (max_over_time(ALERTS{alertstate="firing"}[%ds]))`, int(window.Seconds())))
	if err != nil {
		return nil, err
	}
	var names []string
	for _, s := range res {
		names = append(names, s.labels["alertname"])
	}
	slices.Sort(names)
	return names, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
