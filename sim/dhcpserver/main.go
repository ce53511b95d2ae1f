package dhcpserver

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// Status is what Main writes to its -status file: the counters and lease
// table, for a parent process (the simulator) to assert on.
type Status struct {
	// Seq counts the files written, so that a reader that asked for a fresh
	// one (SIGUSR1) knows when it has it: file times are too coarse.
	Seq      uint64   `json:"seq"`
	ServerID string   `json:"server_id"`
	Listen   string   `json:"listen"`
	Counters Counters `json:"counters"`
	Leases   []Lease  `json:"leases"`
	Declined []string `json:"declined"`
}

// Main runs a server from a YAML config until SIGINT/SIGTERM, for use as a
// subcommand (e.g. `ipvirt-sim dhcpserver -config s1.yaml`) inside a
// network namespace. It returns the process exit code.
//
// Flags: -config FILE (required), -status FILE (JSON Status written when
// ready, on SIGUSR1 and at exit), -v (debug log to stderr).
func Main(args []string) int {
	fs := flag.NewFlagSet("dhcpserver", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "YAML config file (required)")
	statusPath := fs.String("status", "", "write a JSON status file when ready, on SIGUSR1 and at exit")
	verbose := fs.Bool("v", false, "debug logging")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *cfgPath == "" {
		fmt.Fprintln(os.Stderr, "dhcpserver: -config is required")
		return 2
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	cfg, err := LoadConfig(*cfgPath)
	if err != nil {
		log.Error(err.Error())
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv, err := Start(ctx, cfg, log)
	if err != nil {
		log.Error(err.Error())
		return 1
	}
	// Before the first status file: a reader may signal as soon as it sees
	// one, and SIGUSR1 unhandled would kill the server.
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	var seq uint64
	write := func() {
		if *statusPath == "" {
			return
		}
		seq++
		if err := srv.writeStatus(*statusPath, seq); err != nil {
			log.Error(err.Error())
		}
	}
	write()
	for {
		select {
		case <-usr1:
			write()
		case <-ctx.Done():
			srv.Close()
			write()
			return 0
		}
	}
}

// Status returns the server's current status.
func (s *Server) Status() Status {
	st := Status{
		ServerID: s.serverID.String(),
		Listen:   s.Addr().String(),
		Counters: s.Counters(),
		Leases:   s.Leases(),
	}
	for _, a := range s.Declined() {
		st.Declined = append(st.Declined, a.String())
	}
	return st
}

// writeStatus replaces path atomically so a reader never sees half a file.
func (s *Server) writeStatus(path string, seq uint64) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("dhcpserver: status: %w", err)
	}
	st := s.Status()
	st.Seq = seq
	enc := json.NewEncoder(f)
	enc.SetIndent("", "  ")
	if err := enc.Encode(st); err != nil {
		f.Close()
		return fmt.Errorf("dhcpserver: status %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("dhcpserver: status %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("dhcpserver: status: %w", err)
	}
	return nil
}
