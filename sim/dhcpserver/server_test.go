package dhcpserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

func TestMain(m *testing.M) {
	// The Main test re-executes this binary as the server process.
	if os.Getenv("DHCPSERVER_MAIN") == "1" {
		os.Exit(Main(strings.Fields(os.Getenv("DHCPSERVER_ARGS"))))
	}
	os.Exit(m.Run())
}

// relayClient talks to a loopback server the way a relay agent does, so
// answers come back by unicast to giaddr: no root, no broadcast.
type relayClient struct {
	t    *testing.T
	conn *net.UDPConn
	srv  *net.UDPAddr
	mac  net.HardwareAddr
}

func newRelayClient(t *testing.T, srv *Server) *relayClient {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &relayClient{t: t, conn: conn, srv: net.UDPAddrFromAddrPort(srv.Addr()), mac: net.HardwareAddr{2, 0, 0, 0, 0, 7}}
}

func (c *relayClient) msg(typ dhcpv4.MessageType, cid string, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	base := []dhcpv4.Modifier{dhcpv4.WithMessageType(typ), dhcpv4.WithHwAddr(c.mac),
		dhcpv4.WithGatewayIP(net.IPv4(127, 0, 0, 1)), dhcpv4.WithOption(dhcpv4.OptHostName("h-" + cid)),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("ipvirt"))}
	if cid != "" {
		base = append(base, dhcpv4.WithOption(dhcpv4.OptClientIdentifier([]byte(cid))))
	}
	m, err := dhcpv4.New(append(base, mods...)...)
	if err != nil {
		c.t.Fatal(err)
	}
	return m
}

var errNoAnswer = errors.New("no answer")

// exchange sends m and returns the answer with its xid, if one comes
// within wait.
func (c *relayClient) exchange(m *dhcpv4.DHCPv4, wait time.Duration) (*dhcpv4.DHCPv4, error) {
	if _, err := c.conn.WriteToUDP(m.ToBytes(), c.srv); err != nil {
		return nil, err
	}
	buf := make([]byte, 1500)
	c.conn.SetReadDeadline(time.Now().Add(wait))
	for {
		n, _, err := c.conn.ReadFromUDP(buf)
		if err != nil {
			return nil, errNoAnswer
		}
		r, err := dhcpv4.FromBytes(buf[:n])
		if err == nil && r.TransactionID == m.TransactionID {
			return r, nil
		}
	}
}

func (c *relayClient) dora(cid string) (*dhcpv4.DHCPv4, error) {
	offer, err := c.exchange(c.msg(dhcpv4.MessageTypeDiscover, cid), time.Second)
	if err != nil {
		return nil, err
	}
	req := c.msg(dhcpv4.MessageTypeRequest, cid, dhcpv4.WithTransactionID(offer.TransactionID),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(offer.ServerIdentifier())))
	return c.exchange(req, time.Second)
}

func startLoop(t *testing.T, cfg Config) *Server {
	t.Helper()
	cfg.Listen = "127.0.0.1:0"
	if !cfg.RangeStart.IsValid() {
		cfg.RangeStart, cfg.RangeEnd = netip.MustParseAddr("10.9.0.10"), netip.MustParseAddr("10.9.0.20")
	}
	srv, err := Start(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

func TestServerDORA(t *testing.T) {
	srv := startLoop(t, Config{LeaseTime: time.Minute, Router: netip.MustParseAddr("10.9.0.1")})
	c := newRelayClient(t, srv)
	offer, err := c.exchange(c.msg(dhcpv4.MessageTypeDiscover, "alice"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if offer.MessageType() != dhcpv4.MessageTypeOffer || !offer.YourIPAddr.Equal(net.IPv4(10, 9, 0, 10)) ||
		!offer.ServerIdentifier().Equal(net.IPv4(127, 0, 0, 1)) || !offer.GatewayIPAddr.Equal(net.IPv4(127, 0, 0, 1)) ||
		string(offer.Options.Get(dhcpv4.OptionClientIdentifier)) != "alice" {
		t.Fatalf("offer %s", offer.Summary())
	}
	if offer.IPAddressLeaseTime(0) != time.Minute || offer.IPAddressRenewalTime(0) != 30*time.Second ||
		offer.IPAddressRebindingTime(0) != 53*time.Second || offer.SubnetMask().String() != "ffffff00" ||
		len(offer.Router()) != 1 || !offer.Router()[0].Equal(net.IPv4(10, 9, 0, 1)) {
		t.Fatalf("offer options %s", offer.Summary())
	}
	if len(srv.Leases()) != 0 {
		t.Fatal("an OFFER made a lease")
	}
	ack, err := c.dora("alice")
	if err != nil || ack.MessageType() != dhcpv4.MessageTypeAck || !ack.YourIPAddr.Equal(offer.YourIPAddr) {
		t.Fatalf("ack %v %v", ack, err)
	}
	ls := srv.Leases()
	if len(ls) != 1 || ls[0].Client != "id:616c696365" || ls[0].Hostname != "h-alice" || ls[0].VendorClass != "ipvirt" ||
		ls[0].Addr != netip.MustParseAddr("10.9.0.10") || time.Until(ls[0].Expiry) > time.Minute {
		t.Fatalf("leases %+v", ls)
	}
	// Without option 61 the client is its chaddr.
	if _, err := c.dora(""); err != nil {
		t.Fatal(err)
	}
	if ls := srv.Leases(); len(ls) != 2 || ls[1].Client != "hw:02:00:00:00:00:07" {
		t.Fatalf("leases %+v", ls)
	}
	if cs := srv.Counters(); cs.Discovers != 3 || cs.Offers != 3 || cs.Acks != 2 || cs.Requests != 2 {
		t.Fatalf("counters %+v", cs)
	}
}

func TestServerReleaseDeclineInform(t *testing.T) {
	srv := startLoop(t, Config{})
	c := newRelayClient(t, srv)
	ack, err := c.dora("bob")
	if err != nil {
		t.Fatal(err)
	}
	// A REQUEST naming another server is bob choosing that server.
	other := c.msg(dhcpv4.MessageTypeRequest, "carol", dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(192, 0, 2, 1))),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 9, 0, 11))))
	if _, err := c.exchange(other, 200*time.Millisecond); !errors.Is(err, errNoAnswer) {
		t.Fatalf("answered a REQUEST for another server: %v", err)
	}
	if _, err := c.exchange(c.msg(dhcpv4.MessageTypeRelease, "bob", dhcpv4.WithClientIP(ack.YourIPAddr)), 200*time.Millisecond); !errors.Is(err, errNoAnswer) {
		t.Fatalf("answered a RELEASE: %v", err)
	}
	ack2, err := c.dora("dave")
	if err != nil {
		t.Fatal(err)
	}
	decline := c.msg(dhcpv4.MessageTypeDecline, "dave", dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ack2.YourIPAddr)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(ack2.ServerIdentifier())))
	c.exchange(decline, 100*time.Millisecond)
	inform, err := c.exchange(c.msg(dhcpv4.MessageTypeInform, "erin", dhcpv4.WithClientIP(net.IPv4(10, 9, 0, 99))), time.Second)
	if err != nil || inform.MessageType() != dhcpv4.MessageTypeAck || inform.Options.Has(dhcpv4.OptionIPAddressLeaseTime) {
		t.Fatalf("inform answer %v %v", inform, err)
	}
	if d := srv.Declined(); len(d) != 1 || d[0].AsSlice() == nil || !net.IP(d[0].AsSlice()).Equal(ack2.YourIPAddr) {
		t.Fatalf("declined %v", d)
	}
	if ls := srv.Leases(); len(ls) != 0 {
		t.Fatalf("leases %+v after release and decline", ls)
	}
	cs := srv.Counters()
	if cs.Releases != 1 || cs.Declines != 1 || cs.Informs != 1 || cs.OtherServer != 1 {
		t.Fatalf("counters %+v", cs)
	}
	// Bob gets his address back; dave's declined one is skipped.
	again, err := c.dora("bob")
	if err != nil || !again.YourIPAddr.Equal(ack.YourIPAddr) {
		t.Fatalf("bob again: %v %v, want %s", again, err, ack.YourIPAddr)
	}
}

func TestServerKnobs(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    Config
		setup  func(*Server)
		want   dhcpv4.MessageType // answer to the REQUEST; 0: no answer at all
		checks func(t *testing.T, c Counters)
	}{
		{"nak_first", Config{NAKFirst: 1}, nil, dhcpv4.MessageTypeNak,
			func(t *testing.T, c Counters) { assertEq(t, "naks", c.Naks, 1) }},
		{"nak_clients", Config{NAKClients: []string{"id:7a6f65"}}, nil, dhcpv4.MessageTypeNak, nil},
		{"nak_rate 1", Config{NAKRate: 1}, nil, dhcpv4.MessageTypeNak, nil},
		{"NAKNext", Config{}, func(s *Server) { s.NAKNext(1) }, dhcpv4.MessageTypeNak, nil},
		{"drop_rate 1", Config{DropRate: 1}, nil, 0,
			func(t *testing.T, c Counters) {
				assertEq(t, "drops", c.Drops, 1)
				assertEq(t, "discovers", c.Discovers, 0)
			}},
		{"SetOffline", Config{}, func(s *Server) { s.SetOffline(true) }, 0,
			func(t *testing.T, c Counters) { assertEq(t, "ignored", c.Ignored, 1) }},
		{"offline window", Config{Offline: []Window{{From: 0, Until: time.Hour}}}, nil, 0,
			func(t *testing.T, c Counters) { assertEq(t, "ignored", c.Ignored, 1) }},
		{"offline window passed", Config{Offline: []Window{{From: 0, Until: time.Nanosecond}}}, nil, dhcpv4.MessageTypeAck, nil},
		{"well behaved", Config{}, nil, dhcpv4.MessageTypeAck, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startLoop(t, tc.cfg)
			if tc.setup != nil {
				tc.setup(srv)
			}
			c := newRelayClient(t, srv)
			ack, err := c.dora("zoe")
			switch {
			case tc.want == 0 && !errors.Is(err, errNoAnswer):
				t.Fatalf("answered: %v %v", ack, err)
			case tc.want != 0 && (err != nil || ack.MessageType() != tc.want):
				t.Fatalf("answer %v %v, want %s", ack, err, tc.want)
			}
			if tc.want == dhcpv4.MessageTypeNak && (!ack.YourIPAddr.IsUnspecified() || !ack.IsBroadcast()) {
				t.Fatalf("NAK %s: want no yiaddr and the broadcast bit", ack.Summary())
			}
			if tc.checks != nil {
				tc.checks(t, srv.Counters())
			}
		})
	}
}

func assertEq(t *testing.T, what string, got, want int) {
	t.Helper()
	if got != want {
		t.Fatalf("%s = %d, want %d", what, got, want)
	}
}

func TestServerLatency(t *testing.T) {
	srv := startLoop(t, Config{Latency: 150 * time.Millisecond})
	c := newRelayClient(t, srv)
	// Wait's signal says the DISCOVER was handled; the OFFER must still
	// be held back.
	if _, err := c.conn.WriteToUDP(c.msg(dhcpv4.MessageTypeDiscover, "x").ToBytes(), c.srv); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Wait(ctx, func(c Counters, _ []Lease) bool { return c.Offers == 1 }); err != nil {
		t.Fatal(err)
	}
	c.conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	buf := make([]byte, 1500)
	if _, _, err := c.conn.ReadFromUDP(buf); err == nil {
		t.Fatal("the OFFER came without the configured latency")
	}
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := c.conn.ReadFromUDP(buf); err != nil {
		t.Fatalf("no OFFER after the latency: %v", err)
	}
}

// A client that takes another server's offer sends its REQUEST right
// after its DISCOVER. Decided out of order, the REQUEST would find no
// offer to drop and the late OFFER would then hold the address for
// offer_hold: a stale claim that made dhcp-failover decline one address
// instead of two. Real servers decide in arrival order; so must this one.
func TestServerDecidesInArrivalOrder(t *testing.T) {
	const n = 200
	start := netip.MustParseAddr("10.9.0.1")
	end := start
	for range n - 1 {
		end = end.Next()
	}
	srv := startLoop(t, Config{RangeStart: start, RangeEnd: end, Latency: time.Millisecond})
	c := newRelayClient(t, srv)
	other := dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(192, 0, 2, 1)))
	for i := range n {
		cid := fmt.Sprintf("taken-elsewhere-%d", i)
		for _, m := range []*dhcpv4.DHCPv4{c.msg(dhcpv4.MessageTypeDiscover, cid), c.msg(dhcpv4.MessageTypeRequest, cid, other)} {
			if _, err := c.conn.WriteToUDP(m.ToBytes(), c.srv); err != nil {
				t.Fatal(err)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Wait(ctx, func(c Counters, _ []Lease) bool { return c.Received == 2*n }); err != nil {
		t.Fatalf("counters %+v: %v", srv.Counters(), err)
	}
	if cs := srv.Counters(); cs.OtherServer != n || cs.Offers != n {
		t.Fatalf("counters %+v", cs)
	}
	// Every offer was dropped: the whole range is free for new clients.
	// (A fresh socket: the burst's 200 OFFERs fill c's receive buffer.)
	c = newRelayClient(t, srv)
	for i := range n {
		if _, err := c.dora(fmt.Sprintf("new-%d", i)); err != nil {
			t.Fatalf("client %d of %d found no address (a stale offer holds one): %v; counters %+v", i, n, err, srv.Counters())
		}
	}
}
