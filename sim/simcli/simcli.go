// Package simcli is the command line of ipvirt-sim.
package simcli

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"

	"github.com/ipvirt/ipvirt/sim/dbclient/goclient"
	"github.com/ipvirt/ipvirt/sim/dbserver"
	"github.com/ipvirt/ipvirt/sim/dhcpserver"
	"github.com/ipvirt/ipvirt/sim/scenario"
	"github.com/ipvirt/ipvirt/sim/scenario/runner"
)

const usage = `usage: ipvirt-sim COMMAND [ARGS]

Replays ipvirt scenarios: real login sessions running unmodified clients
against a database server that refuses a second client from the same
address, with the real ipvirtd deciding each session's address.

Commands:
  run FILE|DIR...     replay scenario files (a DIR: every *.yaml in it, sorted);
                      exit 0 only if every expectation holds
  client HOST PORT    the database client in Go (raw system calls)
  db-server           run the database server alone
  dhcp-server         run a synthetic DHCP server (see -h)

Run 'ipvirt-sim COMMAND -h' for a command's flags. Scenario format:
scenarios/README.md.
`

// Main runs ipvirt-sim with args and returns its exit code.
func Main(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return run(args[1:])
	case "client":
		return goclient.Main(args[1:])
	case "db-server":
		return dbServer(args[1:])
	case "dhcp-server", "dhcpserver":
		return dhcpserver.Main(args[1:])
	case "-h", "--help", "help":
		fmt.Print(usage)
		return 0
	}
	fmt.Fprintf(os.Stderr, "ipvirt-sim: unknown command %q\n\n%s", args[0], usage)
	return 2
}

func run(args []string) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: ipvirt-sim run [flags] FILE|DIR...\n\n"+
			"Replays each scenario and prints, per phase, every client: its session,\n"+
			"the address it left from and what the database server said; then each\n"+
			"expectation as PASS or FAIL. Exit status: 0 all passed (or skipped for\n"+
			"lack of root, unless CI=true), 1 an expectation failed, 2 a scenario\n"+
			"could not run (or a report could not be written).\n\nFlags:")
		fs.PrintDefaults()
	}
	verbose := fs.Bool("v", false, "log what the simulator does to stderr")
	keep := fs.Bool("keep", false, "keep each run's work directory (daemon configs, logs, state)")
	metricsOut := fs.String("metrics-out", "", "write the simulator's metrics (connect latency histogram by interceptor, database server counters) to `file` in Prometheus text format")
	listen := fs.String("listen", "", "serve the simulator's metrics on http://`addr`/metrics while running")
	junitOut := fs.String("junit", "", "write a JUnit XML report to `file`: a test suite per scenario file, a test case per expectation (\"phase / expectation\"), a failure's message its FAIL line")
	jsonOut := fs.String("json", "", "write a JSON report to `file`: every scenario, phase and expectation with its result")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	files, err := expand(fs.Args())
	if err != nil {
		fmt.Fprintln(os.Stderr, "ipvirt-sim:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelDebug
	}
	opts := runner.Options{
		Log:     slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
		Metrics: runner.NewMetrics(),
		Keep:    *keep,
	}
	if *listen != "" {
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			fmt.Fprintln(os.Stderr, "ipvirt-sim: --listen:", err)
			return 2
		}
		srv := &http.Server{Handler: promhttp.HandlerFor(opts.Metrics.Registry, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
	}
	status := 0
	var summary []string
	var results []fileResult
	for _, path := range files {
		f, err := scenario.Load(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "ipvirt-sim:", err)
			status = 2
			summary = append(summary, "ERROR "+path)
			results = append(results, fileResult{Path: path, Err: err})
			continue
		}
		res, err := runner.Run(ctx, f, opts)
		if err != nil && ctx.Err() != nil {
			// Run has stopped everything it started on its way out.
			fmt.Fprintln(os.Stderr, "\nipvirt-sim: interrupted; sessions, daemon, DHCP servers and namespaces are cleaned up")
			summary = append(summary, "INTERRUPTED "+f.Name)
			results = append(results, fileResult{Path: path, Err: fmt.Errorf("interrupted: %w", err)})
			status = 2
			break
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "\nipvirt-sim:", err)
			status = 2
			summary = append(summary, "ERROR "+f.Name+": "+firstLine(err.Error()))
			results = append(results, fileResult{Path: path, Err: err})
			continue
		}
		if res.Failed() > 0 && status == 0 {
			status = 1
		}
		summary = append(summary, runner.Summary(res))
		results = append(results, fileResult{Path: path, Result: res})
	}
	for _, rep := range []struct {
		flag, path string
		write      func(string, []fileResult) error
	}{{"--junit", *junitOut, writeJUnit}, {"--json", *jsonOut, writeJSON}} {
		if rep.path == "" {
			continue
		}
		if err := rep.write(rep.path, results); err != nil {
			fmt.Fprintf(os.Stderr, "ipvirt-sim: %s %s: %v\n", rep.flag, rep.path, err)
			status = 2
		}
	}
	fmt.Println()
	for _, s := range summary {
		fmt.Println(s)
	}
	if *metricsOut != "" {
		if err := writeMetrics(*metricsOut, opts.Metrics.Registry); err != nil {
			fmt.Fprintln(os.Stderr, "ipvirt-sim: --metrics-out:", err)
			return 2
		}
	}
	return status
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// expand turns directories into their *.yaml files, sorted.
func expand(args []string) ([]string, error) {
	var out []string
	for _, a := range args {
		st, err := os.Stat(a)
		if err != nil {
			return nil, err
		}
		if !st.IsDir() {
			out = append(out, a)
			continue
		}
		m, err := filepath.Glob(filepath.Join(a, "*.yaml"))
		if err != nil {
			return nil, err
		}
		if len(m) == 0 {
			return nil, fmt.Errorf("%s: no *.yaml scenario files", a)
		}
		sort.Strings(m)
		out = append(out, m...)
	}
	return out, nil
}

func writeMetrics(path string, reg *prometheus.Registry) error {
	mfs, err := reg.Gather()
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	enc := expfmt.NewEncoder(f, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

func dbServer(args []string) int {
	fs := flag.NewFlagSet("db-server", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: ipvirt-sim db-server [--listen ADDR] [--metrics ADDR]\n\n"+
			"Runs the simulated database server: it keeps every client connected and\n"+
			"refuses a new client whose source address already has a live connection.\n\nFlags:")
		fs.PrintDefaults()
	}
	addr := fs.String("listen", "127.0.0.1:5433", "TCP `address` to accept clients on")
	metrics := fs.String("metrics", "", "serve Prometheus metrics on http://`addr`/metrics")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	reg := prometheus.NewRegistry()
	srv, err := dbserver.Listen(*addr, reg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ipvirt-sim:", err)
		return 1
	}
	defer srv.Close()
	if *metrics != "" {
		go http.ListenAndServe(*metrics, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	}
	fmt.Printf("ipvirt-sim: database server on %s (Ctrl-C stops)\n", srv.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return 0
}
