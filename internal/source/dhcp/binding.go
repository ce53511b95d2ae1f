package dhcp

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/ipvirt/ipvirt/internal/lease"
)

// binding is one holder's lease and the goroutine (maintain) that keeps it
// alive through RENEWING and REBINDING.
type binding struct {
	holder lease.Holder
	key    string
	// clientID is the identifier the lease was obtained with, and
	// st.ClientID once bound: derived from key (ClientID) when this
	// holder acquired it, from the persisted State when adopted, the
	// previous holder's when transferred. Every message for the lease
	// carries it.
	clientID []byte

	ctx    context.Context // ends on Release, Lost, Transfer or Close
	cancel context.CancelFunc
	done   chan struct{} // closed when maintain returns
	// prev, for a binding that took over a transferred lease, is closed
	// when the previous binding's maintainer has returned; this one's
	// starts then.
	prev <-chan struct{}

	mu    sync.Mutex
	lease lease.Lease
	st    leaseState
}

func (b *binding) snapshot() lease.Lease {
	b.mu.Lock()
	defer b.mu.Unlock()
	l := b.lease
	l.State = append([]byte(nil), l.State...)
	return l
}

func (b *binding) state() leaseState {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.st
}

// update records a fresh ACK; b.mu must not be held.
func (b *binding) update(g grant, mac []byte, sent time.Time) lease.Lease {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.st
	st.ServerID, st.Bound, st.Lease, st.T1, st.T2, st.Infinite = g.ServerID, sent, g.Lease, g.T1, g.T2, g.Infinite
	if len(mac) == 6 {
		st.ServerMAC = append([]byte(nil), mac...)
	}
	b.st = st
	b.lease.Subnet = g.Subnet
	b.lease.Expiry = time.Time{}
	if !st.Infinite {
		b.lease.Expiry = st.expiry()
	}
	b.lease.State = st.marshal()
	l := b.lease
	l.State = append([]byte(nil), l.State...)
	return l
}

// bind turns an ACK into a held lease and starts maintaining it.
func (s *Source) bind(b *binding, a ack) (lease.Lease, error) {
	b.lease = lease.Lease{Holder: b.holder, Addr: a.g.Addr, Source: Name, Granted: a.sent}
	b.st = leaseState{ClientID: b.clientID}
	l := b.update(a.g, a.mac, a.sent)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return lease.Lease{}, errClosed
	}
	s.startLocked(b)
	return l, nil
}

var errExpired = errors.New("lease expired without renewal")

// maintain walks a bound lease through RFC 2131 4.4.5 until it is
// released, lost or the source closes.
func (s *Source) maintain(b *binding) {
	defer s.wg.Done()
	defer close(b.done)
	if b.prev != nil {
		<-b.prev // cancelled: it returns within an exchange's wait
		if b.ctx.Err() != nil {
			return // released (or closed) before it could start
		}
	}
	if st := b.state(); !st.Infinite && !time.Now().Before(st.expiry()) {
		if !s.reboot(b) {
			return
		}
	}
	for b.ctx.Err() == nil {
		st := b.state()
		if st.Infinite {
			<-b.ctx.Done()
			return
		}
		now := time.Now()
		switch {
		case now.Before(st.t1()):
			_ = sleep(b.ctx, st.t1().Sub(now))
		case now.Before(st.t2()):
			if s.extend(b, renewing, st.t2()) {
				return
			}
		case now.Before(st.expiry()):
			if s.extend(b, rebinding, st.expiry()) {
				return
			}
		default:
			s.stats.expiries.Add(1)
			s.lose(b, errExpired)
			return
		}
	}
}

// How a lease is being extended.
type extendKind int

const (
	renewing extendKind = iota
	rebinding
	rebooting
)

// extend makes one RENEWING (unicast to our server) or REBINDING
// (broadcast) attempt; without an answer it waits until the next attempt
// is due. It reports whether the lease was lost.
func (s *Source) extend(b *binding, kind extendKind, deadline time.Time) bool {
	now := time.Now()
	next := now.Add(max(s.cfg.RenewRetryMin, deadline.Sub(now)/2))
	if next.After(deadline) {
		next = deadline
	}
	ctx, cancel := context.WithDeadline(b.ctx, next)
	defer cancel()
	res := s.extendOnce(ctx, b, kind)
	if res == unanswered || res == ignored {
		<-ctx.Done() // the next attempt is due at next, not before
	}
	return res == lost
}

type outcome int

const (
	unanswered outcome = iota
	ignored            // an answer we could not use
	extended
	lost
)

func (s *Source) extendOnce(ctx context.Context, b *binding, kind extendKind) outcome {
	if s.acquireSlot(ctx) != nil {
		return unanswered
	}
	defer s.releaseSlot()
	st, addr := b.state(), b.snapshot().Addr
	to := dest{server: st.ServerID, mac: st.ServerMAC, src: addr}
	if kind == rebinding {
		to = dest{src: addr}
		s.stats.rebindAttempts.Add(1)
	} else {
		s.stats.renewAttempts.Add(1)
	}
	s.stats.exchanges.Add(1)
	xid, ch, done := s.register()
	defer done()
	sent := time.Now()
	if err := s.tr.send(s.message(dhcpv4.MessageTypeRequest, xid, b.clientID, dhcpv4.WithClientIP(addr.AsSlice())), to); err != nil {
		s.log.Warn("dhcp: send renewal", "holder", b.key, "addr", addr, "rebinding", kind == rebinding, "err", err)
		return unanswered
	}
	// Hold the slot only for a reply's round trip, not the minutes until
	// the next attempt.
	wait, wcancel := context.WithTimeout(ctx, s.cfg.RetransmitBase)
	defer wcancel()
	in, err := s.awaitAckNak(wait, ch)
	if err != nil {
		if b.ctx.Err() == nil {
			s.health.unansweredExchange()
		}
		return unanswered
	}
	return s.answer(b, in, addr, sent, kind)
}

// awaitAckNak waits for an ACK or NAK (from any server: while REBINDING any
// of them may answer).
func (s *Source) awaitAckNak(ctx context.Context, ch chan inbound) (inbound, error) {
	for {
		select {
		case in := <-ch:
			if t := in.msg.MessageType(); t == dhcpv4.MessageTypeAck || t == dhcpv4.MessageTypeNak {
				return in, nil
			}
		case <-ctx.Done():
			return inbound{}, ctx.Err()
		}
	}
}

// answer applies an ACK or NAK to a bound lease.
func (s *Source) answer(b *binding, in inbound, addr netip.Addr, sent time.Time, kind extendKind) outcome {
	s.health.answered()
	if in.msg.MessageType() == dhcpv4.MessageTypeNak {
		s.stats.naks.Add(1)
		s.lose(b, &nakError{msg: in.msg.Message()})
		return lost
	}
	g, err := parseGrant(in.msg, s.ifc.Prefix)
	if err != nil {
		s.log.Warn("dhcp: ignoring bad renewal ACK", "holder", b.key, "err", err)
		return ignored
	}
	s.stats.acks.Add(1)
	if g.Addr != addr {
		s.lose(b, fmt.Errorf("server moved the lease from %s to %s", addr, g.Addr))
		return lost
	}
	s.mu.Lock()
	if s.bindings[b.key] != b {
		s.mu.Unlock()
		return lost // released meanwhile
	}
	l := b.update(g, in.mac, sent)
	s.mu.Unlock()
	switch kind {
	case renewing:
		s.stats.renewals.Add(1)
	case rebinding:
		s.stats.rebinds.Add(1)
	case rebooting:
		s.stats.reboots.Add(1)
	}
	s.log.Debug("dhcp: lease extended", "holder", b.key, "addr", addr, "expiry", l.Expiry, "kind", kind)
	s.ev.Renewed(l)
	return extended
}

// reboot asks for an adopted lease that expired while the daemon was down
// (INIT-REBOOT, RFC 2131 3.2 and 4.3.2): broadcast REQUEST with the old
// address, no server id. It reports whether the lease is bound again.
func (s *Source) reboot(b *binding) bool {
	addr := b.snapshot().Addr
	ctx, cancel := context.WithTimeout(b.ctx, s.cfg.LeaseWait)
	defer cancel()
	if s.acquireSlot(ctx) != nil {
		if b.ctx.Err() == nil {
			s.lose(b, fmt.Errorf("%w while the daemon was down; no exchange slot to ask it back", errExpired))
		}
		return false
	}
	defer s.releaseSlot()
	s.stats.exchanges.Add(1)
	xid, ch, done := s.register()
	defer done()
	for n := 0; n < 4 && ctx.Err() == nil; n++ {
		if n > 0 {
			s.stats.retransmits.Add(1)
		}
		sent := time.Now()
		m := s.message(dhcpv4.MessageTypeRequest, xid, b.clientID,
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(addr.AsSlice())))
		if err := s.tr.send(m, dest{}); err != nil {
			s.log.Warn("dhcp: send INIT-REBOOT", "holder", b.key, "err", err)
		}
		wait, wcancel := context.WithTimeout(ctx, s.backoff(n))
		in, err := s.awaitAckNak(wait, ch)
		wcancel()
		if err != nil {
			continue
		}
		switch s.answer(b, in, addr, sent, rebooting) {
		case extended:
			return true
		case lost:
			return false
		}
	}
	if b.ctx.Err() == nil {
		s.health.unansweredExchange()
		s.lose(b, fmt.Errorf("%w while the daemon was down; no answer to INIT-REBOOT", errExpired))
	}
	return false
}

// lose drops b and reports it, unless it was released meanwhile.
func (s *Source) lose(b *binding, reason error) {
	s.mu.Lock()
	if s.bindings[b.key] != b {
		s.mu.Unlock()
		return
	}
	addr := b.snapshot().Addr
	s.dropLocked(b)
	s.mu.Unlock()
	s.stats.lost.Add(1)
	s.log.Info("dhcp: lease lost", "holder", b.key, "addr", addr, "reason", reason)
	s.ev.Lost(b.holder, addr, reason)
}
