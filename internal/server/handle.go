package server

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/ipvirt/ipvirt/backend/wire"
	"github.com/ipvirt/ipvirt/internal/identity"
)

// handle serves c's requests until it hangs up, goes idle or fails, or
// says its request is its last (wire.FlagLast); h is what the accept
// thread learnt of c.
func (s *Unix) handle(c *net.UnixConn, h handoff) {
	caller, pending := h.caller, h.pending
	// Requests are read through r: after what the accept thread read of
	// the first, if any, from c.
	var r io.Reader = c
	if len(h.head) > 0 {
		r = io.MultiReader(bytes.NewReader(h.head), c)
	}
	counted := false
	defer func() {
		if counted {
			s.sessions.free(caller.Session)
		}
	}()
	if caller == nil && pending == nil {
		// A client that did not ask within the accept thread's wait: know
		// its session now, not at its first request, so that connections
		// held idle count against their session's share at once (the
		// accept thread answers PENDING itself where that must come
		// before any /proc work).
		if who, err := s.Resolver.ResolveConn(c); err == nil {
			caller = &who
			if !s.sessions.take(caller.Session) {
				s.refused(caller.UID)
				return
			}
			counted = true
		}
	}
	end := time.Now().Add(connLifetime)
	for time.Now().Before(end) {
		var f wire.Frame
		var err error
		announced := false
		if pending != nil {
			f, pending, announced = *pending, nil, h.announced
		} else {
			deadline := time.Now().Add(idleTimeout)
			if deadline.After(end) {
				deadline = end
			}
			c.SetReadDeadline(deadline)
			f, err = wire.ReadFrame(r, wire.MaxRequestPayload)
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
		if !announced && s.pendsAtOnce(f.Type, f.Flags) {
			if !s.send(c, s.pendingFrame()) {
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
		if !counted {
			if !s.sessions.take(caller.Session) {
				s.refused(caller.UID)
				return
			}
			counted = true
		}
		var t wire.Type
		var payload []byte
		if !announced && acceptsPending(f.Type, f.Flags) {
			t, payload = s.queryPending(c, *caller, f)
		} else {
			t, payload = s.dispatch(*caller, f)
		}
		if !s.reply(c, t, payload) {
			return
		}
		s.observe(f.Type, start)
		if f.Flags&wire.FlagLast != 0 {
			return
		}
	}
}

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
	s.send(c, s.pendingFrame())
	r := <-done
	return r.t, r.p
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// reply sends a frame of type t with payload.
func (s *Unix) reply(c net.Conn, t wire.Type, payload []byte) bool {
	return s.send(c, frame(t, payload))
}

// send writes a whole frame in one call and reports whether the client
// took it within writeTimeout.
func (s *Unix) send(c net.Conn, b []byte) bool {
	c.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err := c.Write(b)
	return err == nil
}
