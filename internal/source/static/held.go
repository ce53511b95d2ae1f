package static

import (
	"iter"
	"net/netip"

	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/pool"
)

// held records who holds each address in use, including addresses outside
// the current range (stranded by a reconfiguration), so that a reload can
// never hand out an address someone still has. The range's addresses are
// looked up by position, in a slice beside the pool's free list: 24 bytes
// an address, where a map of the taken ones cost some 110 bytes a lease in
// a full /16.
type held struct {
	pool *pool.Pool
	// inRange[i] is the holder of the range's i-th address while the pool
	// has that address taken.
	inRange  []lease.Holder
	stranded map[netip.Addr]lease.Holder
}

func newHeld(p *pool.Pool) held {
	return held{pool: p, inRange: make([]lease.Holder, p.Size()), stranded: map[netip.Addr]lease.Holder{}}
}

// get returns the holder of a, if it is held.
func (h *held) get(a netip.Addr) (lease.Holder, bool) {
	if i, ok := h.pool.Index(a); ok {
		return h.inRange[i], !h.pool.IsFree(a)
	}
	who, ok := h.stranded[a]
	return who, ok
}

// set records who as the holder of a, which the pool has taken already
// (or which lies outside the range).
func (h *held) set(a netip.Addr, who lease.Holder) {
	if i, ok := h.pool.Index(a); ok {
		h.inRange[i] = who
		return
	}
	h.stranded[a] = who
}

// free forgets a's holder and returns a to the pool (an address outside
// the range returns to nobody).
func (h *held) free(a netip.Addr) {
	if i, ok := h.pool.Index(a); ok {
		h.inRange[i] = lease.Holder{}
		h.pool.Put(a)
		return
	}
	delete(h.stranded, a)
}

// all yields every held address with its holder.
func (h *held) all() iter.Seq2[netip.Addr, lease.Holder] {
	return func(yield func(netip.Addr, lease.Holder) bool) {
		for i, who := range h.inRange {
			if a := h.pool.At(i); !h.pool.IsFree(a) && !yield(a, who) {
				return
			}
		}
		for a, who := range h.stranded {
			if !yield(a, who) {
				return
			}
		}
	}
}
