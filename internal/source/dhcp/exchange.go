package dhcp

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/ipvirt/ipvirt/internal/lease"
)

// dispatch hands a reply to the exchange waiting for its xid. It runs on
// the transport's read goroutine and must not block.
func (s *Source) dispatch(in inbound) {
	if !bytes.Equal(in.msg.ClientHWAddr, s.mac) {
		return // another client on the LAN
	}
	s.pmu.Lock()
	ch := s.pending[in.msg.TransactionID]
	s.pmu.Unlock()
	if ch == nil {
		return
	}
	select {
	case ch <- in:
	default: // a flood of duplicate answers; the first ones will do
	}
}

// register reserves a fresh xid and the channel its replies arrive on.
func (s *Source) register() (dhcpv4.TransactionID, chan inbound, func()) {
	ch := make(chan inbound, 16)
	for {
		var xid dhcpv4.TransactionID
		_, _ = rand.Read(xid[:]) // never fails (crypto/rand)
		s.pmu.Lock()
		if _, taken := s.pending[xid]; !taken {
			s.pending[xid] = ch
			s.pmu.Unlock()
			return xid, ch, func() {
				s.pmu.Lock()
				delete(s.pending, xid)
				s.pmu.Unlock()
			}
		}
		s.pmu.Unlock()
	}
}

// message builds a request from this source for client id cid.
func (s *Source) message(typ dhcpv4.MessageType, xid dhcpv4.TransactionID, cid []byte, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	m := &dhcpv4.DHCPv4{
		OpCode:        dhcpv4.OpcodeBootRequest,
		HWType:        iana.HWTypeEthernet,
		TransactionID: xid,
		ClientHWAddr:  s.mac,
		ClientIPAddr:  netip.IPv4Unspecified().AsSlice(),
		YourIPAddr:    netip.IPv4Unspecified().AsSlice(),
		ServerIPAddr:  netip.IPv4Unspecified().AsSlice(),
		GatewayIPAddr: netip.IPv4Unspecified().AsSlice(),
		Options:       dhcpv4.Options{},
	}
	m.UpdateOption(dhcpv4.OptMessageType(typ))
	m.UpdateOption(dhcpv4.OptClientIdentifier(cid))
	if typ == dhcpv4.MessageTypeDiscover || typ == dhcpv4.MessageTypeRequest {
		// We read answers off a packet socket or through the relay, so any
		// answer reaches us; broadcast keeps servers that cannot unicast
		// to an unconfigured address (no raw socket) working too.
		m.SetBroadcast()
		if s.cfg.Hostname != "" {
			m.UpdateOption(dhcpv4.OptHostName(s.cfg.Hostname))
		}
		m.UpdateOption(dhcpv4.OptClassIdentifier(s.cfg.VendorClass))
		m.UpdateOption(dhcpv4.OptMaxMessageSize(1500))
		m.UpdateOption(dhcpv4.OptParameterRequestList(
			dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionIPAddressLeaseTime,
			dhcpv4.OptionServerIdentifier, dhcpv4.OptionRenewTimeValue, dhcpv4.OptionRebindingTimeValue))
	}
	for _, mod := range mods {
		mod(m)
	}
	if !m.ClientIPAddr.IsUnspecified() {
		m.SetUnicast() // RFC 2131 4.1: the broadcast bit only without ciaddr
	}
	return m
}

// backoff is RFC 2131 4.1's retransmission delay for attempt n (from 0):
// base, 2·base, ... capped at 16·base, each ±base/4 (±1s at 4s).
func (s *Source) backoff(n int) time.Duration {
	base := s.cfg.RetransmitBase
	d := base << min(n, 4)
	j := base / 4
	if j > 0 {
		d += time.Duration(mrand.Int64N(int64(2*j+1))) - j
	}
	return d
}

// requestSends is how many REQUESTs selecting sends for one offer (the
// first and three retransmissions) before it gives the offer up and obtain
// starts over with a DISCOVER, as RFC 2131 4.4.1 has a client do when its
// retransmissions go unanswered. At the doubling backoff the four wait
// 15·base in all, a minute at the default 4s base: long enough to ride out
// lost packets, and at most that long before a server that vanished after
// its OFFER gives way to a new DISCOVER that another server may answer.
const requestSends = 4

var (
	errNoOffer = errors.New("no offer")
	errNoAck   = errors.New("no ACK after retransmissions")
)

// nakError is a NAK from the server.
type nakError struct{ msg string }

func (e *nakError) Error() string {
	if e.msg == "" {
		return "server sent NAK"
	}
	return "server sent NAK: " + e.msg
}

// ack is the result of a successful REQUEST.
type ack struct {
	g     grant
	mac   []byte
	sent  time.Time  // when the answered REQUEST left: the lease counts from then
	asked netip.Addr // reserved by ask for the exchange's holder until claimed
}

// obtain runs the INIT state machine until a lease is bound or ctx ends.
func (s *Source) obtain(ctx context.Context, b *binding) (lease.Lease, error) {
	var lastErr error
	naks := 0
	for {
		if ctx.Err() != nil {
			if lastErr == nil {
				lastErr = errNoOffer
			}
			return lease.Lease{}, fmt.Errorf("%w (%w)", lastErr, ctx.Err())
		}
		if err := s.acquireSlot(ctx); err != nil {
			if lastErr == nil {
				lastErr = errors.New("no exchange slot free (max_inflight)")
			}
			continue
		}
		a, err := s.selecting(ctx, b)
		s.releaseSlot()
		var nak *nakError
		switch {
		case errors.As(err, &nak):
			s.stats.naks.Add(1)
			lastErr = err
			naks++
			// Restart at once per RFC, but a server that NAKs everything
			// must not make us spin: back off from base/8.
			_ = sleep(ctx, s.backoffNAK(naks))
			continue
		case err != nil:
			lastErr = err
			continue
		}
		claimed := s.claim(a.g.Addr, b.key)
		s.unask(a.asked, b.key) // claimed now, or taken by another holder
		if !claimed {
			// Another holder of ours has it: two servers (or one confused
			// server) handed it out twice. Tell this server it is taken.
			s.log.Warn("dhcp: offered address already held by another holder; declining", "holder", b.key, "addr", a.g.Addr)
			s.decline(b, a, "address held by another ipvirt holder")
			lastErr = fmt.Errorf("address %s already held here", a.g.Addr)
			// No RFC 10s pause: the conflict is known, not a looping
			// network, and the server has just been told to skip it.
			naks++
			_ = sleep(ctx, s.backoffNAK(naks))
			continue
		}
		if s.arp != nil {
			conflict, err := s.arp.probe(ctx, a.g.Addr, s.cfg.ARPProbeWait)
			if err != nil {
				s.unclaim(a.g.Addr, b.key)
				s.sendReleaseFor(b.clientID, a.g.Addr, a.g.ServerID, a.mac)
				return lease.Lease{}, fmt.Errorf("arp probe of %s: %w", a.g.Addr, err)
			}
			if conflict {
				s.unclaim(a.g.Addr, b.key)
				s.log.Warn("dhcp: address in use on the link (ARP); declining", "holder", b.key, "addr", a.g.Addr)
				s.decline(b, a, "address in use (ARP probe)")
				lastErr = fmt.Errorf("address %s in use on the link", a.g.Addr)
				_ = sleep(ctx, s.declineWait())
				continue
			}
			s.arp.announce(a.g.Addr)
		}
		return s.bind(b, a)
	}
}

func (s *Source) backoffNAK(n int) time.Duration {
	d := (s.cfg.RetransmitBase / 8) << min(n-1, 5)
	return d/2 + time.Duration(mrand.Int64N(int64(d/2)+1))
}

// declineWait is RFC 2131 3.1.5's pause after a DECLINE (10s at the
// default base), so a broken server cannot loop us.
func (s *Source) declineWait() time.Duration { return s.cfg.RetransmitBase * 5 / 2 }

// selecting is one DISCOVER→OFFER→REQUEST→ACK round under one xid.
func (s *Source) selecting(ctx context.Context, b *binding) (ack, error) {
	s.stats.exchanges.Add(1)
	xid, ch, done := s.register()
	defer done()
	start := time.Now()
	secs := func() dhcpv4.Modifier {
		return func(m *dhcpv4.DHCPv4) { m.NumSeconds = uint16(min(time.Since(start)/time.Second, 0xffff)) }
	}

	var offer grant
	var offerMAC []byte
	for n := 0; ; n++ {
		if n > 0 {
			s.stats.retransmits.Add(1)
		}
		if err := s.tr.send(s.message(dhcpv4.MessageTypeDiscover, xid, b.clientID, secs()), dest{}); err != nil {
			return ack{}, fmt.Errorf("send DISCOVER: %w", err)
		}
		in, err := s.await(ctx, ch, s.backoff(n), func(m *dhcpv4.DHCPv4) bool {
			if m.MessageType() != dhcpv4.MessageTypeOffer {
				return false
			}
			g, err := parseGrant(m, s.ifc.Prefix)
			if err != nil && !errors.Is(err, errNoLeaseTime) { // lease time is only a MUST in the ACK
				s.log.Debug("dhcp: ignoring bad OFFER", "err", err)
				return false
			}
			offer = g
			return true
		})
		if err == nil {
			offerMAC = in.mac
			break
		}
		if ctx.Err() != nil {
			return ack{}, errNoOffer
		}
		if n == 0 {
			s.health.unansweredExchange()
		}
	}
	s.stats.offers.Add(1)
	s.health.answered()

	if !s.ask(offer.Addr, b.key) {
		// Another exchange of ours is requesting this address: a REQUEST
		// for it could only be NAKed.
		if s.canSteer(offer.ServerID) {
			return s.steer(ctx, b, xid, ch, offer, offerMAC, secs)
		}
		return ack{}, &nakError{msg: "offered address already requested by another holder"}
	}
	ok := false
	defer func() {
		if !ok {
			s.unask(offer.Addr, b.key)
		}
	}()
	for n := 0; n < requestSends; n++ {
		if n > 0 {
			s.stats.retransmits.Add(1)
		}
		req := s.message(dhcpv4.MessageTypeRequest, xid, b.clientID, secs(),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.Addr.AsSlice())),
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(offer.ServerID.AsSlice())))
		got := ack{sent: time.Now(), asked: offer.Addr}
		if err := s.tr.send(req, dest{}); err != nil {
			return ack{}, fmt.Errorf("send REQUEST: %w", err)
		}
		in, nak, err := s.awaitAnswer(ctx, ch, s.backoff(n), offer.ServerID, offer.Addr, &got.g)
		if err != nil {
			if ctx.Err() != nil {
				return ack{}, fmt.Errorf("REQUEST for %s: %w", offer.Addr, errNoAck)
			}
			continue
		}
		if nak != nil {
			return ack{}, nak
		}
		s.stats.acks.Add(1)
		got.mac = in.mac
		if got.mac == nil {
			got.mac = offerMAC
		}
		ok = true
		return got, nil
	}
	s.health.unansweredExchange()
	return ack{}, errNoAck
}

var errTimeout = errors.New("timeout")

// await returns the first reply on ch that match accepts, within d.
func (s *Source) await(ctx context.Context, ch chan inbound, d time.Duration, match func(*dhcpv4.DHCPv4) bool) (inbound, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case in := <-ch:
			if match(in.msg) {
				return in, nil
			}
		case <-t.C:
			return inbound{}, errTimeout
		case <-ctx.Done():
			return inbound{}, ctx.Err()
		}
	}
}

// decline tells the server its ACKed address cannot be used.
func (s *Source) decline(b *binding, a ack, why string) {
	s.stats.declines.Add(1)
	xid, _, done := s.register()
	defer done()
	m := s.message(dhcpv4.MessageTypeDecline, xid, b.clientID,
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(a.g.Addr.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(a.g.ServerID.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptMessage(why)))
	if err := s.tr.send(m, dest{}); err != nil { // broadcast: we have no address
		s.log.Warn("dhcp: send DECLINE", "addr", a.g.Addr, "err", err)
	}
}

func (s *Source) sendRelease(b *binding) {
	st := b.state()
	s.sendReleaseFor(b.clientID, b.snapshot().Addr, st.ServerID, st.ServerMAC)
}

// sendReleaseFor unicasts a RELEASE (RFC 2131 4.4.6) to the server.
func (s *Source) sendReleaseFor(cid []byte, addr, server netip.Addr, mac []byte) {
	s.stats.releases.Add(1)
	xid, _, done := s.register()
	defer done()
	m := s.message(dhcpv4.MessageTypeRelease, xid, cid,
		dhcpv4.WithClientIP(addr.AsSlice()),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(server.AsSlice())))
	if err := s.tr.send(m, dest{server: server, mac: mac, src: addr}); err != nil {
		s.log.Warn("dhcp: send RELEASE", "addr", addr, "err", err)
	}
}
