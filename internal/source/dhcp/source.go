// Package dhcp is ipvirt's DHCP address source: one DHCPv4 lease per
// holder, each its own DHCP client (client identifier, see ClientID) on the
// adapter's MAC, through the full RFC 2131 life: DISCOVER/OFFER/REQUEST/ACK
// with back-off, RFC 5227 ARP probe and DECLINE, RENEW at T1 (unicast),
// REBIND at T2 (broadcast), expiry, RELEASE.
//
// Messages go either broadcast on the adapter through a packet socket
// (default; needs CAP_NET_RAW), or, with Config.Server set, unicast through
// a relay address as a BOOTP relay agent would (routed networks, tests).
//
// The source never touches interface addresses and never writes to disk:
// the manager adds the VIP to the adapter (which is also what lets a server
// unicast renewal answers to it) and persists Lease.State.
package dhcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/source"
)

// Name is the source name in config and in Lease.Source.
const Name = "dhcp"

// Source is the DHCP address source. It implements source.Source.
type Source struct {
	cfg    Config
	ifc    Interface
	mac    net.HardwareAddr
	hostID []byte
	ev     source.Events
	log    *slog.Logger

	tr    transport
	arp   *arpProber // nil when probing is off
	slots chan struct{}

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	pmu     sync.Mutex
	pending map[dhcpv4.TransactionID]chan inbound

	mu       sync.Mutex
	closed   bool
	bindings map[string]*binding      // by holder key
	addrs    map[netip.Addr]string    // address → holder key, from ACK on (probing included)
	asking   map[netip.Addr]string    // address → holder key, while an exchange REQUESTs it
	refused  map[netip.Addr]time.Time // steered REQUESTs NAKed: not again until then
	noSteer  map[netip.Addr]bool      // servers that ignored a steered REQUEST

	stats  counters
	health health
}

var (
	_ source.Source          = (*Source)(nil)
	_ source.ClientIDer      = (*Source)(nil)
	_ source.MetricsProvider = (*Source)(nil)
	_ source.Decliner        = (*Source)(nil)
	_ source.Claimer         = (*Source)(nil)
	_ source.Transferer      = (*Source)(nil)
)

// New opens the source's sockets on ifc. hostID is a stable id of this host
// (e.g. /etc/machine-id); it and the holder key make each client id. ev may
// be nil (events dropped), log may be nil.
//
// All sockets are open when New returns, so calling it on an OS thread
// switched into a network namespace runs the source in that namespace.
func New(cfg Config, ifc Interface, hostID []byte, ev source.Events, log *slog.Logger) (*Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults()
	if len(hostID) == 0 {
		return nil, errors.New("dhcp: empty host id")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if ev == nil {
		ev = nopEvents{}
	}
	s := &Source{
		cfg:      cfg,
		ifc:      ifc,
		mac:      ifc.MAC,
		hostID:   append([]byte(nil), hostID...),
		ev:       ev,
		log:      log.With("source", Name, "interface", ifc.Name),
		slots:    make(chan struct{}, cfg.MaxInflight),
		pending:  map[dhcpv4.TransactionID]chan inbound{},
		bindings: map[string]*binding{},
		addrs:    map[netip.Addr]string{},
		asking:   map[netip.Addr]string{},
		refused:  map[netip.Addr]time.Time{},
		noSteer:  map[netip.Addr]bool{},
	}
	if len(s.mac) != 6 || isZero(s.mac) {
		s.mac = fallbackMAC(hostID)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())

	var err error
	if cfg.Server != "" {
		server, _ := cfg.serverAddr() // checked by Validate
		giaddr := ifc.Prefix.Addr()
		if cfg.RelayAddress != "" {
			giaddr = netip.MustParseAddr(cfg.RelayAddress)
		}
		if !giaddr.Is4() || giaddr.IsUnspecified() {
			return nil, fmt.Errorf("dhcp: relay mode needs relay_address or an IPv4 address on %s", ifc.Name)
		}
		s.tr, err = newRelayTransport(server, giaddr, cfg.ServerPort, s.dispatch)
	} else {
		if ifc.Index <= 0 {
			return nil, fmt.Errorf("dhcp: interface %q: no index (broadcast mode needs the adapter)", ifc.Name)
		}
		s.tr, err = newRawTransport(ifc, cfg.ClientPort, cfg.ServerPort, s.dispatch)
	}
	if err != nil {
		return nil, err
	}
	if *cfg.ARPProbe {
		if ifc.Index <= 0 {
			s.tr.close()
			return nil, fmt.Errorf("dhcp: arp_probe needs an adapter with an index (interface %q)", ifc.Name)
		}
		if s.arp, err = newARPProber(ifc, s.mac); err != nil {
			s.tr.close()
			return nil, err
		}
	}
	return s, nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

type nopEvents struct{}

func (nopEvents) Renewed(lease.Lease)                  {}
func (nopEvents) Lost(lease.Holder, netip.Addr, error) {}

// Name implements source.Source.
func (s *Source) Name() string { return Name }

// ClientID returns the client identifier the source uses for h: that of
// the lease h holds, which for a lease transferred to h (Transfer) is the
// one it was obtained with, else the one derived from h's key (ClientID),
// with which h would acquire (a stock place acquires under a fresh one
// each time: StockClientID).
func (s *Source) ClientID(h lease.Holder) []byte {
	key := h.Key()
	s.mu.Lock()
	b := s.bindings[key]
	s.mu.Unlock()
	if b != nil {
		return append([]byte(nil), b.clientID...)
	}
	return ClientID(s.hostID, key)
}

// Acquire obtains a lease for h: DISCOVER, take the first usable OFFER,
// REQUEST, ACK, probe, until one sticks or lease_wait (or ctx) runs out.
func (s *Source) Acquire(ctx context.Context, h lease.Holder) (lease.Lease, error) {
	key := h.Key()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return lease.Lease{}, errClosed
	}
	if b := s.bindings[key]; b != nil {
		s.mu.Unlock()
		return b.snapshot(), nil
	}
	s.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, s.cfg.LeaseWait)
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()

	cid := ClientID(s.hostID, key)
	if h.Session.Stock() {
		cid = StockClientID(s.hostID, key)
	}
	b := &binding{holder: h, key: key, clientID: cid}
	l, err := s.obtain(ctx, b)
	if err != nil {
		s.stats.timeouts.Add(1)
		if s.ctx.Err() != nil {
			return lease.Lease{}, errClosed
		}
		return lease.Lease{}, fmt.Errorf("dhcp: acquire %s: %w: %w", key, source.ErrExhausted, err)
	}
	return l, nil
}

// Adopt resumes a lease persisted before a restart: renew at its T1 as if
// the daemon had never stopped. A lease that expired meanwhile is asked
// back with INIT-REBOOT (RFC 2131 3.2); the answer comes as Renewed or Lost.
func (s *Source) Adopt(l lease.Lease) error {
	if l.Source != Name {
		return fmt.Errorf("dhcp: adopt %s: lease from source %q", l.Holder, l.Source)
	}
	if !l.Addr.Is4() {
		return fmt.Errorf("dhcp: adopt %s: address %s is not IPv4", l.Holder, l.Addr)
	}
	st, err := parseState(l.State)
	if err != nil {
		return fmt.Errorf("dhcp: adopt %s %s: %w", l.Holder, l.Addr, err)
	}
	key := l.Holder.Key()
	b := &binding{holder: l.Holder, key: key, clientID: st.ClientID}
	b.lease, b.st = l, st
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errClosed
	}
	if old := s.bindings[key]; old != nil {
		return fmt.Errorf("dhcp: adopt %s: already holds %s", key, old.snapshot().Addr)
	}
	if other, ok := s.addrs[l.Addr]; ok {
		return fmt.Errorf("dhcp: adopt %s: %s is already held by %s", key, l.Addr, other)
	}
	s.startLocked(b)
	return nil
}

// Claim implements source.Claimer: h is found using a (labelled on the
// adapter, its processes' sockets bound to it) although its lease record
// was lost. Only the server can say whether a is h's, and it can: h's
// client id derives from the host id and h alone, the same as when the
// lease was granted. The binding starts expired, so its maintainer asks
// for a back at once with INIT-REBOOT (RFC 2131 3.2), as for a lease that
// expired while the daemon was down: the server's ACK makes it h's again
// (Renewed, with the server's real timers), a NAK or no answer loses it
// (Lost) and the manager withdraws it. Until then the lease expires after
// lease_wait. Its state names no server yet (255.255.255.255, never sent
// to: INIT-REBOOT broadcasts), so that a daemon killed before the answer
// asks again the same way. A lease that had been transferred to h
// (Transfer) is the server's under another client id, that of the holder
// that obtained it: the server NAKs, and the claim is Lost like any other
// it does not recognise.
func (s *Source) Claim(h lease.Holder, a netip.Addr) (lease.Lease, error) {
	if !a.Is4() {
		return lease.Lease{}, fmt.Errorf("dhcp: claim %s for %s: not an IPv4 address", a, h)
	}
	key := h.Key()
	now := time.Now()
	st := leaseState{ClientID: ClientID(s.hostID, key), ServerID: netip.AddrFrom4([4]byte{255, 255, 255, 255}),
		Bound: now.Add(-time.Hour), Lease: time.Second, T1: time.Second / 2, T2: time.Second * 7 / 8}
	subnet, _ := a.Prefix(s.ifc.Prefix.Bits()) // the adapter's, until the server says
	l := lease.Lease{Holder: h, Addr: a, Subnet: subnet, Source: Name, Granted: now,
		Expiry: now.Add(s.cfg.LeaseWait), State: st.marshal()}
	b := &binding{holder: h, key: key, clientID: st.ClientID, lease: l, st: st}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return lease.Lease{}, errClosed
	}
	if old := s.bindings[key]; old != nil {
		return lease.Lease{}, fmt.Errorf("dhcp: claim %s for %s: already holds %s", a, key, old.snapshot().Addr)
	}
	if other, ok := s.addrs[a]; ok {
		return lease.Lease{}, fmt.Errorf("dhcp: claim %s for %s: already held by %s", a, key, other)
	}
	s.startLocked(b)
	return b.snapshot(), nil
}

// Transfer implements source.Transferer: l passes from l.Holder to to
// with nothing sent. The server still sees the client that obtained it:
// the lease keeps its client identifier (in its State, persisted), under
// which it is renewed, rebound and released from now on, and with which
// Adopt resumes it after a restart. Events for it name to.
//
// The holder's binding is replaced, not changed: a new one for to takes
// over the lease as it stands and its maintainer starts once the old one
// has stopped (it is cancelled here), so one lease never has two
// maintainers, and an answer the old one was waiting for when it stopped
// is dropped (the new one asks again if that was a renewal due). A
// Renewed event the old maintainer had already begun to deliver may still
// arrive naming l.Holder, as after Release.
func (s *Source) Transfer(l lease.Lease, to lease.Holder) (lease.Lease, error) {
	from, key := l.Holder.Key(), to.Key()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return lease.Lease{}, errClosed
	}
	old := s.bindings[from]
	if old == nil || old.snapshot().Addr != l.Addr {
		return lease.Lease{}, fmt.Errorf("dhcp: transfer %s from %s to %s: %s does not hold it", l.Addr, from, key, from)
	}
	if b := s.bindings[key]; b != nil {
		return lease.Lease{}, fmt.Errorf("dhcp: transfer %s from %s to %s: %s already holds %s", l.Addr, from, key, key, b.snapshot().Addr)
	}
	// Renewals change a binding only under s.mu, after checking that it
	// is still registered: old's lease and state are final from here.
	old.mu.Lock()
	nl, st := old.lease, old.st
	old.mu.Unlock()
	nl.Holder = to
	nl.State = append([]byte(nil), nl.State...)
	b := &binding{holder: to, key: key, clientID: old.clientID, lease: nl, st: st, prev: old.done}
	s.dropLocked(old)
	s.startLocked(b)
	s.log.Debug("dhcp: lease transferred", "from", from, "to", key, "addr", l.Addr)
	return b.snapshot(), nil
}

// Release ends h's lease and tells the server (DHCPRELEASE) in the
// background.
func (s *Source) Release(l lease.Lease) {
	s.end(l, s.sendRelease)
}

// Decline implements source.Decliner: the manager found sockets bound to
// an address the server has just given (a holder whose lease record was
// lost still uses it). The binding is dropped and the server told with a
// DECLINE, as for an ARP conflict, so that it offers another address.
func (s *Source) Decline(l lease.Lease, why string) {
	s.end(l, func(b *binding) {
		st := b.state()
		s.log.Warn("dhcp: address in use on this host; declining", "holder", l.Holder.Key(), "addr", l.Addr, "why", why)
		// The server learns that it is in use, not by whom.
		s.decline(b, ack{g: grant{Addr: l.Addr, ServerID: st.ServerID}}, "address in use on this host")
	})
}

// end drops l's binding, if it is still the one holding l's address, and
// then tells the server (tell) in the background, once the binding's
// maintainer has stopped sending for it.
func (s *Source) end(l lease.Lease, tell func(*binding)) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	b := s.bindings[l.Holder.Key()]
	if b == nil || b.snapshot().Addr != l.Addr {
		s.mu.Unlock()
		return // already lost, or not ours: nothing to give back
	}
	s.dropLocked(b)
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		<-b.done
		tell(b)
	}()
}

// Stats implements source.Source. A DHCP source cannot know its size.
func (s *Source) Stats() source.Stats {
	s.mu.Lock()
	used := len(s.bindings)
	s.mu.Unlock()
	ok, why := s.health.status()
	return source.Stats{Size: -1, Used: used, Healthy: ok, Health: why}
}

// Counters returns the running totals.
func (s *Source) Counters() Counters {
	s.mu.Lock()
	held := len(s.bindings)
	s.mu.Unlock()
	return s.stats.snapshot(held)
}

// Close stops every timer and socket without releasing any lease: the
// server keeps them, and a new Source can Adopt them.
func (s *Source) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	err := s.tr.close()
	if s.arp != nil {
		err = errors.Join(err, s.arp.close())
	}
	return err
}

// startLocked registers b and starts its maintainer; s.mu is held.
func (s *Source) startLocked(b *binding) {
	b.ctx, b.cancel = context.WithCancel(s.ctx)
	b.done = make(chan struct{})
	s.bindings[b.key] = b
	s.addrs[b.lease.Addr] = b.key
	s.wg.Add(1)
	go s.maintain(b)
}

// dropLocked forgets b and stops its maintainer; s.mu is held.
func (s *Source) dropLocked(b *binding) {
	if s.bindings[b.key] == b {
		delete(s.bindings, b.key)
	}
	if a := b.snapshot().Addr; s.addrs[a] == b.key {
		delete(s.addrs, a)
	}
	b.cancel()
}

// claim reserves a for key unless another holder has it.
func (s *Source) claim(a netip.Addr, key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if other, ok := s.addrs[a]; ok && other != key {
		return false
	}
	s.addrs[a] = key
	return true
}

func (s *Source) unclaim(a netip.Addr, key string) {
	s.mu.Lock()
	if s.addrs[a] == key {
		delete(s.addrs, a)
	}
	s.mu.Unlock()
}

// acquireSlot waits for a max_inflight slot.
func (s *Source) acquireSlot(ctx context.Context) error {
	select {
	case s.slots <- struct{}{}:
		s.stats.inflight.Add(1)
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Source) releaseSlot() {
	s.stats.inflight.Add(-1)
	<-s.slots
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
