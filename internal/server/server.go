// Package server serves the control protocol (backend/wire/PROTOCOL.md) on
// a Unix socket and the HTTP endpoints (metrics, sessions, health).
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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

func (s *Unix) handle(c *net.UnixConn, caller *identity.Caller, pending *wire.Frame) {
	for {
		var f wire.Frame
		var err error
		announced := pending != nil
		if announced {
			f, pending = *pending, nil
		} else {
			c.SetReadDeadline(time.Now().Add(idleTimeout))
			f, err = wire.ReadFrame(c, wire.MaxRequestPayload)
		}
		if err != nil {
			if errors.Is(err, wire.ErrVersion) {
				s.reply(c, wire.RespError, wire.AppendError(nil, wire.CodeUnsupportedVersion,
					fmt.Sprintf("unsupported protocol version %d; this ipvirtd speaks %d", f.Version, wire.Version)))
			} else if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !isTimeout(err) {
				s.Log.Debug("bad request frame", "err", err)
			}
			return
		}
		start := time.Now()
		if !announced && s.SlowSource && f.Type == wire.OpQuery && f.Flags&wire.FlagAcceptPending != 0 {
			// As on the accept thread: PENDING before any /proc work.
			if !s.reply(c, wire.RespPending, s.pendingPayload()) {
				return
			}
			announced = true
		}
		if caller == nil {
			who, err := s.Resolver.ResolveConn(c)
			if err != nil {
				s.reply(c, wire.RespError, wire.AppendError(nil, wire.CodeInternal, err.Error()))
				return
			}
			caller = &who
		}
		var t wire.Type
		var payload []byte
		if f.Type == wire.OpQuery && f.Flags&wire.FlagAcceptPending != 0 && !announced {
			t, payload = s.queryPending(c, *caller, f)
		} else {
			t, payload = s.dispatch(*caller, f)
		}
		if !s.reply(c, t, payload) {
			return
		}
		if s.Metrics != nil {
			s.Metrics.RequestDuration.WithLabelValues(opName(f.Type)).Observe(time.Since(start).Seconds())
		}
	}
}

// pendingAfter is how long a QUERY may take before the client is told to
// keep waiting: well inside the preload library's default 200 ms timeout,
// well above a static-pool allocation's few milliseconds.
const pendingAfter = 50 * time.Millisecond

// queryPending answers a QUERY from a client that accepts PENDING, on a
// daemon whose allocations are normally quick (a static pool): if the
// answer is not ready within pendingAfter, a PENDING frame tells the client
// the daemon is alive and working, and how long it may still take.
func (s *Unix) queryPending(c net.Conn, caller identity.Caller, f wire.Frame) (wire.Type, []byte) {
	type result struct {
		t wire.Type
		p []byte
	}
	done := make(chan result, 1)
	go func() {
		t, p := s.dispatch(caller, f)
		done <- result{t, p}
	}()
	timer := time.NewTimer(pendingAfter)
	defer timer.Stop()
	select {
	case r := <-done:
		return r.t, r.p
	case <-timer.C:
	}
	s.reply(c, wire.RespPending, s.pendingPayload())
	r := <-done
	return r.t, r.p
}

func (s *Unix) pendingPayload() []byte {
	wait := s.PendingWait
	if wait <= 0 {
		wait = 30 * time.Second // dispatch's own bound
	}
	return wire.AppendPending(nil, wait)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (s *Unix) reply(c net.Conn, t wire.Type, payload []byte) bool {
	c.SetWriteDeadline(time.Now().Add(writeTimeout))
	return wire.WriteFrame(c, t, payload) == nil
}

func opName(t wire.Type) string {
	switch t {
	case wire.OpQuery:
		return "query"
	case wire.OpWhoami:
		return "whoami"
	case wire.OpStatus:
		return "status"
	case wire.OpSessions:
		return "sessions"
	case wire.OpProgramsList:
		return "programs-list"
	case wire.OpProgramsAdd:
		return "programs-add"
	case wire.OpProgramsRemove:
		return "programs-remove"
	case wire.OpRelease:
		return "release"
	default:
		return "unknown"
	}
}

func errReply(code uint16, format string, args ...any) (wire.Type, []byte) {
	return wire.RespError, wire.AppendError(nil, code, fmt.Sprintf(format, args...))
}

func jsonReply(v any) (wire.Type, []byte) {
	b, err := json.Marshal(v)
	if err != nil {
		return errReply(wire.CodeInternal, "encode reply: %v", err)
	}
	return wire.RespJSON, b
}

func (s *Unix) dispatch(c identity.Caller, f wire.Frame) (wire.Type, []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin := c.UID == 0 || s.Backend.IsAdmin(c.UID)
	switch f.Type {
	case wire.OpQuery:
		return wire.RespAnswer, wire.AppendAnswer(nil, s.toWire(c, s.Backend.Query(ctx, c)))
	case wire.OpWhoami:
		return jsonReply(s.whoami(c, s.Backend.Query(ctx, c)))
	case wire.OpStatus:
		return jsonReply(s.Backend.Status())
	case wire.OpSessions:
		var only *uint32
		if !admin {
			only = &c.UID
		}
		return jsonReply(s.Backend.Sessions(only))
	case wire.OpProgramsList:
		return jsonReply(s.Backend.Programs())
	case wire.OpProgramsAdd, wire.OpProgramsRemove:
		if !admin {
			return errReply(wire.CodePermissionDenied, "programs: only root and administrators may change the program list (you are %s)", s.Backend.UserName(c.UID))
		}
		path := string(f.Payload)
		var list []api.ProgramEntry
		var err error
		if f.Type == wire.OpProgramsAdd {
			list, err = s.Backend.AddProgram(path)
		} else {
			list, err = s.Backend.RemoveProgram(path)
		}
		if err != nil {
			return errReply(wire.CodeBadRequest, "%v", err)
		}
		return jsonReply(list)
	case wire.OpRelease:
		if !admin {
			return errReply(wire.CodePermissionDenied, "release: only root and administrators may release sessions (you are %s)", s.Backend.UserName(c.UID))
		}
		sess, err := ParseSessionArg(string(f.Payload))
		if err != nil {
			return errReply(wire.CodeBadRequest, "release: %v", err)
		}
		released := s.Backend.ReleaseSession(sess)
		if len(released) == 0 {
			return errReply(wire.CodeNotFound, "release: session %s holds no VIP", sess)
		}
		out := make([]api.Released, 0, len(released))
		for _, l := range released {
			out = append(out, api.Released{Holder: l.Holder.Key(), VIP: l.Addr.String()})
		}
		return jsonReply(out)
	default:
		return errReply(wire.CodeBadRequest, "unknown request type %d", f.Type)
	}
}

// ParseSessionArg reads a session as given on the command line: a bare
// number is an audit session id, or the text form a:42 / p:1234.
func ParseSessionArg(s string) (lease.Session, error) {
	s = strings.TrimSpace(s)
	if id, err := strconv.ParseUint(s, 10, 32); err == nil {
		return lease.Session{Kind: lease.KindAudit, ID: uint32(id)}, nil
	}
	sess, err := lease.ParseSession(s)
	if err != nil || !sess.Valid() {
		return lease.Session{}, fmt.Errorf("%q is not a session id (write 42, a:42 or p:1234)", s)
	}
	return sess, nil
}

func (s *Unix) toWire(c identity.Caller, a alloc.Answer) wire.Answer {
	w := wire.Answer{Kind: a.Kind, MachineIP: s.Backend.MIP(), TTL: uint32(a.TTL / time.Second),
		Session: wire.NoSession, Reason: a.Reason}
	if c.Session.Valid() {
		w.Session = c.Session.ID
	}
	if a.Kind == wire.KindVIP {
		w.VIP, w.Prefix = a.Lease.Addr, uint8(a.Lease.Subnet.Bits())
		if !a.Lease.Expiry.IsZero() {
			w.Expiry = a.Lease.Expiry.Unix()
		}
	}
	return w
}

func (s *Unix) whoami(c identity.Caller, a alloc.Answer) api.WhoamiReport {
	r := api.WhoamiReport{PID: c.PID, UID: c.UID, GID: c.GID, Session: c.Session.String(), SessionUID: c.SessionUID,
		User: s.Backend.UserName(c.SessionUID), Exe: c.Exe, Result: a.Kind.String(), MachineIP: s.Backend.MIP().String(),
		Rule: string(a.Rule), Reason: a.Reason, TTLSeconds: int(a.TTL / time.Second)}
	if a.Kind == wire.KindVIP {
		r.VIP, r.Prefix, r.Mask = a.Lease.Addr.String(), a.Lease.Subnet.Bits(), a.Lease.Mask().String()
		r.Holder, r.Expiry = a.Holder.Key(), a.Lease.Expiry
	}
	return r
}
