package dbserver

import (
	"bufio"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// dialFrom connects from a chosen 127/8 source (Linux lets any process use
// any loopback address) and returns the server's verdict line.
func dialFrom(t *testing.T, s *Server, src string) (net.Conn, string) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp4", s.Addr().String())
	if err != nil {
		t.Fatalf("dial from %s: %v", src, err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read verdict for %s: %v", src, err)
	}
	return c, strings.Fields(line)[0]
}

func TestDuplicateSourcesAreRefused(t *testing.T) {
	tests := []struct {
		name    string
		sources []string
		want    []string
	}{
		{"one client", []string{"127.0.0.1"}, []string{"OK"}},
		{"same address thrice", []string{"127.0.0.1", "127.0.0.1", "127.0.0.1"}, []string{"OK", "REFUSED", "REFUSED"}},
		{"three addresses", []string{"127.78.0.1", "127.78.0.2", "127.78.0.3"}, []string{"OK", "OK", "OK"}},
		{"mixed", []string{"127.78.0.1", "127.0.0.1", "127.78.0.1", "127.0.0.1"}, []string{"OK", "OK", "REFUSED", "REFUSED"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			s, err := Listen("127.0.0.1:0", reg)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var conns []net.Conn
			accepted := 0
			for i, src := range tt.sources {
				c, verdict := dialFrom(t, s, src)
				conns = append(conns, c)
				if verdict != tt.want[i] {
					t.Errorf("client %d from %s: verdict %s, want %s", i, src, verdict, tt.want[i])
				}
				if verdict == "OK" {
					accepted++
				}
			}
			seen := s.Seen()
			if len(seen) != len(tt.sources) {
				t.Fatalf("server saw %d connections, want %d", len(seen), len(tt.sources))
			}
			for i, c := range seen {
				if c.Source.Addr() != netip.MustParseAddr(tt.sources[i]) {
					t.Errorf("seen[%d] from %s, want %s", i, c.Source.Addr(), tt.sources[i])
				}
			}
			got := gathered(t, reg, "ipvirt_sim_db_connections_total", "accepted")
			if int(got) != accepted {
				t.Errorf("accepted counter %v, want %d", got, accepted)
			}
			if s.Live() != accepted {
				t.Errorf("live %d, want %d", s.Live(), accepted)
			}
			for _, c := range conns {
				c.Close()
			}
		})
	}
}

// A client that hangs up frees its address for the next one.
func TestHangUpFreesTheAddress(t *testing.T) {
	s, err := Listen("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, v := dialFrom(t, s, "127.78.0.9")
	if v != "OK" {
		t.Fatalf("first verdict %s", v)
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for s.Live() != 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	c2, v := dialFrom(t, s, "127.78.0.9")
	defer c2.Close()
	if v != "OK" {
		t.Fatalf("after hang-up: verdict %s, want OK", v)
	}
	s.Drop()
	if s.Live() != 0 {
		t.Fatalf("Drop left %d live connections", s.Live())
	}
}

// gathered reads one counter from the registry, as a scraper would.
func gathered(t *testing.T, reg *prometheus.Registry, name, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
