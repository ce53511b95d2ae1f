package dhcp

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/ipvirt/ipvirt/internal/pool"
)

// Offer steering.
//
// Every holder's exchange leaves from the adapter's hardware address, each
// with its own client id. dnsmasq picks the address it offers from a hash
// of chaddr alone and keeps no record of an offer, so concurrent exchanges
// from one host are all offered the same address: the first REQUEST wins
// and every other one is NAKed ("address in use") and starts again, one
// winner per round. With dnsmasq's default ping check each round also
// costs a 3 s ICMP wait during which it answers no DHCP at all, so five
// logons took 4 to 32 s and fifty never converged within lease_wait.
//
// A REQUEST for an address another of our exchanges is already requesting,
// or that another of our holders holds, can only be NAKed. Instead of
// sending it, the exchange requests the nearest address around the offer
// that no exchange of ours is asking for, from the same server, under the
// same transaction. A server that keeps no offers (dnsmasq, Kea) ACKs a
// free address in its range; a NAK (in use by another client, or outside
// the range) marks that address refused for refusedFor, shared by all
// exchanges, and the next nearest one is tried. After steerTries NAKs the
// exchange starts over with a DISCOVER.
//
// This departs from RFC 2131 4.3.2, whose SELECTING REQUEST repeats the
// offered yiaddr, and it skips the server's own ping check of the steered
// address. So it is done only with the RFC 5227 ARP probe on (the default),
// which checks every address before it is handed out; and a server that
// does not answer a steered REQUEST within one retransmission wait is not
// steered again. chaddr stays the adapter's address, so DHCP snooping and
// IP source guard see what they see without steering: one MAC, one port,
// one binding per ACKed address.
const (
	steerTries = 8
	refusedFor = time.Minute
	// steerSpan bounds the search around the offer, so a /8 does not make
	// picking a candidate walk millions of addresses.
	steerSpan = 1024
)

// ask records that key's exchange is about to REQUEST a: false if another
// exchange of ours is requesting it. (An address another holder already
// holds is REQUESTed anyway: the ACK is then DECLINEd, which tells a server
// that handed it out twice, as a second server with an overlapping range
// does, to stop offering it.)
func (s *Source) ask(a netip.Addr, key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.askLocked(a, key)
}

func (s *Source) askLocked(a netip.Addr, key string) bool {
	if other, ok := s.asking[a]; ok && other != key {
		return false
	}
	s.asking[a] = key
	return true
}

func (s *Source) unask(a netip.Addr, key string) {
	s.mu.Lock()
	if s.asking[a] == key {
		delete(s.asking, a)
	}
	s.mu.Unlock()
}

// canSteer reports whether a collision on an offer from server may be
// steered around.
func (s *Source) canSteer(server netip.Addr) bool {
	if s.arp == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.noSteer[server]
}

// pickNear reserves for key the free address nearest to offered (offered+1,
// offered-1, offered+2, ...) inside subnet: not the network or broadcast
// address, not the server, not held, asked for or recently refused.
func (s *Source) pickNear(offered netip.Addr, subnet netip.Prefix, server netip.Addr, key string) (netip.Addr, bool) {
	base := pool.V4(offered)
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	for d := 1; d <= steerSpan; d++ {
		for _, sign := range [2]int64{1, -1} {
			n := int64(base) + sign*int64(d)
			if n < 0 || n > 0xffffffff {
				continue
			}
			a := pool.FromV4(uint32(n))
			if !subnet.Contains(a) || a == subnet.Masked().Addr() || a == pool.Broadcast(subnet) || a == server {
				continue
			}
			if until, ok := s.refused[a]; ok {
				if now.Before(until) {
					continue
				}
				delete(s.refused, a)
			}
			if _, held := s.addrs[a]; !held && s.askLocked(a, key) {
				return a, true
			}
		}
	}
	return netip.Addr{}, false
}

func (s *Source) refuse(a netip.Addr) {
	s.mu.Lock()
	s.refused[a] = time.Now().Add(refusedFor)
	s.mu.Unlock()
}

// steer requests addresses near a colliding offer under the exchange's xid
// (see the comment at the top). The returned ack's address is asked for by
// b; the caller claims it and then unasks it.
func (s *Source) steer(ctx context.Context, b *binding, xid dhcpv4.TransactionID, ch chan inbound, offer grant, offerMAC []byte, secs func() dhcpv4.Modifier) (ack, error) {
	var lastNAK error = &nakError{msg: "offered address already requested by another holder"}
	for range steerTries {
		cand, ok := s.pickNear(offer.Addr, offer.Subnet, offer.ServerID, b.key)
		if !ok {
			return ack{}, lastNAK
		}
		s.stats.steered.Add(1)
		req := s.message(dhcpv4.MessageTypeRequest, xid, b.clientID, secs(),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(cand.AsSlice())),
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(offer.ServerID.AsSlice())))
		got := ack{sent: time.Now()}
		if err := s.tr.send(req, dest{}); err != nil {
			s.unask(cand, b.key)
			return ack{}, fmt.Errorf("send REQUEST: %w", err)
		}
		in, nak, err := s.awaitAnswer(ctx, ch, s.backoff(0), offer.ServerID, cand, &got.g)
		switch {
		case err != nil:
			s.unask(cand, b.key)
			if ctx.Err() == nil {
				s.mu.Lock()
				s.noSteer[offer.ServerID] = true
				s.mu.Unlock()
				s.log.Warn("dhcp: server did not answer a REQUEST for an address it had not offered; not steering around its duplicate offers again",
					"server", offer.ServerID, "addr", cand)
			}
			return ack{}, fmt.Errorf("REQUEST for %s: %w", cand, errNoAck)
		case nak != nil:
			s.stats.naks.Add(1)
			s.refuse(cand)
			s.unask(cand, b.key)
			lastNAK = nak
			continue
		}
		s.stats.acks.Add(1)
		got.mac = in.mac
		if got.mac == nil {
			got.mac = offerMAC
		}
		got.asked = cand
		return got, nil
	}
	return ack{}, lastNAK
}

// awaitAnswer waits up to d for server's ACK of addr (parsed into g) or its
// NAK.
func (s *Source) awaitAnswer(ctx context.Context, ch chan inbound, d time.Duration, server, addr netip.Addr, g *grant) (inbound, *nakError, error) {
	var nak *nakError
	in, err := s.await(ctx, ch, d, func(m *dhcpv4.DHCPv4) bool {
		if sid, ok := optAddr(m, dhcpv4.OptionServerIdentifier); !ok || sid != server {
			return false // an answer from a server we did not choose
		}
		switch m.MessageType() {
		case dhcpv4.MessageTypeNak:
			nak = &nakError{msg: m.Message()}
			return true
		case dhcpv4.MessageTypeAck:
			parsed, err := parseGrant(m, s.ifc.Prefix)
			if err != nil || parsed.Addr != addr {
				s.log.Debug("dhcp: ignoring bad ACK", "err", err, "addr", parsed.Addr)
				return false
			}
			*g = parsed
			return true
		}
		return false
	})
	return in, nak, err
}
