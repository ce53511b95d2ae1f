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
	"sync/atomic"
	"time"

	"github.com/ipvirt/ipvirt/backend/api"
	"golang.org/x/sys/unix"

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
	// Farm lists every VIP of the farm (source: etcd), or fails naming
	// why (another source, etcd unreachable).
	Farm(ctx context.Context) ([]api.FarmLease, error)
	Status() api.StatusReport
	ReleaseSession(s lease.Session) []lease.Lease
	Programs() []api.ProgramEntry
	AddProgram(path string) ([]api.ProgramEntry, error)
	RemoveProgram(path string) ([]api.ProgramEntry, error)
	// OpenSession registers the caller's own audit session, and
	// CloseSession unregisters it (session_trust: pam); the server lets
	// only root ask. note is for the log alone.
	OpenSession(c identity.Caller, note string) (api.RegistrationReport, error)
	CloseSession(c identity.Caller, note string) (api.RegistrationReport, error)
	// IsAdmin reports whether uid may change settings and see every session.
	IsAdmin(uid uint32) bool
	UserName(uid uint32) string
	MIP() netip.Addr
}

// Limits of the socket server, each with the reason for its value.
const (
	// maxConns caps the connections open at once, each a file descriptor
	// and, past the accept thread, a goroutine. The socket is open to every
	// user, so one user's flood must not use up the daemon's descriptors;
	// the library holds its connection for one round trip, so honest load
	// stays far below the cap.
	maxConns = 8192
	// maxConnsPerUID caps one uid's share of maxConns, so that one user
	// cannot take every place: a connection is held for one round trip,
	// or for a DHCP lease_wait when the answer is PENDING, so a user would
	// need this many programs starting within one lease wait to meet it.
	maxConnsPerUID = 256
	// maxConnsPerSession caps one login session's share of its uid's
	// places, so that one session's flood leaves the user's other
	// sessions (another SSH login) room. Only connections past the accept
	// thread count: the thread answers and closes the rest at once.
	maxConnsPerSession = maxConnsPerUID / 2
	// spillFactor bounds how far past maxConnsPerUID a uid's connections
	// may go while its sessions' shares are being learnt (see spill).
	spillFactor = 2
	// rootReserve places beyond maxConns are root's alone: ipvirtctl
	// works while the socket is flooded.
	rootReserve = 64
	// connLifetime bounds a connection's life whatever it sends: a
	// request does not extend it, so a client cannot hold a place forever
	// by asking every idleTimeout.
	connLifetime = 2 * time.Minute
	// refusedLogEvery spaces the log lines about refused connections.
	refusedLogEvery = 10 * time.Second
	// fastWait is how long the accept thread waits for a new connection's
	// first request, and then for the client to hang up after its answer,
	// before handing the connection to a goroutine. The library sends its
	// QUERY right after connect and closes right after the answer, so the
	// wait is rarely served in full; another client connecting ends it at
	// once, so that waits cannot add up under load.
	fastWait = 2 * time.Millisecond
	// pendingAfter is how long a QUERY may take before the client is told
	// to keep waiting: well inside the preload library's default timeout
	// (DEFAULT_TIMEOUT_MS in lsp/preload/src/answer.c), well above a
	// static-pool allocation's few milliseconds.
	pendingAfter = 50 * time.Millisecond
	// dispatchTimeout bounds the work of one request. It lies above the
	// bounds of what a request waits on (alloc.DefaultAcquireTimeout,
	// dhcp.DefaultLeaseWait), so that those report their own failure first;
	// it is also what PENDING announces when PendingWait is unset.
	dispatchTimeout = 30 * time.Second
	// idleTimeout closes a connection that sends no request for this long.
	// A client may keep its connection for several requests, but one that
	// is silent this long is stalled or gone, and its slot is wanted.
	idleTimeout = 30 * time.Second
	// writeTimeout bounds writing one reply, so that a client that stops
	// reading cannot hold its goroutine and slot for good. A reply is at
	// most a JSON report, which a live client reads in far less.
	writeTimeout = 5 * time.Second
	// acceptBackoff is the pause after an accept that failed for want of
	// resources (EMFILE and friends): the listener stays readable, so
	// retrying at once would spin a CPU on the same error, while a pause
	// lets handlers finish and give descriptors back.
	acceptBackoff = 50 * time.Millisecond
	// liveProbeTimeout bounds Listen's check for a daemon already serving
	// the socket. Connecting to a Unix socket succeeds or is refused at
	// once, with no network in between; the bound only keeps start-up from
	// hanging on a daemon that is wedged.
	liveProbeTimeout = time.Second
)

// Unix serves the control protocol.
type Unix struct {
	Backend  Backend
	Resolver identity.Resolver
	Metrics  *metrics.Metrics
	Log      *slog.Logger
	// PendingWait is what a PENDING frame announces: the longest a QUERY
	// may still take (DHCP's lease_wait). Zero: dispatchTimeout.
	PendingWait time.Duration
	// SlowSource says new allocations wait on the network (DHCP): every
	// QUERY that accepts PENDING is told so at once, before any /proc work,
	// rather than after pendingAfter, which a loaded host (a logon storm)
	// may stretch past the client's short timeout. A known holder's ANSWER
	// follows right behind.
	SlowSource bool

	ln             *net.UnixListener
	slots          slots
	sessions       sessionSlots
	lastRefusedLog atomic.Int64 // unix nanoseconds
	wg             sync.WaitGroup
	mu             sync.Mutex
	conns          map[net.Conn]struct{}
	fast           *fastPath
}

// Listen binds the socket at path, mode 0666: anyone may ask, since the
// answer depends only on who the kernel says is asking. A stale socket left
// by a killed daemon is replaced; a live one means another daemon runs.
func Listen(path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("server: socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, liveProbeTimeout); err == nil {
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
	s.open(ln)
	fast, err := s.newFastPath(ln)
	if err == nil {
		return fast.run()
	}
	s.Log.Warn("socket fast path unavailable; serving from goroutines", "err", err)
	return acceptLoop[*net.UnixConn](s, netListener{s, ln})
}

// open readies s to serve ln, on either path.
func (s *Unix) open(ln *net.UnixListener) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ln = ln
	s.slots = newSlots()
	s.conns = map[net.Conn]struct{}{}
}

// netListener takes clients through Go's netpoller and serves each from a
// goroutine, the way to serve when the fast path is unavailable.
type netListener struct {
	s  *Unix
	ln *net.UnixListener
}

func (l netListener) accept() (*net.UnixConn, error) {
	c, err := l.ln.AcceptUnix()
	switch {
	case err == nil:
		return c, nil
	case errors.Is(err, net.ErrClosed):
		return nil, &stopped{}
	case isTimeout(err):
		return nil, errAgain
	}
	return nil, err
}

func (netListener) refuse(c *net.UnixConn) { c.Close() }

func (netListener) peerUID(c *net.UnixConn) (uint32, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var uid uint32
	var credErr error
	if err := raw.Control(func(fd uintptr) { uid, credErr = peerUID(int(fd)) }); err != nil {
		return 0, err
	}
	return uid, credErr
}

func (l netListener) peerSession(c *net.UnixConn) (lease.Session, bool) {
	raw, err := c.SyscallConn()
	if err != nil {
		return lease.Session{}, false
	}
	var pid int32
	if err := raw.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			pid = cred.Pid
		}
	}); err != nil || pid <= 0 {
		return lease.Session{}, false
	}
	return l.s.peerSession(int(pid))
}

// peerSession is pid's login session, if it has one.
func (s *Unix) peerSession(pid int) (lease.Session, bool) {
	sess, err := s.Resolver.Session(pid)
	return sess, err == nil && sess.Valid()
}

func (l netListener) serve(c *net.UnixConn, uid uint32) { l.s.goServe(c, uid, handoff{}) }

// peerUID is the uid of the process at the other end of a Unix socket.
func peerUID(fd int) (uint32, error) {
	cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return 0, err
	}
	return cred.Uid, nil
}

// handoff is what the accept thread learnt of a connection it passes on
// to a goroutine.
type handoff struct {
	// caller is the client's identity, when known in full.
	caller *identity.Caller
	// pending is a first request already read in full; announced says
	// that it was answered PENDING.
	pending   *wire.Frame
	announced bool
	// head is the start of a first request already read, the rest of
	// which is still to be read from the connection.
	head []byte
}

// goServe serves c from a goroutine, taking up where h leaves off. The
// caller of goServe holds a slot for c from uid, which the goroutine gives
// back.
func (s *Unix) goServe(c *net.UnixConn, uid uint32, h handoff) {
	s.track(c, true)
	s.wg.Go(func() {
		defer func() { s.slots.free(uid); s.track(c, false); c.Close() }()
		s.handle(c, h)
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
