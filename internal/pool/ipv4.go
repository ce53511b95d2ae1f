package pool

import "net/netip"

// V4 returns an IPv4 address as a host-order integer, for range arithmetic.
func V4(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// FromV4 is the inverse of V4.
func FromV4(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// MaskBits converts a dotted mask to a prefix length; ok is false for a
// non-IPv4 or non-contiguous mask.
func MaskBits(m netip.Addr) (int, bool) {
	if !m.Is4() {
		return 0, false
	}
	v := V4(m)
	ones := 0
	for ones < 32 && v&(1<<(31-ones)) != 0 {
		ones++
	}
	if ones < 32 && v<<ones != 0 {
		return 0, false
	}
	return ones, true
}

// Broadcast returns the last address of an IPv4 prefix.
func Broadcast(p netip.Prefix) netip.Addr {
	return FromV4(V4(p.Masked().Addr()) | ^uint32(0)>>p.Bits())
}
