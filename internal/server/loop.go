package server

import (
	"errors"
	"time"

	"github.com/ipvirt/ipvirt/backend/wire"
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
	// refuse closes a connection over the cap.
	refuse(C)
	// serve serves a connection that holds a slot, and sees that the slot
	// is given back once the connection is closed. It must not block on
	// the client for long: the loop waits for it.
	serve(C)
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
		if !s.takeSlot() {
			// Closing makes the client fail open at once instead of
			// waiting out its timeout.
			l.refuse(c)
			continue
		}
		l.serve(c)
	}
}

// takeSlot claims one of the maxConns places for a new connection, or
// reports false when none is free.
func (s *Unix) takeSlot() bool {
	select {
	case s.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

// freeSlot gives back the place of a connection that is done.
func (s *Unix) freeSlot() { <-s.slots }

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
