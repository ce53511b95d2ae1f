// Package arp encodes and decodes RFC 826 ARP packets for IPv4 over
// Ethernet, the only kind ipvirt sends or reads: the DHCP source's RFC 5227
// probes and the simulator's rogue host that answers them.
package arp

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// Op is the ARP operation.
type Op uint16

const (
	Request Op = 1
	Reply   Op = 2
)

// Len is the size of an Ethernet/IPv4 ARP payload. Frames read from the
// wire are often longer (Ethernet pads them to its minimum frame size).
const Len = 28

const (
	hwEthernet = 1
	protoIPv4  = 0x0800
)

// Packet is one ARP payload. Its hardware addresses are arrays so that a
// Packet is a comparable value that shares no memory with the buffer it
// was parsed from: readers reuse that buffer for the next frame.
type Packet struct {
	Op       Op
	SenderHW [6]byte
	SenderIP netip.Addr
	TargetHW [6]byte
	TargetIP netip.Addr
}

// Parse decodes an ARP payload read from the wire (untrusted). Bytes past
// Len are padding and ignored.
func Parse(b []byte) (Packet, error) {
	if len(b) < Len {
		return Packet{}, fmt.Errorf("arp: %d bytes, need %d", len(b), Len)
	}
	if ht, pt := binary.BigEndian.Uint16(b[0:2]), binary.BigEndian.Uint16(b[2:4]); ht != hwEthernet || pt != protoIPv4 {
		return Packet{}, fmt.Errorf("arp: hardware type %d, protocol %#04x: not Ethernet/IPv4", ht, pt)
	}
	if b[4] != 6 || b[5] != 4 {
		return Packet{}, fmt.Errorf("arp: address lengths %d/%d, want 6/4", b[4], b[5])
	}
	op := Op(binary.BigEndian.Uint16(b[6:8]))
	if op != Request && op != Reply {
		return Packet{}, fmt.Errorf("arp: operation %d is neither request nor reply", op)
	}
	return Packet{
		Op:       op,
		SenderHW: [6]byte(b[8:14]),
		SenderIP: netip.AddrFrom4([4]byte(b[14:18])),
		TargetHW: [6]byte(b[18:24]),
		TargetIP: netip.AddrFrom4([4]byte(b[24:28])),
	}, nil
}

// Marshal encodes p in Len bytes. An address that is not IPv4 (the zero
// Addr included) is sent as 0.0.0.0, which is what a probe's sender
// address must be anyway.
func (p Packet) Marshal() []byte {
	b := make([]byte, Len)
	binary.BigEndian.PutUint16(b[0:2], hwEthernet)
	binary.BigEndian.PutUint16(b[2:4], protoIPv4)
	b[4], b[5] = 6, 4
	binary.BigEndian.PutUint16(b[6:8], uint16(p.Op))
	copy(b[8:14], p.SenderHW[:])
	putV4(b[14:18], p.SenderIP)
	copy(b[18:24], p.TargetHW[:])
	putV4(b[24:28], p.TargetIP)
	return b
}

func putV4(b []byte, a netip.Addr) {
	if a.Is4() {
		v := a.As4()
		copy(b, v[:])
	}
}
