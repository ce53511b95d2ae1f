package dhcp

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Counters are the source's running totals, for metrics (Metrics exports
// them) and tests.
type Counters struct {
	Exchanges      uint64 // exchanges started: acquisitions, renew/rebind/reboot attempts
	Retransmits    uint64 // DISCOVER/REQUEST retransmissions
	Offers         uint64 // OFFERs accepted
	Acks           uint64
	Naks           uint64
	Steered        uint64 // REQUESTs for an address near an OFFER another exchange of ours was requesting
	Declines       uint64 // DECLINEs sent (ARP conflict, or an address already ours)
	Releases       uint64 // RELEASEs sent
	RenewAttempts  uint64 // RENEWING requests sent (unicast, after T1)
	RebindAttempts uint64 // REBINDING requests sent (broadcast, after T2)
	Renewals       uint64 // leases extended while RENEWING
	Rebinds        uint64 // leases extended while REBINDING
	Reboots        uint64 // expired adopted leases recovered by INIT-REBOOT
	Expiries       uint64 // leases that ran out unrenewed
	Lost           uint64 // Events.Lost calls (expiry, NAK, address change)
	Timeouts       uint64 // Acquire calls that gave up (ErrExhausted)
	InFlight       int64  // exchanges holding a max_inflight slot now
	Held           int64  // leases held now
}

type counters struct {
	exchanges, retransmits, offers, acks, naks, declines, releases atomic.Uint64
	steered                                                        atomic.Uint64
	renewAttempts, rebindAttempts, renewals, rebinds, reboots      atomic.Uint64
	expiries, lost, timeouts                                       atomic.Uint64
	inflight                                                       atomic.Int64
}

func (c *counters) snapshot(held int) Counters {
	return Counters{
		Exchanges: c.exchanges.Load(), Retransmits: c.retransmits.Load(), Offers: c.offers.Load(),
		Acks: c.acks.Load(), Naks: c.naks.Load(), Steered: c.steered.Load(), Declines: c.declines.Load(), Releases: c.releases.Load(),
		RenewAttempts: c.renewAttempts.Load(), RebindAttempts: c.rebindAttempts.Load(),
		Renewals: c.renewals.Load(), Rebinds: c.rebinds.Load(), Reboots: c.reboots.Load(),
		Expiries: c.expiries.Load(), Lost: c.lost.Load(), Timeouts: c.timeouts.Load(),
		InFlight: c.inflight.Load(), Held: int64(held),
	}
}

// health remembers whether servers answer. One unanswered exchange after
// the last answer is enough to call the source unhealthy: with no answer
// there are no new leases, and any answer clears it.
type health struct {
	mu         sync.Mutex
	lastAnswer time.Time
	since      time.Time // first unanswered exchange after lastAnswer
	unanswered int
}

func (h *health) answered() {
	h.mu.Lock()
	h.lastAnswer, h.unanswered, h.since = time.Now(), 0, time.Time{}
	h.mu.Unlock()
}

func (h *health) unansweredExchange() {
	h.mu.Lock()
	if h.unanswered == 0 {
		h.since = time.Now()
	}
	h.unanswered++
	h.mu.Unlock()
}

func (h *health) status() (bool, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.unanswered > 0:
		return false, fmt.Sprintf("no DHCP server answered since %s (%d exchanges unanswered)",
			h.since.Format(time.TimeOnly), h.unanswered)
	case h.lastAnswer.IsZero():
		return true, "no exchange yet"
	default:
		return true, "last DHCP answer " + time.Since(h.lastAnswer).Round(time.Second).String() + " ago"
	}
}
