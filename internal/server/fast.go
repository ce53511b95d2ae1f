package server

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ipvirt/ipvirt/backend/wire"
	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/lease"
)

// The fast path. A program's first connect() under libipvirt.so waits for
// one QUERY round trip, so its latency is what users feel. Served the
// usual Go way, that round trip is mostly scheduling: the netpoller wakes
// the accept goroutine, a new goroutine is started for the connection, the
// netpoller wakes it again for the request, each step a thread wake-up that
// costs tens of microseconds on a small VM. Here one goroutine makes
// blocking system calls (accept, recv) on the thread it runs on, the
// "accept thread": the kernel wakes that thread directly when a client
// connects and again when its request arrives, and a QUERY whose answer is
// at hand (alloc.Manager.QueryNow: not virtualized, or a known holder) is
// answered on the spot. Anything else (a new holder that needs an
// allocation, other requests, a client that is slow to send) goes to a
// goroutine (handle.go), so that nothing slow ever runs on this thread.
//
// Nothing else wakes up for a first call. The thread owns the listening
// socket alone: Go's copy is closed, which takes the socket out of the
// netpoller, whose thread the kernel would otherwise wake at every connect
// as well, for nothing (on two CPUs, that wake-up takes the client's CPU
// or delays the accept thread). The library's QUERY carries FlagLast, so
// the thread closes the connection once it has answered instead of waiting
// to be woken again by the client's close. And it reads the request rather
// than peek at it and read it again.

// yieldEvery is how often the accept thread lets the Go scheduler run
// other goroutines on its thread, between clients. Go counts a goroutine
// that never yields as running, blocking system calls and all, and the
// runtime's monitor (sysmon) preempts one that has run 10 ms without a
// break and takes its processor: the goroutine is then rescheduled after
// the system call it is blocked in returns, that is in the middle of a
// client's round trip, and the monitor, woken from its sleep by the
// processor's return, polls every 20 µs for the next millisecond, on a
// machine with two CPUs the clients' own. For a goroutine locked to its
// thread (runtime.LockOSThread) the preemption costs two thread wake-ups
// more, as another thread hands it back. Yielding between clients more
// often than that keeps it off their path while clients keep coming (the
// first after 10 ms without any still meets it); the cost is about a
// microsecond, after an answer.
const yieldEvery = 5 * time.Millisecond

// fastWaitMS is fastWait for poll(2), which counts in milliseconds.
const fastWaitMS = int(fastWait / time.Millisecond)

// answerFrameSize is an ANSWER frame without its reason.
const answerFrameSize = wire.HeaderSize + wire.AnswerFixedSize

type fastPath struct {
	s    *Unix
	lfd  int         // the listening socket, blocking; the thread's alone
	path string      // its file, removed when the thread stops
	cred *unix.Ucred // the connection being served's SO_PEERCRED
	// reply is the ANSWER frame being sent, kept to be reused.
	reply []byte
	// query times QUERY requests (nil without metrics).
	query prometheus.Observer

	yielded  time.Time
	stopping atomic.Bool
	mu       sync.Mutex // guards lfd against stop once run has closed it
	closed   bool
	done     chan struct{}
}

// newFastPath takes ln's socket over for the accept thread: on success ln
// itself is closed (without removing the socket file, which the thread
// removes when it stops).
func (s *Unix) newFastPath(ln *net.UnixListener) (*fastPath, error) {
	raw, err := ln.SyscallConn()
	if err != nil {
		return nil, err
	}
	lfd := -1
	var dupErr error
	if err := raw.Control(func(fd uintptr) { lfd, dupErr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if dupErr != nil {
		return nil, fmt.Errorf("server: dup listener: %w", dupErr)
	}
	// O_NONBLOCK belongs to the open file, which the dup shares with Go's
	// descriptor until that is closed below: clearing it leaves Go's
	// accept (never called now) blocking, nothing else.
	if err := unix.SetNonblock(lfd, false); err != nil {
		unix.Close(lfd)
		return nil, fmt.Errorf("server: listener: %w", err)
	}
	f := &fastPath{s: s, lfd: lfd, path: ln.Addr().String(), done: make(chan struct{})}
	if s.Metrics != nil {
		f.query = s.Metrics.RequestDuration.WithLabelValues(opName(wire.OpQuery))
	}
	// Out of the netpoller: Go's descriptor is its registration there.
	ln.SetUnlinkOnClose(false)
	ln.Close()
	s.mu.Lock()
	s.fast = f
	s.mu.Unlock()
	return f, nil
}

// stop wakes the thread and waits for it to leave. Shutting the listening
// socket down for reading refuses new clients, ends a blocked accept
// (EINVAL) and makes the socket readable for the polls that watch it.
func (f *fastPath) stop() {
	f.stopping.Store(true)
	f.mu.Lock()
	if !f.closed {
		unix.Shutdown(f.lfd, unix.SHUT_RD)
	}
	f.mu.Unlock()
	<-f.done
}

// run serves on the calling goroutine until stop. The goroutine is not
// locked to its thread: the kernel wakes whichever thread is blocked in its
// accept or recv all the same, and a locked goroutine is costly to preempt
// (see yieldEvery).
func (f *fastPath) run() error {
	defer func() {
		f.mu.Lock()
		unix.Close(f.lfd)
		f.closed = true
		f.mu.Unlock()
		os.Remove(f.path)
		close(f.done)
	}()
	return acceptLoop[int](f.s, f)
}

func (f *fastPath) accept() (int, error) {
	if now := time.Now(); now.Sub(f.yielded) >= yieldEvery {
		runtime.Gosched()
		f.yielded = now
	}
	if f.stopping.Load() {
		// Not the clients still queued: they are refused when the
		// socket closes.
		return -1, &stopped{}
	}
	nfd, _, err := unix.Accept4(f.lfd, unix.SOCK_CLOEXEC)
	switch {
	case err == nil:
		return nfd, nil
	case f.stopping.Load():
		return -1, &stopped{}
	case errors.Is(err, unix.EINTR), errors.Is(err, unix.ECONNABORTED), errors.Is(err, unix.EAGAIN):
		return -1, errAgain
	}
	return -1, err
}

func (f *fastPath) refuse(fd int) { unix.Close(fd) }

// peerUID keeps the whole credential for serve, which identifies the caller
// from it: the accept thread handles one connection at a time.
func (f *fastPath) peerUID(fd int) (uint32, error) {
	cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		f.cred = nil
		return 0, err
	}
	f.cred = cred
	return cred.Uid, nil
}

func (f *fastPath) peerSession(int) (lease.Session, bool) {
	if f.cred == nil {
		return lease.Session{}, false
	}
	return f.s.peerSession(int(f.cred.Pid))
}

// serve lets first answer what it can on this thread and closes the
// connection here once the client is done; any other connection goes to a
// goroutine.
func (f *fastPath) serve(fd int, uid uint32) {
	r := f.first(fd)
	if r.answered && (r.last || f.closedAfterAnswer(fd)) {
		unix.Close(fd)
		f.s.slots.free(uid)
		return
	}
	file := os.NewFile(uintptr(fd), "ipvirt-client")
	c, err := net.FileConn(file) // dups fd
	file.Close()
	if err != nil {
		f.s.slots.free(uid)
		f.s.Log.Error("hand-off of a client connection", "err", err)
		return
	}
	f.s.goServe(c.(*net.UnixConn), uid, r.handoff)
}

// firstResult is what first did with a connection's first request.
type firstResult struct {
	handoff  handoff // for the goroutine that takes over, if one does
	answered bool    // the request was answered in full
	last     bool    // and the client said it would send no other
}

// first serves the connection's first request if this thread can: a bare
// QUERY with its answer at hand, or, on a SlowSource daemon, one to be
// answered PENDING.
func (f *fastPath) first(fd int) (r firstResult) {
	// Wait for the request only while no other client is queued: under load
	// (a logon storm, clients descheduled between connect and send) waiting
	// fastWait per connection would serialise into seconds; the goroutine
	// then reads the request instead.
	// The request is often there already (the library sends it right
	// after connecting): read first, and poll only if it is not. What is
	// read is the goroutine's to parse if the request is not a bare QUERY.
	var hdr [wire.HeaderSize]byte
	n, _, err := unix.Recvfrom(fd, hdr[:], unix.MSG_DONTWAIT)
	if errors.Is(err, unix.EAGAIN) {
		pfd := [2]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(f.lfd), Events: unix.POLLIN}}
		if n, _ := unix.Poll(pfd[:], fastWaitMS); n < 1 || pfd[0].Revents&unix.POLLIN == 0 {
			return r
		}
		n, _, err = unix.Recvfrom(fd, hdr[:], unix.MSG_DONTWAIT)
	}
	if err != nil || n <= 0 {
		return r
	}
	if n != len(hdr) {
		r.handoff.head = append([]byte(nil), hdr[:n]...)
		return r
	}
	h, ok := bareQuery(hdr[:])
	if !ok {
		r.handoff.head = append([]byte(nil), hdr[:]...)
		return r
	}
	start := time.Now()
	if f.s.pendsAtOnce(h.Type, h.Flags) {
		// On a DHCP host a new holder's answer waits on the network. Say
		// PENDING and hand off at once, with no /proc work here: reading a
		// process that is still starting up can stall for tens of
		// milliseconds, and in a logon storm every client queued behind
		// would miss its timeout.
		// Read, so it must be answered: if this write fails the
		// answer's fails too and the handler ends.
		unix.Write(fd, f.s.pendingFrame())
		r.handoff.pending = &wire.Frame{Version: wire.Version, Type: wire.OpQuery, Flags: h.Flags}
		r.handoff.announced = true
		return r
	}
	// From here on the request is the goroutine's to answer if this
	// thread does not.
	r.handoff.pending = &wire.Frame{Version: wire.Version, Type: wire.OpQuery, Flags: h.Flags}
	if f.cred == nil {
		return r
	}
	// The pidfd is closed once the answer is out: the client, woken by
	// the answer, need not wait for it.
	pidfd := identity.PeerPidfd(fd, f.cred.Pid)
	defer pidfd.Close()
	who, err := f.s.Resolver.ResolvePeer(f.cred, pidfd, f.s.Backend.NeedsProgram())
	if err != nil {
		return r
	}
	if who.Exe != "" {
		// Else the goroutine identifies the caller again, in full: its log
		// lines and WHOAMI name the program.
		r.handoff.caller = &who
	}
	a, ok := f.s.Backend.QueryNow(who)
	if !ok {
		return r
	}
	// The frame is built in place: its header, once the payload's length
	// is known, over the room left for it.
	var room [wire.HeaderSize]byte
	f.reply = wire.AppendAnswer(append(f.reply[:0], room[:]...), f.s.toWire(who, a))
	wire.AppendHeader(f.reply[:0], wire.Header{Version: wire.Version, Type: wire.RespAnswer, Length: uint32(len(f.reply) - wire.HeaderSize)})
	// The socket is blocking, but this write cannot stall the thread: a
	// new socket's empty send buffer takes answerFrameSize and a policy's
	// one-line reason whole.
	if _, err := unix.Write(fd, f.reply); err != nil {
		f.s.Log.Debug("fast reply", "err", err)
	}
	if f.query != nil {
		f.query.Observe(time.Since(start).Seconds())
	}
	return firstResult{answered: true, last: h.Flags&wire.FlagLast != 0}
}

// closedAfterAnswer waits briefly for a client that did not say FlagLast
// (a library older than the flag) to close the connection, as it does once
// it has its answer, so that the connection needs no goroutine at all;
// another request, or another client connecting, ends the wait and the
// connection is handed off.
func (f *fastPath) closedAfterAnswer(fd int) bool {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLRDHUP}, {Fd: int32(f.lfd), Events: unix.POLLIN}}
	if n, _ := unix.Poll(pfd, fastWaitMS); n < 1 || pfd[0].Revents == 0 {
		return false
	}
	var b [1]byte
	n, _, err := unix.Recvfrom(fd, b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	return n == 0 && err == nil // EOF with nothing left to read
}

// bareQuery parses a request header: a v1 QUERY with no payload, the
// library's only request.
func bareQuery(b []byte) (wire.Header, bool) {
	h, err := wire.ParseHeader(b)
	return h, err == nil && h.Version == wire.Version && h.Type == wire.OpQuery && h.Length == 0
}
