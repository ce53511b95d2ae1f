package dhcpserver

import (
	"net"
	"net/netip"
	"slices"
	"time"
)

// Lease is one row of the server's lease table.
type Lease struct {
	// Client is the table key: "id:<hex option 61>" or "hw:<chaddr>".
	Client      string
	MAC         net.HardwareAddr
	Addr        netip.Addr
	Expiry      time.Time
	Hostname    string
	VendorClass string
}

// entry is what the server remembers about one client. Remembering
// released and expired clients is what lets a client get its old address
// back, as real servers do.
type entry struct {
	Lease
	bound      bool      // ACKed; claims Addr until Expiry
	offerUntil time.Time // offered, not ACKed; claims Addr until then
}

// live reports whether e currently keeps its address from other clients.
func (e *entry) live(now time.Time) bool {
	return (e.bound && now.Before(e.Expiry)) || now.Before(e.offerUntil)
}

// table is the address allocator. Not safe for concurrent use; Server
// holds its lock.
type table struct {
	start, end netip.Addr
	reserved   map[netip.Addr]bool // server id, router: never handed out
	clients    map[string]*entry
	byAddr     map[netip.Addr]*entry
	declined   map[netip.Addr]time.Time // zero time: until restart
}

func newTable(start, end netip.Addr, reserved ...netip.Addr) *table {
	t := &table{
		start: start, end: end,
		reserved: map[netip.Addr]bool{},
		clients:  map[string]*entry{},
		byAddr:   map[netip.Addr]*entry{},
		declined: map[netip.Addr]time.Time{},
	}
	for _, a := range reserved {
		if a.IsValid() {
			t.reserved[a] = true
		}
	}
	return t
}

func (t *table) inRange(a netip.Addr) bool {
	return a.Is4() && !a.Less(t.start) && !t.end.Less(a)
}

// usable reports whether client may have a.
func (t *table) usable(client string, a netip.Addr, now time.Time) bool {
	if !t.inRange(a) || t.reserved[a] {
		return false
	}
	if until, ok := t.declined[a]; ok && (until.IsZero() || now.Before(until)) {
		return false
	}
	e := t.byAddr[a]
	return e == nil || e.Client == client || !e.live(now)
}

func (t *table) entry(client string) *entry {
	e := t.clients[client]
	if e == nil {
		e = &entry{Lease: Lease{Client: client}}
		t.clients[client] = e
	}
	return e
}

// claim points a at e, dropping e's claim on any other address.
func (t *table) claim(e *entry, a netip.Addr) {
	if e.Addr != a && t.byAddr[e.Addr] == e {
		delete(t.byAddr, e.Addr)
	}
	e.Addr = a
	t.byAddr[a] = e
}

// offer picks an address for client: its current lease, then its previous
// address, then the one it asked for, then the first free one.
func (t *table) offer(client string, requested netip.Addr, hold time.Duration, now time.Time) (netip.Addr, bool) {
	e := t.entry(client)
	if e.bound && now.Before(e.Expiry) && t.usable(client, e.Addr, now) {
		return e.Addr, true
	}
	pick := netip.Addr{}
	for _, a := range []netip.Addr{e.Addr, requested} {
		if a.IsValid() && t.usable(client, a, now) {
			pick = a
			break
		}
	}
	// Like real servers, hand out never-used addresses before ones another
	// client held last, so that clients usually get their old one back.
	for pass := 0; pass < 2 && !pick.IsValid(); pass++ {
		for a := t.start; t.inRange(a); a = a.Next() {
			if !t.usable(client, a, now) {
				continue
			}
			if e := t.byAddr[a]; pass == 0 && e != nil && e.Client != client {
				continue
			}
			pick = a
			break
		}
	}
	if !pick.IsValid() {
		return netip.Addr{}, false
	}
	e.bound = false
	e.offerUntil = now.Add(hold)
	t.claim(e, pick)
	return pick, true
}

// lowestFree is the lowest address client may have, reserving nothing.
func (t *table) lowestFree(client string, now time.Time) (netip.Addr, bool) {
	for a := t.start; t.inRange(a); a = a.Next() {
		if t.usable(client, a, now) {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// dropOffer forgets an outstanding offer: the client chose another server.
func (t *table) dropOffer(client string, now time.Time) {
	if e := t.clients[client]; e != nil && !e.bound {
		e.offerUntil = time.Time{}
	}
}

// bind commits a lease for client on a. renewing means the client already
// uses a (ciaddr set): a server that lost its state accepts that when a is
// free, as Kea and dnsmasq do, instead of forcing the client off.
func (t *table) bind(client string, a netip.Addr, lease time.Duration, renewing bool, now time.Time) bool {
	e := t.entry(client)
	if renewing && e.bound && now.Before(e.Expiry) && e.Addr != a {
		return false
	}
	if !t.usable(client, a, now) {
		return false
	}
	e.bound = true
	e.Expiry = now.Add(lease)
	e.offerUntil = time.Time{}
	t.claim(e, a)
	return true
}

// release ends client's lease on a; the entry is kept so the client can
// get the address back later.
func (t *table) release(client string, a netip.Addr, now time.Time) bool {
	e := t.clients[client]
	if e == nil || e.Addr != a || !e.bound {
		return false
	}
	e.bound = false
	e.Expiry = now
	return true
}

// decline withholds a (until until, or forever when zero) and drops
// client's claim on it.
func (t *table) decline(client string, a netip.Addr, until time.Time) bool {
	if !t.inRange(a) {
		return false
	}
	if e := t.clients[client]; e != nil && e.Addr == a {
		e.bound = false
		e.offerUntil = time.Time{}
		e.Expiry = time.Time{}
		if t.byAddr[a] == e {
			delete(t.byAddr, a)
		}
		e.Addr = netip.Addr{}
	}
	t.declined[a] = until
	return true
}

func (t *table) leases(now time.Time) []Lease {
	var out []Lease
	for _, e := range t.clients {
		if e.bound && now.Before(e.Expiry) {
			out = append(out, e.Lease)
		}
	}
	slices.SortFunc(out, func(a, b Lease) int { return a.Addr.Compare(b.Addr) })
	return out
}

func (t *table) declinedAddrs(now time.Time) []netip.Addr {
	var out []netip.Addr
	for a, until := range t.declined {
		if until.IsZero() || now.Before(until) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}
