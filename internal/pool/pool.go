// Package pool is the free list of a static IPv4 range.
//
// Every operation is O(1): free addresses sit in a doubly linked list kept in
// two index arrays, so taking one, taking a given one (re-adopting a lease
// after a restart) and returning one never scan the range. Returned
// addresses go to the back, so the address a session just gave up is the
// last to be reused: stale ARP entries and half-closed connections of the old
// holder have the longest time to die out.
//
// A Pool is not safe for concurrent use; its owner locks.
package pool

import (
	"fmt"
	"net/netip"
)

// MaxSize bounds a pool: 65,536 addresses (a /16) is the largest the daemon
// is designed and measured for; index arrays stay under 1 MiB.
const MaxSize = 1 << 16

const none = -1

// Pool is an inclusive range of IPv4 addresses with a free list.
type Pool struct {
	base       uint32
	size       int32
	next, prev []int32 // free-list links by index; none ends the list
	inFree     []bool
	head, tail int32
	free       int
}

// New returns a pool of all addresses from start to end inclusive, all free,
// in ascending order.
func New(start, end netip.Addr) (*Pool, error) {
	if !start.Is4() || !end.Is4() {
		return nil, fmt.Errorf("pool: %s-%s is not an IPv4 range", start, end)
	}
	s, e := V4(start), V4(end)
	if e < s {
		return nil, fmt.Errorf("pool: start %s is after end %s", start, end)
	}
	if n := uint64(e) - uint64(s) + 1; n > MaxSize {
		return nil, fmt.Errorf("pool: %s-%s holds %d addresses, more than %d", start, end, n, MaxSize)
	}
	n := int32(e - s + 1)
	p := &Pool{
		base:   s,
		size:   n,
		next:   make([]int32, n),
		prev:   make([]int32, n),
		inFree: make([]bool, n),
		head:   none,
		tail:   none,
	}
	for i := int32(0); i < n; i++ {
		p.pushBack(i)
	}
	return p, nil
}

// Size is the number of addresses in the range.
func (p *Pool) Size() int { return int(p.size) }

// Free is the number of addresses not taken.
func (p *Pool) Free() int { return p.free }

// Contains reports whether a lies in the range.
func (p *Pool) Contains(a netip.Addr) bool {
	_, ok := p.index(a)
	return ok
}

// Take removes and returns the least recently freed address.
func (p *Pool) Take() (netip.Addr, bool) {
	if p.head == none {
		return netip.Addr{}, false
	}
	i := p.head
	p.unlink(i)
	return p.addr(i), true
}

// TakeAddr removes a given address from the free list. It reports false if a
// is outside the range or already taken.
func (p *Pool) TakeAddr(a netip.Addr) bool {
	i, ok := p.index(a)
	if !ok || !p.inFree[i] {
		return false
	}
	p.unlink(i)
	return true
}

// Put returns a taken address to the back of the free list. It reports false
// (and changes nothing) if a is outside the range or already free.
func (p *Pool) Put(a netip.Addr) bool {
	i, ok := p.index(a)
	if !ok || p.inFree[i] {
		return false
	}
	p.pushBack(i)
	return true
}

// IsFree reports whether a is in the range and not taken.
func (p *Pool) IsFree(a netip.Addr) bool {
	i, ok := p.index(a)
	return ok && p.inFree[i]
}

// Index returns the position of a in the range (0 for its start), if a
// lies in it: owners keep per-address data in a slice of Size entries.
func (p *Pool) Index(a netip.Addr) (int, bool) {
	i, ok := p.index(a)
	return int(i), ok
}

// At returns the address at position i of the range.
func (p *Pool) At(i int) netip.Addr { return p.addr(int32(i)) }

func (p *Pool) index(a netip.Addr) (int32, bool) {
	if !a.Is4() {
		return 0, false
	}
	d := V4(a) - p.base // wraps for a < base, then fails the bound check
	if d >= uint32(p.size) {
		return 0, false
	}
	return int32(d), true
}

func (p *Pool) addr(i int32) netip.Addr {
	return FromV4(p.base + uint32(i))
}

func (p *Pool) pushBack(i int32) {
	p.next[i], p.prev[i] = none, p.tail
	if p.tail != none {
		p.next[p.tail] = i
	} else {
		p.head = i
	}
	p.tail = i
	p.inFree[i] = true
	p.free++
}

func (p *Pool) unlink(i int32) {
	if p.prev[i] != none {
		p.next[p.prev[i]] = p.next[i]
	} else {
		p.head = p.next[i]
	}
	if p.next[i] != none {
		p.prev[p.next[i]] = p.prev[i]
	} else {
		p.tail = p.prev[i]
	}
	p.inFree[i] = false
	p.free--
}
