package server

import (
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/ipvirt/ipvirt/backend/wire"
	"github.com/ipvirt/ipvirt/internal/identity"
)

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
