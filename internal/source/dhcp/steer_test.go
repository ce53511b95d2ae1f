package dhcp

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/sim/dhcpserver"
)

// A server that offers one address to every exchange from one MAC (as
// dnsmasq does) against concurrent holders: the exchanges steer to nearby
// addresses instead of REQUESTing the shared offer and being NAKed; a
// server that ignores such REQUESTs is not steered again and the holders
// still get distinct leases the RFC way.
func TestLANSteering(t *testing.T) {
	for _, ignore := range []bool{false, true} {
		name := "server ACKs steered requests"
		if ignore {
			name = "server ignores steered requests"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			lab := newLab(t)
			srvHost, cli := lab.host("10.99.0.1/22"), lab.host("10.99.0.2/22")
			srv := lanServer(t, srvHost, dhcpserver.Config{OfferByMAC: true, IgnoreUnoffered: ignore})
			cfg := lanConfig()
			cfg.RetransmitBase = 500 * time.Millisecond // an ignored REQUEST waits one base
			s := lanSource(t, cli, cfg, "lan-host", newRecorder())
			// One holder first: the first DISCOVERs on a fresh link can be
			// lost, and retransmissions spread with jitter would not collide.
			seen := map[netip.Addr]bool{acquire(t, s, holder(100)).Addr: true}
			const n = 10
			for wave := range 2 {
				c0 := s.Counters()
				addrs := make([]netip.Addr, n)
				var wg sync.WaitGroup
				for i := range n {
					wg.Go(func() { addrs[i] = acquire(t, s, holder(wave*n+i)).Addr })
				}
				wg.Wait()
				if t.Failed() {
					return
				}
				for i, a := range addrs {
					if seen[a] {
						t.Fatalf("wave %d holder %d: %s handed out twice", wave, i, a)
					}
					seen[a] = true
				}
				c, sc := s.Counters(), srv.Counters()
				t.Logf("wave %d: client %+v; server %+v", wave, c, sc)
				steered, exchanges := c.Steered-c0.Steered, c.Exchanges-c0.Exchanges
				switch {
				case wave == 0 && steered == 0:
					t.Fatalf("wave 0: no steered REQUEST: the server's shared offers were not seen")
				case ignore && wave == 1 && steered != 0:
					t.Fatalf("wave 1: %d steered REQUESTs to a server that ignored them before", steered)
				case ignore && sc.Unoffered != int(c.Steered):
					t.Fatalf("server ignored %d REQUESTs, client steered %d", sc.Unoffered, c.Steered)
				case !ignore && exchanges > n+n/2:
					// Steered exchanges rarely need a second DISCOVER (one
					// that loses every candidate to the others' steering
					// may); without steering one holder wins per round,
					// n(n+1)/2 exchanges in all.
					t.Fatalf("wave %d: %d exchanges for %d holders", wave, exchanges, n)
				}
			}
			if got := len(srv.Leases()); got != 2*n+1 {
				t.Fatalf("server holds %d leases, want %d", got, 2*n+1)
			}
		})
	}
}
