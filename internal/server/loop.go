package server

import (
	"errors"
	"sync"
	"time"

	"github.com/ipvirt/ipvirt/backend/wire"
	"github.com/ipvirt/ipvirt/internal/lease"
)

// What the two ways of serving share, the accept thread (fast.go) and the
// goroutines (handle.go), so that a change to either reaches both: the
// accept loop with its connection cap and back-off, PENDING, and metrics.

// A listener takes clients off the socket; C is its handle on one
// connection.
type listener[C any] interface {
	// accept waits for the next client. Other than a connection it
	// returns errAgain, a *stopped, or any other error for an accept that
	// failed and is worth a pause before the next.
	accept() (C, error)
	// peerUID is the uid of the process that connected, from the kernel.
	peerUID(C) (uint32, error)
	// peerSession is the login session of the process that connected,
	// when it has one; asked only of a connection over its uid's cap.
	peerSession(C) (lease.Session, bool)
	// refuse closes a connection over the cap.
	refuse(C)
	// serve serves a connection that holds a slot for uid, and sees that
	// the slot is given back once the connection is closed. It must not
	// block on the client for long: the loop waits for it.
	serve(c C, uid uint32)
}

// errAgain from accept: no client after all (another wake-up took it, or
// it hung up first); try again at once.
var errAgain = errors.New("server: no connection to accept")

// stopped from accept ends the loop, with err (nil when the server closes).
type stopped struct{ err error }

func (e *stopped) Error() string {
	if e.err == nil {
		return "server: closed"
	}
	return e.err.Error()
}

// acceptLoop serves l's clients until accept reports it stopped.
func acceptLoop[C any](s *Unix, l listener[C]) error {
	for {
		c, err := l.accept()
		if err != nil {
			if st, ok := err.(*stopped); ok {
				return st.err
			}
			if err != errAgain {
				s.Log.Error("accept failed", "err", err)
				time.Sleep(acceptBackoff)
			}
			continue
		}
		uid, err := l.peerUID(c)
		if err != nil || !s.slots.take(uid) && !spill(s, l, c, uid) {
			// Closing makes the client fail open at once instead of
			// waiting out its timeout.
			l.refuse(c)
			if err == nil {
				s.refused(uid)
			}
			continue
		}
		l.serve(c, uid)
	}
}

// spill admits, past its uid's cap, a connection from a login session that
// holds less than its share: the accept thread counts a uid's connections
// before their goroutines have learnt their sessions and closed what is past
// each session's share, so a flood from one session could otherwise fill
// the uid's places for a moment and turn away the user's other session
// (another SSH login). Spilled places are bounded (spillFactor times the
// uid's cap) and counted like any other.
func spill[C any](s *Unix, l listener[C], c C, uid uint32) bool {
	if uid == 0 || !s.slots.underSpill(uid) {
		return false
	}
	sess, ok := l.peerSession(c)
	if !ok || s.sessions.count(sess) >= maxConnsPerSession {
		return false
	}
	return s.slots.takeSpill(uid)
}

// refused notes a connection turned away at a cap: counted always, logged
// at most once per refusedLogEvery, so that a flood does not flood the log.
func (s *Unix) refused(uid uint32) {
	if s.Metrics != nil {
		s.Metrics.ConnsRefused.WithLabelValues("socket").Inc()
	}
	now := time.Now()
	if last := s.lastRefusedLog.Load(); last != 0 && now.Sub(time.Unix(0, last)) < refusedLogEvery {
		return
	}
	s.lastRefusedLog.Store(now.UnixNano())
	s.Log.Warn("connection refused: connection cap reached", "uid", uid,
		"per_uid_cap", maxConnsPerUID, "cap", maxConns, "open", s.slots.inUse())
}

// slots counts open connections, in all and by the connecting uid, so that
// no one user can take the places everyone else needs: the socket is open to
// every user, and each connection is a descriptor and, past the accept
// thread, a goroutine.
type slots struct {
	// limit, perUID and rootReserve are the caps (maxConns,
	// maxConnsPerUID and rootReserve unless a test sets its own).
	limit, perUID, rootReserve int

	mu    sync.Mutex
	total int
	byUID map[uint32]int
}

func newSlots() slots {
	return slots{limit: maxConns, perUID: maxConnsPerUID, rootReserve: rootReserve}
}

// take claims a place for a connection from uid, or reports false when uid
// has perUID open or the daemon limit. Root has rootReserve places of its
// own beyond limit and no per-uid cap: an administrator's ipvirtctl works
// while the socket is flooded.
func (sl *slots) take(uid uint32) bool {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	switch {
	case uid == 0 && sl.total >= sl.limit+sl.rootReserve:
		return false
	case uid != 0 && (sl.total >= sl.limit || sl.byUID[uid] >= sl.perUID):
		return false
	}
	if sl.byUID == nil {
		sl.byUID = map[uint32]int{}
	}
	sl.total++
	sl.byUID[uid]++
	return true
}

// underSpill reports whether uid, at its cap, still has spill places.
func (sl *slots) underSpill(uid uint32) bool {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	return sl.total < sl.limit && sl.byUID[uid] < spillFactor*sl.perUID
}

// takeSpill is take with the uid's cap raised to spillFactor times its
// own; the daemon's limit holds as ever.
func (sl *slots) takeSpill(uid uint32) bool {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	if sl.total >= sl.limit || sl.byUID[uid] >= spillFactor*sl.perUID {
		return false
	}
	if sl.byUID == nil {
		sl.byUID = map[uint32]int{}
	}
	sl.total++
	sl.byUID[uid]++
	return true
}

// free gives back the place of a connection from uid that is done.
func (sl *slots) free(uid uint32) {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	sl.total--
	if sl.byUID[uid]--; sl.byUID[uid] <= 0 {
		delete(sl.byUID, uid)
	}
}

// sessionSlots counts the connections of each login session, so that a
// flood from one session leaves its user's other sessions their share of
// the uid's places. Connections from no session (services) are counted by
// uid only.
type sessionSlots struct {
	mu    sync.Mutex
	bySes map[lease.Session]int
}

func (ss *sessionSlots) take(sess lease.Session) bool {
	if !sess.Valid() {
		return true
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.bySes[sess] >= maxConnsPerSession {
		return false
	}
	if ss.bySes == nil {
		ss.bySes = map[lease.Session]int{}
	}
	ss.bySes[sess]++
	return true
}

// count is the connections sess holds past the accept thread.
func (ss *sessionSlots) count(sess lease.Session) int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.bySes[sess]
}

func (ss *sessionSlots) free(sess lease.Session) {
	if !sess.Valid() {
		return
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.bySes[sess]--; ss.bySes[sess] <= 0 {
		delete(ss.bySes, sess)
	}
}

func (sl *slots) inUse() int {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	return sl.total
}

// acceptsPending: a QUERY from a client that understands PENDING.
func acceptsPending(t wire.Type, flags uint16) bool {
	return t == wire.OpQuery && flags&wire.FlagAcceptPending != 0
}

// pendsAtOnce reports whether a request is answered PENDING before any
// other work, /proc reads included (see SlowSource).
func (s *Unix) pendsAtOnce(t wire.Type, flags uint16) bool {
	return s.SlowSource && acceptsPending(t, flags)
}

// pendingFrame is the whole PENDING frame, announcing PendingWait.
func (s *Unix) pendingFrame() []byte {
	wait := s.PendingWait
	if wait <= 0 {
		wait = dispatchTimeout
	}
	return frame(wire.RespPending, wire.AppendPending(nil, wait))
}

// frame encodes a frame of type t with payload p into one new buffer.
func frame(t wire.Type, p []byte) []byte {
	return wire.AppendFrame(make([]byte, 0, wire.HeaderSize+len(p)), t, p)
}

// observe records how long a request of type t took, from start to its
// reply.
func (s *Unix) observe(t wire.Type, start time.Time) {
	if s.Metrics != nil {
		s.Metrics.RequestDuration.WithLabelValues(opName(t)).Observe(time.Since(start).Seconds())
	}
}
