package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/backend/api"
	"github.com/ipvirt/ipvirt/backend/wire"
	"github.com/ipvirt/ipvirt/internal/alloc"
	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/lease"
)

// scripted is a listener whose accept returns a fixed sequence.
type scripted struct {
	steps           []any // an int is a connection, an error an error
	served, refused []int
}

// peerUID: connection n comes from uid n/100 (100-199 from uid 1, 0-99
// from root).
func (l *scripted) peerUID(c int) (uint32, error) { return uint32(c / 100), nil }

// peerSession: connection n comes from audit session (n%100)/10, none for
// 0 (101 from no session, 111 and 112 from session 1).
func (l *scripted) peerSession(c int) (lease.Session, bool) {
	id := uint32(c%100) / 10
	return lease.Session{Kind: lease.KindAudit, ID: id}, id != 0
}

func (l *scripted) accept() (int, error) {
	st := l.steps[0]
	l.steps = l.steps[1:]
	if err, ok := st.(error); ok {
		return -1, err
	}
	return st.(int), nil
}

func (l *scripted) refuse(c int)          { l.refused = append(l.refused, c) }
func (l *scripted) serve(c int, _ uint32) { l.served = append(l.served, c) }

// TestAcceptLoop: the loop both paths share retries at once on errAgain,
// pauses after a failed accept, refuses a connection over the cap, and
// returns what stops it.
func TestAcceptLoop(t *testing.T) {
	s := &Unix{Log: slog.New(slog.DiscardHandler), slots: slots{limit: 1, perUID: 1}}
	fatal := errors.New("fatal")
	l := &scripted{steps: []any{errAgain, 101, errors.New("EMFILE"), 102, &stopped{fatal}}}
	start := time.Now()
	if err := acceptLoop[int](s, l); err != fatal {
		t.Fatalf("loop returned %v, want %v", err, fatal)
	}
	if !reflect.DeepEqual(l.served, []int{101}) || !reflect.DeepEqual(l.refused, []int{102}) {
		t.Fatalf("served %v, refused %v; want [101], [102] (one slot)", l.served, l.refused)
	}
	if d := time.Since(start); d < acceptBackoff {
		t.Fatalf("failed accept retried after %v, want a pause of %v", d, acceptBackoff)
	}
	s.slots.free(1)
	if err := acceptLoop[int](s, &scripted{steps: []any{&stopped{}}}); err != nil {
		t.Fatalf("closed loop returned %v", err)
	}
}

// TestConnectionCaps: one uid cannot take more than its share, others
// still get places, and root has places of its own when the rest are taken.
func TestConnectionCaps(t *testing.T) {
	s := &Unix{Log: slog.New(slog.DiscardHandler), slots: slots{limit: 4, perUID: 2, rootReserve: 1}}
	// uid 1 tries three, uid 2 two, uid 3 one (the cap of 4 is then full),
	// root one (its reserve) and one more.
	l := &scripted{steps: []any{101, 102, 103, 201, 202, 301, 1, 2, &stopped{}}}
	if err := acceptLoop[int](s, l); err != nil {
		t.Fatal(err)
	}
	if want := []int{101, 102, 201, 202, 1}; !reflect.DeepEqual(l.served, want) {
		t.Fatalf("served %v, want %v", l.served, want)
	}
	if want := []int{103, 301, 2}; !reflect.DeepEqual(l.refused, want) {
		t.Fatalf("refused %v, want %v", l.refused, want)
	}
	s.slots.free(0)
	if s.slots.take(3) {
		t.Fatal("root's reserved place went to another uid")
	}
	s.slots.free(1)
	if !s.slots.take(3) {
		t.Fatal("a place given back was not free again")
	}
}

// TestSpillToAnotherSession: a uid at its cap still gets a place for a
// connection from a session under its share (the accept thread counts
// before the goroutines learn sessions and trim a flooding one), up to
// spillFactor times the cap; a session at its share, or a connection from
// no session, does not spill.
func TestSpillToAnotherSession(t *testing.T) {
	s := &Unix{Log: slog.New(slog.DiscardHandler), slots: slots{limit: 100, perUID: 2}}
	l := &scripted{steps: []any{111, 112, 101, 113, 121, 122, &stopped{}}}
	if err := acceptLoop[int](s, l); err != nil {
		t.Fatal(err)
	}
	if want := []int{111, 112, 113, 121}; !reflect.DeepEqual(l.served, want) {
		t.Fatalf("served %v, want %v", l.served, want)
	}
	if want := []int{101, 122}; !reflect.DeepEqual(l.refused, want) {
		t.Fatalf("refused %v, want %v (no session; past %d× the cap)", l.refused, want, spillFactor)
	}
	s.slots.free(1)
	s.slots.free(1)
	for range maxConnsPerSession {
		s.sessions.take(lease.Session{Kind: lease.KindAudit, ID: 1})
	}
	l = &scripted{steps: []any{114, 123, &stopped{}}}
	if err := acceptLoop[int](s, l); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(l.served, []int{123}) || !reflect.DeepEqual(l.refused, []int{114}) {
		t.Fatalf("served %v, refused %v; want [123], [114] (session 1 holds its share)", l.served, l.refused)
	}
}

// answering answers every QUERY with the machine IP, at once when now.
type answering struct{ now bool }

var testAnswer = alloc.Answer{Kind: wire.KindMIP, Reason: "test rule", TTL: time.Minute}

func (b answering) Query(context.Context, identity.Caller) alloc.Answer { return testAnswer }
func (b answering) QueryNow(identity.Caller) (alloc.Answer, bool)       { return testAnswer, b.now }
func (answering) NeedsProgram() bool                                    { return false }
func (answering) Sessions(*uint32) []api.SessionReport                  { return nil }
func (answering) Status() api.StatusReport                              { return api.StatusReport{} }
func (answering) ReleaseSession(lease.Session) []lease.Lease            { return nil }
func (answering) Programs() []api.ProgramEntry                          { return nil }
func (answering) AddProgram(string) ([]api.ProgramEntry, error)         { return nil, nil }
func (answering) Farm(context.Context) ([]api.FarmLease, error)         { return nil, nil }
func (answering) RemoveProgram(string) ([]api.ProgramEntry, error)      { return nil, nil }
func (answering) OpenSession(identity.Caller, string) (api.RegistrationReport, error) {
	return api.RegistrationReport{}, nil
}
func (answering) CloseSession(identity.Caller, string) (api.RegistrationReport, error) {
	return api.RegistrationReport{}, nil
}
func (answering) IsAdmin(uint32) bool    { return false }
func (answering) UserName(uint32) string { return "" }
func (answering) MIP() netip.Addr        { return netip.MustParseAddr("192.0.2.1") }

// TestPathsAnswerAlike: the accept thread and the goroutines send the same
// frames for the same QUERY, whether the answer is at hand or not, and
// whether PENDING comes first.
func TestPathsAnswerAlike(t *testing.T) {
	cases := []struct {
		name       string
		now, slow  bool
		flags      uint16
		wantFrames int
	}{
		{"at hand", true, false, 0, 1},
		{"to be looked up", false, false, wire.FlagAcceptPending, 1},
		{"pending first", true, true, wire.FlagAcceptPending, 2},
		{"at hand, last", true, false, wire.FlagLast, 1},
		{"to be looked up, last", false, false, wire.FlagAcceptPending | wire.FlagLast, 1},
		{"pending first, last", true, true, wire.FlagAcceptPending | wire.FlagLast, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got [2][]wire.Frame
			for i, fast := range []bool{true, false} {
				s := &Unix{Backend: answering{tc.now}, Resolver: identity.NewResolver(identity.POSIX, ""),
					Log: slog.New(slog.DiscardHandler), PendingWait: time.Second, SlowSource: tc.slow}
				path, stop := serveWith(t, s, fast)
				got[i] = query(t, path, tc.flags)
				stop()
				if fast && s.fast == nil {
					t.Fatal("the fast path did not start")
				}
				if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("after Close the socket file is still there (%v)", err)
				}
			}
			if len(got[0]) != tc.wantFrames || !reflect.DeepEqual(got[0], got[1]) {
				t.Fatalf("accept thread sent %+v, goroutines %+v; want %d frames alike", got[0], got[1], tc.wantFrames)
			}
		})
	}
}

// query sends one QUERY and reads frames up to the ANSWER. Then the
// daemon must close the connection if flags say FlagLast, and keep it
// open otherwise.
func query(t *testing.T, path string, flags uint16) []wire.Frame {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write(wire.AppendHeader(nil, wire.Header{Version: wire.Version, Type: wire.OpQuery, Flags: flags}))
	var frames []wire.Frame
	for {
		f, err := wire.ReadFrame(c, wire.MaxResponsePayload)
		if err != nil {
			if err == io.EOF {
				t.Fatalf("closed after %+v", frames)
			}
			t.Fatal(err)
		}
		frames = append(frames, f)
		if f.Type != wire.RespPending {
			break
		}
	}
	last := flags&wire.FlagLast != 0
	if !last {
		// Past the accept thread's wait for a hang-up: a goroutine holds
		// the connection now.
		c.SetReadDeadline(time.Now().Add(10 * fastWait))
	}
	var b [1]byte
	if n, err := c.Read(b[:]); last && (n != 0 || err != io.EOF) {
		t.Fatalf("after the ANSWER to a last request, read %d bytes, %v; want the daemon to have closed", n, err)
	} else if !last && !isTimeout(err) {
		t.Fatalf("after the ANSWER, read %d bytes, %v; want the connection kept open for another request", n, err)
	}
	return frames
}

// TestFirstRequestHandedOff: what the accept thread reads of a first
// request it does not answer itself, another request than QUERY or a
// header that arrives in pieces, reaches the goroutine that takes over,
// which answers as the goroutines alone do.
func TestFirstRequestHandedOff(t *testing.T) {
	status := wire.AppendHeader(nil, wire.Header{Version: wire.Version, Type: wire.OpStatus})
	bareQuery := wire.AppendHeader(nil, wire.Header{Version: wire.Version, Type: wire.OpQuery, Flags: wire.FlagLast})
	cases := []struct {
		name   string
		pieces [][]byte
	}{
		{"STATUS", [][]byte{status}},
		{"STATUS in pieces", [][]byte{status[:5], status[5:]}},
		{"QUERY in pieces", [][]byte{bareQuery[:7], bareQuery[7:]}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got [2]wire.Frame
			for i, fast := range []bool{true, false} {
				s := &Unix{Backend: answering{true}, Resolver: identity.NewResolver(identity.POSIX, ""),
					Log: slog.New(slog.DiscardHandler)}
				path, stop := serveWith(t, s, fast)
				c, err := net.Dial("unix", path)
				if err != nil {
					t.Fatal(err)
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				for j, p := range tc.pieces {
					if j > 0 {
						// The accept thread has read the first piece by now.
						time.Sleep(fastWait / 2)
					}
					c.Write(p)
				}
				if got[i], err = wire.ReadFrame(c, wire.MaxResponsePayload); err != nil {
					t.Fatalf("fast path %v: %v", fast, err)
				}
				c.Close()
				stop()
			}
			if got[0].Type == wire.RespError || !reflect.DeepEqual(got[0], got[1]) {
				t.Fatalf("accept thread's hand-off answered %+v, goroutines %+v; want the same, not an error", got[0], got[1])
			}
		})
	}
}

// serveWith serves s on a socket of its own, on the accept thread (fast)
// or from goroutines alone; stop closes s and fails t if serving failed.
func serveWith(t *testing.T, s *Unix, fast bool) (path string, stop func()) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "s")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	if fast {
		go func() { done <- s.Serve(ln) }()
	} else {
		s.open(ln)
		go func() { done <- acceptLoop[*net.UnixConn](s, netListener{s, ln}) }()
	}
	return path, func() {
		t.Helper()
		s.Close()
		if err := <-done; err != nil {
			t.Fatalf("serve: %v", err)
		}
	}
}
