// Command ipvirtd is the ipvirt allocation daemon.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/ipvirt/ipvirt/internal/adapter"
	"github.com/ipvirt/ipvirt/internal/config"
	"github.com/ipvirt/ipvirt/internal/daemon"
	"github.com/ipvirt/ipvirt/internal/policy"
)

const usage = `Usage: ipvirtd [--config FILE] [--check] [--log-level LEVEL] [--log-format text|json]

ipvirtd gives each login session, or each listed program in a session, its own
virtual IP address (VIP). Programs ask it over a Unix socket which address they
may use (the LD_PRELOAD library and the kernel interceptor do this for them);
it answers with a VIP, the machine IP, or a refusal.

Options:
`

const epilog = `
Signals:
  SIGHUP           reload the configuration (keys that need a restart are kept,
                   and leases are never taken from live sessions)
  SIGTERM, SIGINT  stop; leases are kept, so a restart is invisible to sessions

Exit status: 0 on a clean stop or a passing --check, 1 otherwise.
See README.md for the configuration reference.
`

func main() {
	// First, before anything that takes time: without a handler Go's
	// runtime dies of SIGHUP, and an administrator's reload (or a logrotate
	// script's) may come while the daemon is still opening its store. A
	// SIGHUP received before the daemon runs is a reload once it does.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)

	fs := flag.NewFlagSet("ipvirtd", flag.ContinueOnError)
	cfgPath := fs.String("config", config.DefaultPath, "configuration `file`")
	check := fs.Bool("check", false, "validate the configuration against this host and exit (like nginx -t)")
	level := fs.String("log-level", "info", "log `level`: debug, info, warn, error")
	format := fs.String("log-format", "text", "log `format`: text or json")
	version := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprint(os.Stderr, usage)
		fs.PrintDefaults()
		fmt.Fprint(os.Stderr, epilog)
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "ipvirtd: unexpected argument %q (see ipvirtd --help)\n", fs.Arg(0))
		os.Exit(2)
	}
	if *version {
		fmt.Println("ipvirtd", daemon.Version)
		return
	}
	log, err := newLogger(*level, *format)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ipvirtd:", err)
		os.Exit(2)
	}
	if *check {
		cfg, a, err := daemon.Check(*cfgPath)
		if err != nil {
			fmt.Fprintf(os.Stderr, "ipvirtd: %s: %v\n", *cfgPath, err)
			if errors.Is(err, adapter.ErrMultiAdapter) {
				explainAdapters(a)
			}
			os.Exit(1)
		}
		for i, p := range cfg.Programs {
			if w := policy.CheckProgram(p); w != "" {
				fmt.Fprintf(os.Stderr, "ipvirtd: warning: programs[%d]: %s\n", i, w)
			}
		}
		fmt.Printf("ipvirtd: %s is valid: %s mode, source %s, adapter %s (machine IP %s)\n",
			*cfgPath, cfg.Mode, cfg.Source, a.Name, a.MIP())
		return
	}
	if err := run(*cfgPath, log, hup); err != nil {
		log.Error("ipvirtd failed", "err", err)
		if daemon.IsEvidence(err) {
			// One line per address, for the administrator to act on.
			fmt.Fprintln(os.Stderr, "ipvirtd:", err)
		}
		os.Exit(1)
	}
}

func run(path string, log *slog.Logger, hup <-chan os.Signal) error {
	d, err := daemon.New(path, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		for range hup {
			if err := d.Reload(); err != nil {
				log.Error("reload failed", "err", err)
			}
		}
	}()
	return d.Run(ctx)
}

// explainAdapters prints how every interface was classified for the
// single-adapter rule, so an administrator sees why one counts.
func explainAdapters(a adapter.Adapter) {
	cands, err := adapter.Candidates(a)
	if err != nil {
		return
	}
	fmt.Fprintln(os.Stderr, "ipvirtd: adapters on this host:")
	for _, c := range cands {
		mark := "  not counted"
		if c.Eligible {
			mark = "  COUNTED    "
		}
		fmt.Fprintf(os.Stderr, "%s %-16s %s\n", mark, c.Name, c.Why)
	}
}

func newLogger(level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", format)
	}
}
