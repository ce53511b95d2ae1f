package server

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipvirt/ipvirt/backend/wire"
	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/lease"
)

// The fast path. A program's first connect() under libipvirt.so waits for
// one QUERY round trip, so its latency is what users feel. Served the
// usual Go way, that round trip is mostly scheduling: the netpoller wakes
// the accept goroutine, a new goroutine is started for the connection, the
// netpoller wakes it again for the request, each step a thread wake-up that
// costs tens of microseconds on a small VM. Here one locked OS thread does
// blocking poll/accept/read: the kernel wakes it directly when a client
// connects and again when its request arrives, and a QUERY whose answer is
// at hand (alloc.Manager.QueryNow: not virtualized, or a known holder) is
// answered on the spot. Anything else (a new holder that needs an
// allocation, other requests, a client that is slow to send) goes to a
// goroutine (handle.go), so that nothing slow ever runs on this thread.

// fastWaitMS is fastWait for poll(2), which counts in milliseconds.
const fastWaitMS = int(fastWait / time.Millisecond)

// answerFrameSize is an ANSWER frame without its reason.
const answerFrameSize = wire.HeaderSize + wire.AnswerFixedSize

type fastPath struct {
	s        *Unix
	lfd      int // a dup of the listener's socket
	wakeR    int
	wakeW    int
	fds      [2]unix.PollFd // accept's: the listener and wakeR
	cred     *unix.Ucred    // the connection being served's SO_PEERCRED
	stopOnce sync.Once
	done     chan struct{}
}

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
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		unix.Close(lfd)
		return nil, fmt.Errorf("server: wake pipe: %w", err)
	}
	f := &fastPath{s: s, lfd: lfd, wakeR: p[0], wakeW: p[1], done: make(chan struct{})}
	s.mu.Lock()
	s.fast = f
	s.mu.Unlock()
	return f, nil
}

// stop wakes the thread and waits for it to leave.
func (f *fastPath) stop() {
	f.stopOnce.Do(func() { unix.Write(f.wakeW, []byte{0}) })
	<-f.done
}

// run serves on the calling goroutine, locked to its thread, until stop.
func (f *fastPath) run() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer func() {
		unix.Close(f.lfd)
		unix.Close(f.wakeR)
		unix.Close(f.wakeW)
		close(f.done)
	}()
	return acceptLoop[int](f.s, f)
}

func (f *fastPath) accept() (int, error) {
	f.fds[0] = unix.PollFd{Fd: int32(f.lfd), Events: unix.POLLIN}
	f.fds[1] = unix.PollFd{Fd: int32(f.wakeR), Events: unix.POLLIN}
	if _, err := unix.Poll(f.fds[:], -1); err != nil && !errors.Is(err, unix.EINTR) {
		return -1, &stopped{fmt.Errorf("server: poll: %w", err)}
	}
	if f.fds[1].Revents != 0 {
		return -1, &stopped{}
	}
	// The listener is non-blocking (its open file is shared with Go's
	// netpoller): another wake-up may have taken the connection.
	nfd, _, err := unix.Accept4(f.lfd, unix.SOCK_CLOEXEC)
	switch {
	case err == nil:
		return nfd, nil
	case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR), errors.Is(err, unix.ECONNABORTED):
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
// connection here if the client then hangs up; any other connection goes to
// a goroutine.
func (f *fastPath) serve(fd int, uid uint32) {
	caller, pending, answered := f.first(fd)
	if answered && f.closedAfterAnswer(fd) {
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
	f.s.goServe(c.(*net.UnixConn), uid, caller, pending)
}

// first serves the connection's first request if this thread can: a bare
// QUERY with its answer at hand, or, on a SlowSource daemon, one to be
// answered PENDING. It returns what the goroutine that takes over needs
// (see goServe) and whether the request was answered in full.
func (f *fastPath) first(fd int) (caller *identity.Caller, pending *wire.Frame, answered bool) {
	// Wait for the request only while no other client is queued: under load
	// (a logon storm, clients descheduled between connect and send) waiting
	// fastWait per connection would serialise into seconds; the goroutine
	// then reads the request instead.
	// The request is usually there already (the library sends it right
	// after connecting, while this thread was being woken): peek first,
	// and poll only if it is not.
	var hdr [wire.HeaderSize]byte
	n, _, err := unix.Recvfrom(fd, hdr[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	if errors.Is(err, unix.EAGAIN) {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(f.lfd), Events: unix.POLLIN}}
		if n, _ := unix.Poll(pfd, fastWaitMS); n < 1 || pfd[0].Revents&unix.POLLIN == 0 {
			return nil, nil, false
		}
		n, _, err = unix.Recvfrom(fd, hdr[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	}
	if err != nil || n != len(hdr) {
		return nil, nil, false
	}
	h, ok := bareQuery(hdr[:])
	if !ok {
		return nil, nil, false
	}
	start := time.Now()
	if f.s.pendsAtOnce(h.Type, h.Flags) {
		// On a DHCP host a new holder's answer waits on the network. Say
		// PENDING and hand off at once, with no /proc work here: reading a
		// process that is still starting up can stall for tens of
		// milliseconds, and in a logon storm every client queued behind
		// would miss its timeout.
		unix.Read(fd, hdr[:])
		// Consumed, so it must be answered: if this write fails the
		// answer's fails too and the handler ends.
		unix.Write(fd, f.s.pendingFrame())
		return nil, &wire.Frame{Version: wire.Version, Type: wire.OpQuery, Flags: wire.FlagAcceptPending}, false
	}
	var who identity.Caller
	if f.cred != nil {
		who, err = f.s.Resolver.ResolveFDCred(fd, f.cred, f.s.Backend.NeedsProgram())
	} else {
		who, err = f.s.Resolver.ResolveFD(fd, f.s.Backend.NeedsProgram())
	}
	if err != nil {
		return nil, nil, false
	}
	if who.Exe != "" {
		// Else the goroutine identifies the caller again, in full: its log
		// lines and WHOAMI name the program.
		caller = &who
	}
	a, ok := f.s.Backend.QueryNow(who)
	if !ok {
		return caller, nil, false
	}
	unix.Read(fd, hdr[:]) // the peeked header is the whole request
	reply := wire.AppendFrame(nil, wire.RespAnswer, wire.AppendAnswer(nil, f.s.toWire(who, a)))
	// The socket is blocking, but this write cannot stall the thread: a
	// new socket's empty send buffer takes answerFrameSize and a policy's
	// one-line reason whole.
	if _, err := unix.Write(fd, reply); err != nil {
		f.s.Log.Debug("fast reply", "err", err)
	}
	f.s.observe(wire.OpQuery, start)
	return caller, nil, true
}

// closedAfterAnswer waits briefly for the client to close the connection,
// as the library does once it has its answer, so that the connection
// needs no goroutine at all; another request, or another client
// connecting, ends the wait and the connection is handed off.
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
