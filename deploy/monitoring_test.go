// Package deploy holds what an administrator installs beside ipvirt: the
// systemd unit, the example configuration, the PAM profile, the Debian
// maintainer scripts, the Prometheus alert rules and the Grafana
// dashboard. Its tests check that the monitoring files name only metrics
// the daemon really exports, and that the Debian package (scripts/deb.sh)
// installs, runs and purges cleanly (deb_test.go).
package deploy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/sim/daemonproc"
	"github.com/ipvirt/ipvirt/sim/dhcpserver"
)

// exported scrapes the real ipvirtd, once with a static pool and once
// with a DHCP source (whose metrics exist only then), and returns every
// metric family name it exports.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	srv, err := dhcpserver.Start(context.Background(), dhcpserver.Config{Listen: "127.0.0.1:0", PrefixLen: 24,
		RangeStart: netip.MustParseAddr("127.78.9.10"), RangeEnd: netip.MustParseAddr("127.78.9.20"), LeaseTime: time.Hour}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	port := srv.Addr().Port()
	names := map[string]bool{}
	for _, body := range []string{
		"adapter: lo\nsession_identity: posix\nsource: static\nstatic_pool: {start: 127.78.8.10, end: 127.78.8.20, subnet_mask: 255.255.255.0}\n",
		fmt.Sprintf("adapter: lo\nsession_identity: posix\npreallocate: false\ndhcp: {server: '127.0.0.1:%d', server_port: %d, relay_address: 127.78.9.1, arp_probe: false}\n", port, port),
	} {
		d, err := daemonproc.New(t.TempDir(), body, true)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Start(context.Background()); err != nil {
			t.Fatalf("%v\n%s", err, d.Logs())
		}
		resp, err := http.Get("http://" + d.HTTP + "/metrics")
		if err != nil {
			d.Stop(9)
			t.Fatal(err)
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
				names[f[2]] = true
			}
		}
		resp.Body.Close()
		d.Stop(15)
	}
	// The kernel interceptor's counters exist only where it is attached
	// (root, eBPF); their names are read from the collector's source.
	src, err := os.ReadFile("../internal/daemon/kernel.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`NewDesc\("(ipvirt_[a-z0-9_]+)"`).FindAllStringSubmatch(string(src), -1) {
		names[m[1]] = true
	}
	return names
}

var metricName = regexp.MustCompile(`\bipvirt_[a-z0-9_]+`)

// family maps a sample name to its family (histogram series).
func family(name string) string {
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if f, ok := strings.CutSuffix(name, suffix); ok && strings.HasSuffix(f, "_seconds") {
			return f
		}
	}
	return name
}

// TestMonitoringNamesExportedMetrics: every query of the Grafana dashboard
// and every alert rule names only metrics the daemon exports, so neither
// goes silently empty after a rename.
func TestMonitoringNamesExportedMetrics(t *testing.T) {
	names := exported(t)
	if !names["ipvirt_leases_active"] || !names["ipvirt_dhcp_expiries_total"] {
		t.Fatalf("the scrape found too little: %v", names)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	b, err := os.ReadFile("grafana/ipvirt-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("grafana/ipvirt-dashboard.json: %v", err)
	}
	queries := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			queries++
			used := metricName.FindAllString(tg.Expr, -1)
			if len(used) == 0 {
				t.Errorf("panel %q: query %q names no ipvirt metric", p.Title, tg.Expr)
			}
			for _, m := range used {
				if !names[family(m)] {
					t.Errorf("panel %q: %s is not a metric ipvirtd exports", p.Title, m)
				}
			}
		}
	}
	if queries < 10 {
		t.Fatalf("the dashboard has %d queries", queries)
	}
	rules, err := os.ReadFile("prometheus/ipvirt-rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range metricName.FindAllString(string(rules), -1) {
		if !names[family(m)] {
			t.Errorf("prometheus/ipvirt-rules.yml: %s is not a metric ipvirtd exports", m)
		}
	}
}

// TestAlertRules runs the rules' unit tests with Debian's promtool.
func TestAlertRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: install the Debian package prometheus (scripts/deps.sh lists it)")
	}
	for _, args := range [][]string{{"check", "rules", "ipvirt-rules.yml"}, {"test", "rules", "ipvirt-rules_test.yml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "prometheus"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
