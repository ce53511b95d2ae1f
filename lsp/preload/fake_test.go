package preload

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/backend/wire"
)

// queryFrame is the only request the library may send: a QUERY that
// accepts PENDING and is the connection's last (flags 1|2), or with
// IPVIRT_PENDING_MS=0 one that does not accept PENDING (flags 2).
var (
	queryFrame          = []byte{'I', 'P', 'V', 'T', 1, 1, 0, 3, 0, 0, 0, 0}
	queryFrameNoPending = []byte{'I', 'P', 'V', 'T', 1, 1, 0, 2, 0, 0, 0, 0}
)

// standIn is a Unix socket standing in for ipvirtd, to give the library
// answers the real daemon never would: junk, other versions, silence.
type standIn struct {
	path  string
	l     *net.UnixListener
	conns atomic.Int32
	mu    sync.Mutex
	bad   [][]byte // requests that were not exactly a QUERY
	open  []net.Conn
}

// serveFunc handles the n-th connection (counting from 1) to a stand-in.
type serveFunc func(s *standIn, n int, c net.Conn)

// newStandIn serves each connection with serve; nil accepts and never
// answers (a hung daemon).
func newStandIn(t testing.TB, serve serveFunc) *standIn {
	t.Helper()
	// Short path: sun_path holds 108 bytes and test names are long.
	dir, err := os.MkdirTemp("", "ipvd")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	s := &standIn{path: filepath.Join(dir, "s")}
	s.l, err = net.ListenUnix("unix", &net.UnixAddr{Name: s.path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(s.path, 0o666)
	go func() {
		for {
			c, err := s.l.Accept()
			if err != nil {
				return
			}
			n := int(s.conns.Add(1))
			s.mu.Lock()
			s.open = append(s.open, c)
			s.mu.Unlock()
			if serve != nil {
				go serve(s, n, c)
			}
		}
	}()
	t.Cleanup(func() {
		s.l.Close()
		s.mu.Lock()
		for _, c := range s.open {
			c.Close()
		}
		s.mu.Unlock()
		os.RemoveAll(dir)
		if len(s.bad) > 0 {
			t.Errorf("the library sent requests other than QUERY: % x", s.bad)
		}
	})
	return s
}

// readQuery reads the 12-byte request and records it if it is not a QUERY.
func (s *standIn) readQuery(c net.Conn) bool {
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	req := make([]byte, len(queryFrame))
	if _, err := io.ReadFull(c, req); err != nil {
		return false
	}
	if !bytes.Equal(req, queryFrame) && !bytes.Equal(req, queryFrameNoPending) {
		s.mu.Lock()
		s.bad = append(s.bad, req)
		s.mu.Unlock()
	}
	return true
}

// reply answers every connection's query with the bytes b, then closes.
func reply(b []byte) serveFunc {
	return func(s *standIn, _ int, c net.Conn) {
		if s.readQuery(c) {
			c.Write(b)
		}
		c.Close()
	}
}

// env points a program at the stand-in.
func (s *standIn) env(extra ...string) []string {
	return append([]string{"LD_PRELOAD=" + libPath, "IPVIRT_SOCKET=" + s.path}, extra...)
}

// answerFrame is a well-formed version-1 ANSWER frame.
func answerFrame(a wire.Answer) []byte {
	return wire.AppendFrame(nil, wire.RespAnswer, wire.AppendAnswer(nil, a))
}

func vipAnswer(vip string, ttl uint32) []byte {
	return answerFrame(wire.Answer{Kind: wire.KindVIP, Prefix: 24, VIP: netip.MustParseAddr(vip),
		MachineIP: netip.MustParseAddr("127.0.0.1"), TTL: ttl, Session: 7})
}

// rawFrame builds a frame with any header values.
func rawFrame(magic string, version, typ uint8, length uint32, payload []byte) []byte {
	b := append([]byte(magic), version, typ, 0, 0)
	b = binary.BigEndian.AppendUint32(b, length)
	return append(b, payload...)
}

// rawAnswer builds a 32-byte ANSWER payload field by field, plus reason.
func rawAnswer(kind, prefix uint8, vip, mip [4]byte, ttl uint32, reason string) []byte {
	p := []byte{kind, prefix}
	p = binary.BigEndian.AppendUint16(p, uint16(len(reason)))
	p = append(p, vip[:]...)
	p = append(p, mip[:]...)
	p = binary.BigEndian.AppendUint32(p, ttl)
	p = append(p, make([]byte, 16)...)
	return append(p, reason...)
}
