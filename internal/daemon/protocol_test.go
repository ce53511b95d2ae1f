package daemon_test

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/backend/api"

	"github.com/ipvirt/ipvirt/backend/wire"
	"github.com/ipvirt/ipvirt/sim/loginsession"
)

// TestProtocolEdges speaks raw bytes to the real daemon: an unknown version
// gets an ERROR frame of version 1 and a closed connection; garbage gets a
// closed connection; a query from a process in no session gets MIP.
func TestProtocolEdges(t *testing.T) {
	e := newEnv(t, "")

	c := e.dial(5 * time.Second)
	c.Write(wire.AppendHeader(nil, wire.Header{Version: 2, Type: wire.OpQuery}))
	f, err := wire.ReadFrame(c, wire.MaxResponsePayload)
	if err != nil || f.Version != wire.Version || f.Type != wire.RespError {
		t.Fatalf("version 2 request: frame %+v, %v", f, err)
	}
	code, msg, _ := wire.ParseError(f.Payload)
	if code != wire.CodeUnsupportedVersion || !strings.Contains(msg, "unsupported protocol version 2") {
		t.Fatalf("error %d %q", code, msg)
	}
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("connection left open after a version mismatch: %v", err)
	}
	c.Close()

	c = e.dial(5 * time.Second)
	c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	// Closed with our bytes unread: EOF or a reset, never an answer.
	if n, err := c.Read(make([]byte, 64)); n != 0 || (err != io.EOF && !errors.Is(err, syscall.ECONNRESET)) {
		t.Fatalf("garbage answered with %d bytes, %v; want the connection closed", n, err)
	}
	c.Close()

	// Several requests on one connection, in turn; this test process is in
	// no login session (when run outside a login), or in the tester's.
	c = e.dial(5 * time.Second)
	for range 3 {
		c.Write(wire.AppendFrame(nil, wire.OpQuery, nil))
		f, err := wire.ReadFrame(c, wire.MaxResponsePayload)
		if err != nil || f.Type != wire.RespAnswer {
			t.Fatalf("query: %+v %v", f, err)
		}
		a, err := wire.ParseAnswer(f.Payload)
		if err != nil {
			t.Fatal(err)
		}
		if a.MachineIP.String() != "127.0.0.1" || a.TTL == 0 {
			t.Fatalf("answer %+v", a)
		}
	}
	// The accept thread answered the first QUERY without reading the
	// executable (per-session mode); the connection's later requests
	// still name it.
	c.Write(wire.AppendFrame(nil, wire.OpWhoami, nil))
	f, err = wire.ReadFrame(c, wire.MaxResponsePayload)
	var who api.WhoamiReport
	if err != nil || f.Type != wire.RespJSON || json.Unmarshal(f.Payload, &who) != nil {
		t.Fatalf("whoami: %+v %v", f, err)
	}
	if self, _ := os.Executable(); who.Exe != self || who.PID != os.Getpid() {
		t.Fatalf("whoami after a fast QUERY: exe %q pid %d; want %q pid %d", who.Exe, who.PID, self, os.Getpid())
	}
	c.Write(wire.AppendFrame(nil, wire.Type(99), nil))
	f, _ = wire.ReadFrame(c, wire.MaxResponsePayload)
	if code, msg, _ := wire.ParseError(f.Payload); f.Type != wire.RespError || code != wire.CodeBadRequest {
		t.Fatalf("unknown op: %+v %d %q", f, code, msg)
	}
}

func TestHTTPEndpoints(t *testing.T) {
	e := newEnv(t, "")
	s := e.session(60001)
	vip := e.mustVIP(s)
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + e.d.HTTP + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	code, body := get("/v1/sessions")
	var rows []struct {
		VIP string `json:"vip"`
		ID  uint32 `json:"id"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &rows) != nil {
		t.Fatalf("/v1/sessions: %d %s", code, body)
	}
	found := false
	for _, r := range rows {
		found = found || (r.ID == s.ID && r.VIP == vip)
	}
	if !found {
		t.Fatalf("/v1/sessions lacks session %d with %s: %s", s.ID, vip, body)
	}
	if code, body := get("/v1/status"); code != 200 || !strings.Contains(body, `"leases": 1`) {
		t.Fatalf("/v1/status: %d %s", code, body)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, `ipvirt_pool_addresses{state="used"} 1`) {
		t.Fatalf("/metrics: %d", code)
	}
}

func TestPreallocateOnLogon(t *testing.T) {
	e := newEnv(t, "preallocate: true\n")
	// Scans see every session on the host (in POSIX mode, the test runner's
	// own too), so look only at the sessions made here.
	s := e.session(60001)
	// No process of the session has asked anything: the scan finds it.
	eventually(t, "the new session has a VIP without asking", func() bool { return e.sessionVIP(s.ID) != "" })
	vip := e.sessionVIP(s.ID)
	if got := e.mustVIP(s); got != vip {
		t.Fatalf("session asked and got %s, pre-allocated %s", got, vip)
	}
	if e.kind != loginsession.Audit {
		return // the session user is the caller's uid: no admin session to make
	}
	admin := e.session(0)
	time.Sleep(500 * time.Millisecond) // several scans
	if v := e.sessionVIP(admin.ID); v != "" {
		t.Fatalf("an administrator's session was pre-allocated %s", v)
	}
}

// TestSlowClients: the socket's accept thread answers QUERYs inline, so a
// client that connects and says nothing, or sends its request in pieces,
// must neither block other clients nor go unanswered.
func TestSlowClients(t *testing.T) {
	e := newEnv(t, "")
	dial := func() net.Conn { return e.dial(10 * time.Second) }
	query := func(c net.Conn, parts ...[]byte) {
		t.Helper()
		for i, p := range parts {
			if i > 0 {
				time.Sleep(20 * time.Millisecond) // past the inline wait
			}
			if _, err := c.Write(p); err != nil {
				t.Fatal(err)
			}
		}
		f, err := wire.ReadFrame(c, wire.MaxResponsePayload)
		if err != nil || f.Type != wire.RespAnswer {
			t.Fatalf("query: %+v %v", f, err)
		}
	}
	req := wire.AppendFrame(nil, wire.OpQuery, nil)

	silent := make([]net.Conn, 5)
	for i := range silent {
		silent[i] = dial()
	}
	// Others are served while the silent ones say nothing.
	for range 3 {
		query(dial(), req)
	}
	query(dial(), req[:6], req[6:]) // a request split across writes
	// The silent ones are still served once they speak.
	for _, c := range silent {
		query(c, req)
	}
}

// Each connection holds one of the server's 8,192 slots until it is done.
// The library's pattern (connect, QUERY, read the answer, close) is served
// and closed on the accept thread without a goroutine: more such
// connections than there are slots must all be answered, or a slot leaks
// with each and the daemon turns everyone away after the 8,192nd.
func TestShortConnectionsFreeTheirSlots(t *testing.T) {
	e := newEnv(t, "")
	query := wire.AppendFrame(nil, wire.OpQuery, nil)
	for i := range 9000 {
		c, err := net.Dial("unix", e.d.Socket)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write(query)
		f, err := wire.ReadFrame(c, wire.MaxResponsePayload)
		c.Close()
		if err != nil || f.Type != wire.RespAnswer {
			t.Fatalf("connection %d: %+v %v", i, f, err)
		}
	}
}
