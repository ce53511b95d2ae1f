package dhcp

import (
	"encoding/binary"
	"net/netip"
)

// IPv4/UDP framing for the raw (AF_PACKET, SOCK_DGRAM) transport: the
// kernel adds the Ethernet header, we write and read the IP and UDP
// headers, because the source address of a DHCP client is either nothing
// (0.0.0.0) or a VIP the socket layer does not let us choose freely.

const (
	ipv4HeaderLen = 20
	udpHeaderLen  = 8
	protoUDP      = 17
)

// buildUDP4 wraps payload in IPv4 and UDP headers.
func buildUDP4(src, dst netip.AddrPort, payload []byte) []byte {
	total := ipv4HeaderLen + udpHeaderLen + len(payload)
	b := make([]byte, total)
	ip := b[:ipv4HeaderLen]
	ip[0] = 0x45 // version 4, 5 words
	binary.BigEndian.PutUint16(ip[2:4], uint16(total))
	ip[8] = 64 // TTL
	ip[9] = protoUDP
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	binary.BigEndian.PutUint16(ip[10:12], ^checksum(0, ip))

	udp := b[ipv4HeaderLen:]
	binary.BigEndian.PutUint16(udp[0:2], src.Port())
	binary.BigEndian.PutUint16(udp[2:4], dst.Port())
	binary.BigEndian.PutUint16(udp[4:6], uint16(udpHeaderLen+len(payload)))
	copy(udp[udpHeaderLen:], payload)
	// Pseudo-header: addresses, protocol, UDP length.
	sum := uint32(checksum(0, ip[12:20]))
	sum = uint32(checksum(sum, []byte{0, protoUDP, udp[4], udp[5]}))
	c := ^checksum(sum, udp)
	if c == 0 {
		c = 0xffff // RFC 768: a computed zero is sent as all ones
	}
	binary.BigEndian.PutUint16(udp[6:8], c)
	return b
}

// parseUDP4 unwraps an IPv4 UDP datagram. It checks the IP header checksum
// but not the UDP one: on veth and with checksum offload the UDP checksum
// seen by a packet socket may legitimately be unfinished.
func parseUDP4(b []byte) (src, dst netip.AddrPort, payload []byte, ok bool) {
	if len(b) < ipv4HeaderLen || b[0]>>4 != 4 {
		return src, dst, nil, false
	}
	ihl := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if ihl < ipv4HeaderLen || total < ihl+udpHeaderLen || total > len(b) {
		return src, dst, nil, false
	}
	if b[9] != protoUDP || binary.BigEndian.Uint16(b[6:8])&0x3fff != 0 { // UDP, not a fragment
		return src, dst, nil, false
	}
	if checksum(0, b[:ihl]) != 0xffff {
		return src, dst, nil, false
	}
	udp := b[ihl:total]
	ulen := int(binary.BigEndian.Uint16(udp[4:6]))
	if ulen < udpHeaderLen || ulen > len(udp) {
		return src, dst, nil, false
	}
	src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[12:16])), binary.BigEndian.Uint16(udp[0:2]))
	dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[16:20])), binary.BigEndian.Uint16(udp[2:4]))
	return src, dst, udp[udpHeaderLen:ulen], true
}

// checksum adds b to the running one's-complement sum (RFC 1071).
func checksum(sum uint32, b []byte) uint16 {
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}
