// Package source defines where virtual IPs come from. The allocation manager
// (package alloc) owns holders, policy and durability; a Source only obtains,
// keeps and gives back addresses. The static pool (source/static) and the
// DHCP client (source/dhcp) implement it. What only some sources can do is
// an optional interface here (ClientIDer, Reconfigurer, MetricsProvider), so
// that the daemon works with any source and names none.
package source

import (
	"context"
	"errors"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ipvirt/ipvirt/internal/lease"
)

// ErrExhausted is returned (wrapped) by Acquire when no address can be had:
// the pool is empty, the DHCP server has none, or none answered in time. The
// manager turns it into the on_exhausted answer.
var ErrExhausted = errors.New("no virtual IP available")

// Source obtains addresses for holders.
//
// The manager serialises calls per holder: it never calls Acquire twice for
// the same holder concurrently, nor Acquire and Release for the same holder
// at once. Calls for different holders may run concurrently.
type Source interface {
	// Name is the config name of the source ("static", "dhcp").
	Name() string
	// Acquire obtains an address for h. It may block (a DHCP exchange) until
	// ctx is done. The returned lease has Holder, Addr, Subnet, Source and,
	// where the source has them, Expiry and State set.
	Acquire(ctx context.Context, h lease.Holder) (lease.Lease, error)
	// Adopt takes back a lease persisted before a restart so that the source
	// counts its address as used (and, for DHCP, resumes renewing it). It
	// must accept a lease whose address lies outside the current range (the
	// pool was reconfigured): that address stays held until released.
	Adopt(l lease.Lease) error
	// Release gives the address back (DHCP: sends DHCPRELEASE). It must not
	// block for long; network work may finish in the background.
	Release(l lease.Lease)
	// Stats reports the source's size and health for status and metrics.
	Stats() Stats
	// Close stops background work (renewal loops) without releasing leases:
	// a restart must be invisible to sessions.
	Close() error
}

// ClientIDer is implemented by sources whose holders have an identity the
// far end sees (DHCP option 61), so that reports can show it and the wire
// can be checked against them.
type ClientIDer interface {
	ClientID(h lease.Holder) []byte
}

// Reconfigurer is implemented by sources that hand out a configured range
// of addresses (the static pool), which a reload may change.
type Reconfigurer interface {
	// Reconfigure switches to r. Addresses in use stay in use wherever they
	// lie; those outside r are returned (stranded): they go back to nobody
	// when released. Their holders keep them, since taking an address from
	// a live session would break its connections.
	Reconfigure(r Range) (stranded []netip.Addr, err error)
}

// Claimer is implemented by sources that can take on an address a live
// holder is found using although no lease records it (the start-up
// cross-check of the store against the kernel: the lease file was lost or
// rolled back). The static pool can: the address is its own to give.
type Claimer interface {
	// Claim marks a as held by h and returns the lease, as Adopt does for
	// a persisted one. It fails if a is held by another holder.
	Claim(h lease.Holder, a netip.Addr) (lease.Lease, error)
}

// Decliner is implemented by sources that can refuse an address they have
// just obtained because it is in use on this host (sockets are bound to
// it): DHCP tells its server with a DECLINE, as for an ARP conflict. The
// manager sets the addresses of other sources aside itself.
type Decliner interface {
	// Decline gives up l, obtained by Acquire and not granted, telling
	// the far end why.
	Decline(l lease.Lease, why string)
}

// Transferer is implemented by sources whose leases can pass from one
// holder to another while the address stays where it is on the wire: the
// kernel interceptor hands a stock lease (acquired ahead under a stock
// holder, lease.KindStock) to the session whose first connect it gave the
// address to, and the daemon then moves the lease to that holder. The
// far end must see nothing change: a DHCP lease keeps the client identifier
// it was obtained with and goes on being renewed under it; an etcd record
// names the new holder in one transaction that fails if the record is no
// longer this host's.
type Transferer interface {
	// Transfer makes l (held by l.Holder) held by to and returns the
	// lease as it now is (Holder set to to; State as the source keeps
	// it). It fails, changing nothing, if l.Holder does not hold l.Addr
	// or to already holds an address.
	Transfer(l lease.Lease, to lease.Holder) (lease.Lease, error)
}

// Range is an inclusive range of addresses and the subnet each is handed
// out in.
type Range struct {
	Start, End netip.Addr
	Subnet     netip.Prefix
}

// MetricsProvider is implemented by sources that keep metrics of their own
// beyond Stats (the DHCP client's exchange counters); the daemon exports
// them with its own.
type MetricsProvider interface {
	Metrics() prometheus.Collector
}

// Stats is a source's view of its addresses.
type Stats struct {
	// Size is the number of addresses the source can hand out, or -1 when
	// it cannot know (DHCP).
	Size int
	Used int
	// Healthy is false when the source cannot currently grant new leases
	// (DHCP server unreachable); Health says why in one line.
	Healthy bool
	Health  string
}

// Events is how a source tells the manager about changes it makes on its
// own, outside Acquire/Release (DHCP renewals and expiries). Calls may come
// from any goroutine and must not call back into the source.
type Events interface {
	// Renewed reports a lease whose Expiry or State changed; same address.
	Renewed(l lease.Lease)
	// Lost reports that h no longer holds addr (expired unrenewed, NAK).
	Lost(h lease.Holder, addr netip.Addr, reason error)
}

type userKey struct{}

// WithUser tells Acquire whose session the holder is: the user's uid, for
// sources that record it where others can see it (etcd).
func WithUser(ctx context.Context, uid uint32) context.Context {
	return context.WithValue(ctx, userKey{}, uid)
}

// UserFrom returns the uid WithUser put in ctx.
func UserFrom(ctx context.Context) (uint32, bool) {
	if ctx == nil {
		return 0, false
	}
	uid, ok := ctx.Value(userKey{}).(uint32)
	return uid, ok
}
