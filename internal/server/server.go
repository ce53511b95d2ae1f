// Package server serves the control protocol (backend/wire/PROTOCOL.md) on
// a Unix socket and the HTTP endpoints (metrics, sessions, health).
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ipvirt/ipvirt/backend/api"

	"github.com/ipvirt/ipvirt/backend/wire"
	"github.com/ipvirt/ipvirt/internal/alloc"
	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/metrics"
)

// Backend is what the server asks; the daemon implements it over the
// manager, the store and the configuration.
type Backend interface {
	Query(ctx context.Context, c identity.Caller) alloc.Answer
	// QueryNow answers without blocking, or reports false (see
	// alloc.Manager.QueryNow).
	QueryNow(c identity.Caller) (alloc.Answer, bool)
	// NeedsProgram reports whether a QUERY's answer depends on the
	// caller's executable; the accept thread reads it only then.
	NeedsProgram() bool
	Sessions(only *uint32) []api.SessionReport
	Status() api.StatusReport
	ReleaseSession(s lease.Session) []lease.Lease
	Programs() []api.ProgramEntry
	AddProgram(path string) ([]api.ProgramEntry, error)
	RemoveProgram(path string) ([]api.ProgramEntry, error)
	// IsAdmin reports whether uid may change settings and see every session.
	IsAdmin(uid uint32) bool
	UserName(uid uint32) string
	MIP() netip.Addr
}

// Limits of the socket server.
const (
	idleTimeout  = 30 * time.Second
	writeTimeout = 5 * time.Second
	maxConns     = 8192
)

// Unix serves the control protocol.
type Unix struct {
	Backend  Backend
	Resolver identity.Resolver
	Metrics  *metrics.Metrics
	Log      *slog.Logger
	// PendingWait is what a PENDING frame announces: the longest a QUERY
	// may still take (DHCP's lease_wait). Zero: 30 s.
	PendingWait time.Duration
	// SlowSource says new allocations wait on the network (DHCP): every
	// QUERY that accepts PENDING is told so at once, before any /proc work,
	// rather than after pendingAfter, which a loaded host (a logon storm)
	// may stretch past the client's short timeout. A known holder's ANSWER
	// follows right behind.
	SlowSource bool

	ln    *net.UnixListener
	slots chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	fast  *fastPath
}

// Listen binds the socket at path, mode 0666: anyone may ask, since the
// answer depends only on who the kernel says is asking. A stale socket left
// by a killed daemon is replaced; a live one means another daemon runs.
func Listen(path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("server: socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("server: %s is in use: another ipvirtd is running", path)
	}
	os.Remove(path)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("server: listen %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o666); err != nil {
		ln.Close()
		return nil, fmt.Errorf("server: chmod %s: %w", path, err)
	}
	return ln, nil
}

// Serve accepts connections on ln until Close: on a dedicated thread with
// blocking system calls (fast.go) when it can, else in a goroutine.
func (s *Unix) Serve(ln *net.UnixListener) error {
	s.mu.Lock()
	s.ln = ln
	s.slots = make(chan struct{}, maxConns)
	s.conns = map[net.Conn]struct{}{}
	s.mu.Unlock()
	fast, err := s.newFastPath(ln)
	if err == nil {
		return fast.serve()
	}
	s.Log.Warn("socket fast path unavailable; serving from goroutines", "err", err)
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// EMFILE and friends: back off rather than spin.
			s.Log.Error("accept failed", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		select {
		case s.slots <- struct{}{}:
		default:
			// Over the limit: closing makes the client fail open at once
			// instead of waiting out its timeout.
			c.Close()
			continue
		}
		s.goServe(c, nil, nil)
	}
}

// goServe serves c from a goroutine; caller is its identity when known,
// pending a QUERY already read and answered PENDING. The caller of goServe
// holds one of s.slots for c.
func (s *Unix) goServe(c *net.UnixConn, caller *identity.Caller, pending *wire.Frame) {
	s.track(c, true)
	s.wg.Go(func() {
		defer func() { <-s.slots; s.track(c, false); c.Close() }()
		s.handle(c, caller, pending)
	})
}

func (s *Unix) track(c net.Conn, add bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		s.conns[c] = struct{}{}
	} else {
		delete(s.conns, c)
	}
}

// Close stops accepting, closes open connections and waits for handlers.
func (s *Unix) Close() error {
	s.mu.Lock()
	fast := s.fast
	s.mu.Unlock()
	if fast != nil {
		// Outside the lock: the thread may be handing off a connection,
		// which takes it.
		fast.stop()
	}
	s.mu.Lock()
	if s.ln != nil {
		s.ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}
