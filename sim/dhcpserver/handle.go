package dhcpserver

import (
	"net"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// serve reads and decides on each packet in arrival order, as Kea, dnsmasq
// and dhcpd do. server4.Server.Serve runs a goroutine per packet instead:
// a REQUEST naming another server could then be decided before its own
// DISCOVER, find no offer to drop, and leave the late OFFER holding the
// address for offer_hold. Only the (latency-delayed) send is concurrent.
func (s *Server) serve(conn net.PacketConn) {
	buf := make([]byte, 4096)
	for {
		n, peer, err := conn.ReadFrom(buf)
		if err != nil {
			return // closed
		}
		m, err := dhcpv4.FromBytes(buf[:n])
		if err != nil {
			s.log.Debug("dhcpserver: undecodable packet", "from", peer.String(), "err", err)
			continue
		}
		up, ok := peer.(*net.UDPAddr)
		if !ok {
			continue
		}
		if up.IP == nil || up.IP.To4().Equal(net.IPv4zero) {
			// A client without an address is reached by broadcast.
			up = &net.UDPAddr{IP: net.IPv4bcast, Port: up.Port}
		}
		s.handle(conn, up, m)
	}
}

// handle decides on one packet and sends the answer, after the configured
// latency, from its own goroutine.
func (s *Server) handle(conn net.PacketConn, peer net.Addr, m *dhcpv4.DHCPv4) {
	if m.OpCode != dhcpv4.OpcodeBootRequest {
		return
	}
	now := time.Now()
	s.mu.Lock()
	s.counters.Received++
	switch {
	case s.offline || s.inOfflineWindow(now):
		s.counters.Ignored++
		s.notify()
		s.mu.Unlock()
		return
	case s.cfg.DropRate > 0 && s.rng.Float64() < s.cfg.DropRate:
		s.counters.Drops++
		s.notify()
		s.mu.Unlock()
		return
	}
	reply := s.decide(m, now)
	s.notify()
	s.mu.Unlock()

	if reply == nil {
		return
	}
	dst := s.destination(m, reply, peer)
	send := func() {
		if _, err := conn.WriteTo(reply.ToBytes(), dst); err != nil {
			s.log.Warn("dhcpserver: send failed", "to", dst.String(), "type", reply.MessageType().String(), "err", err)
		}
	}
	if s.cfg.Latency <= 0 {
		send()
		return
	}
	go func() {
		time.Sleep(s.cfg.Latency)
		send()
	}()
}

func (s *Server) inOfflineWindow(now time.Time) bool {
	since := now.Sub(s.start)
	for _, w := range s.cfg.Offline {
		if w.contains(since) {
			return true
		}
	}
	return false
}

// decide updates the table and returns the reply, or nil to stay silent.
// s.mu is held.
func (s *Server) decide(m *dhcpv4.DHCPv4, now time.Time) *dhcpv4.DHCPv4 {
	client := ClientKey(m)
	switch m.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		s.counters.Discovers++
		req, _ := netip.AddrFromSlice(m.RequestedIPAddress().To4())
		var addr netip.Addr
		var ok bool
		if s.cfg.OfferByMAC {
			addr, ok = s.table.lowestFree(client, now)
		} else {
			addr, ok = s.table.offer(client, req, s.cfg.OfferHold, now)
		}
		if !ok {
			s.counters.NoFree++
			s.log.Debug("dhcpserver: no free address", "client", client)
			return nil
		}
		s.remember(client, m)
		s.counters.Offers++
		s.offered[client] = addr
		return s.reply(m, dhcpv4.MessageTypeOffer, addr)

	case dhcpv4.MessageTypeRequest:
		return s.request(client, m, now)

	case dhcpv4.MessageTypeDecline:
		addr, _ := netip.AddrFromSlice(m.RequestedIPAddress().To4())
		if sid := m.ServerIdentifier(); sid != nil && !sid.Equal(s.serverID.AsSlice()) {
			return nil
		}
		var until time.Time
		if s.cfg.DeclineHold > 0 {
			until = now.Add(s.cfg.DeclineHold)
		}
		if s.table.decline(client, addr, until) {
			s.counters.Declines++
			s.log.Info("dhcpserver: address declined", "client", client, "addr", addr)
		}
		return nil

	case dhcpv4.MessageTypeRelease:
		addr, _ := netip.AddrFromSlice(m.ClientIPAddr.To4())
		if s.table.release(client, addr, now) {
			s.counters.Releases++
		}
		return nil

	case dhcpv4.MessageTypeInform:
		s.counters.Informs++
		r := s.reply(m, dhcpv4.MessageTypeAck, netip.IPv4Unspecified())
		if r == nil {
			return nil
		}
		r.Options.Del(dhcpv4.OptionIPAddressLeaseTime)
		r.Options.Del(dhcpv4.OptionRenewTimeValue)
		r.Options.Del(dhcpv4.OptionRebindingTimeValue)
		return r
	}
	return nil
}

func (s *Server) request(client string, m *dhcpv4.DHCPv4, now time.Time) *dhcpv4.DHCPv4 {
	s.counters.Requests++
	s.requestsBy[client]++
	sid := m.ServerIdentifier()
	if sid != nil && !sid.Equal(s.serverID.AsSlice()) {
		// SELECTING with another server's offer: ours is declined.
		s.table.dropOffer(client, now)
		s.counters.OtherServer++
		return nil
	}
	ciaddr, _ := netip.AddrFromSlice(m.ClientIPAddr.To4())
	renewing := ciaddr.IsValid() && !ciaddr.IsUnspecified()
	addr := ciaddr
	if !renewing {
		addr, _ = netip.AddrFromSlice(m.RequestedIPAddress().To4())
		if s.cfg.IgnoreUnoffered && sid != nil && s.offered[client] != addr {
			s.counters.Unoffered++
			return nil
		}
	}
	if s.shouldNAK(client) || !s.table.bind(client, addr, s.cfg.LeaseTime, renewing, now) {
		s.counters.Naks++
		s.log.Debug("dhcpserver: NAK", "client", client, "addr", addr)
		nak := s.reply(m, dhcpv4.MessageTypeNak, netip.IPv4Unspecified())
		if nak == nil {
			return nil
		}
		for _, o := range []dhcpv4.OptionCode{dhcpv4.OptionIPAddressLeaseTime, dhcpv4.OptionRenewTimeValue,
			dhcpv4.OptionRebindingTimeValue, dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter} {
			nak.Options.Del(o)
		}
		nak.SetBroadcast() // RFC 2131 4.3.2: NAKs via a relay set the broadcast bit
		return nak
	}
	s.remember(client, m)
	s.counters.Acks++
	if renewing {
		s.counters.Renewals++
	}
	return s.reply(m, dhcpv4.MessageTypeAck, addr)
}

// shouldNAK applies the NAK knobs; s.mu is held.
func (s *Server) shouldNAK(client string) bool {
	switch {
	case s.nakNext > 0:
		s.nakNext--
		return true
	case s.nakClients[client]:
		return true
	case s.requestsBy[client] <= s.cfg.NAKFirst:
		return true
	case s.cfg.NAKRate > 0 && s.rng.Float64() < s.cfg.NAKRate:
		return true
	}
	return false
}

// remember records what the client told about itself, for the lease table.
func (s *Server) remember(client string, m *dhcpv4.DHCPv4) {
	e := s.table.entry(client)
	e.MAC = append(net.HardwareAddr(nil), m.ClientHWAddr...)
	e.Hostname = m.HostName()
	e.VendorClass = m.ClassIdentifier()
}

func (s *Server) reply(m *dhcpv4.DHCPv4, typ dhcpv4.MessageType, yiaddr netip.Addr) *dhcpv4.DHCPv4 {
	t1, t2 := s.cfg.timers()
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(typ),
		dhcpv4.WithYourIP(yiaddr.AsSlice()),
		dhcpv4.WithServerIP(s.serverID.AsSlice()),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(s.serverID.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(time.Duration(secs(s.cfg.LeaseTime)) * time.Second)),
		dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(time.Duration(secs(t1)) * time.Second)),
		dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(time.Duration(secs(t2)) * time.Second)),
		dhcpv4.WithOption(dhcpv4.OptSubnetMask(s.mask)),
	}
	if s.cfg.Router.IsValid() {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRouter(s.cfg.Router.AsSlice())))
	}
	r, err := dhcpv4.NewReplyFromRequest(m, mods...)
	if err != nil { // only fails when the system RNG does
		s.log.Error("dhcpserver: build reply", "err", err)
		return nil
	}
	// Replies carry the request's xid, not NewReplyFromRequest's fresh one.
	r.TransactionID = m.TransactionID
	return r
}

// destination follows RFC 2131 4.1: relay agent first, then the client's
// own address, else broadcast (this server cannot unicast to a client
// without an address: it has no raw socket for chaddr).
func (s *Server) destination(m, reply *dhcpv4.DHCPv4, peer net.Addr) *net.UDPAddr {
	if gi := m.GatewayIPAddr.To4(); gi != nil && !gi.IsUnspecified() {
		port := dhcpv4.ServerPort
		if u, ok := peer.(*net.UDPAddr); ok && u.Port != 0 {
			port = u.Port // RFC 8357: answer the relay's source port
		}
		return &net.UDPAddr{IP: gi, Port: port}
	}
	if ci := m.ClientIPAddr.To4(); ci != nil && !ci.IsUnspecified() && reply.MessageType() != dhcpv4.MessageTypeNak {
		return &net.UDPAddr{IP: ci, Port: s.cfg.ClientPort}
	}
	return &net.UDPAddr{IP: net.IPv4bcast, Port: s.cfg.ClientPort}
}
