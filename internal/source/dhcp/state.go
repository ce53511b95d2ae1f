package dhcp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// leaseState is what the source needs to resume a lease after a restart.
// It travels in lease.Lease.State; the manager persists it.
type leaseState struct {
	ClientID  []byte
	ServerID  netip.Addr
	ServerMAC net.HardwareAddr // L2 next hop for unicast renewals; nil if unknown
	Bound     time.Time        // when the last ACK arrived; T1/T2/lease count from here
	Lease     time.Duration
	T1, T2    time.Duration
	Infinite  bool // lease time 0xffffffff: never renew, never expires
}

func (s leaseState) t1() time.Time     { return s.Bound.Add(s.T1) }
func (s leaseState) t2() time.Time     { return s.Bound.Add(s.T2) }
func (s leaseState) expiry() time.Time { return s.Bound.Add(s.Lease) }

// State encoding, version 1, big endian:
//
//	0      version (1)
//	1      flags: bit 0 infinite lease, bit 1 server MAC known
//	2..5   server identifier (IPv4)
//	6..11  server MAC (zero if unknown)
//	12..19 bound time, Unix nanoseconds
//	20..27 lease, milliseconds
//	28..35 T1, milliseconds
//	36..43 T2, milliseconds
//	44     client id length n (2..255)
//	45..   client id
//
// Milliseconds, not DHCP's seconds: the default T1/T2 of an odd-second
// lease are fractions of a second.
const (
	stateVersion  = 1
	stateFixedLen = 45
	flagInfinite  = 1 << 0
	flagServerMAC = 1 << 1
	maxLease      = 0xffffffff * time.Second
)

func (s leaseState) marshal() []byte {
	b := make([]byte, stateFixedLen, stateFixedLen+len(s.ClientID))
	b[0] = stateVersion
	if s.Infinite {
		b[1] |= flagInfinite
	}
	if len(s.ServerMAC) == 6 {
		b[1] |= flagServerMAC
		copy(b[6:12], s.ServerMAC)
	}
	a := s.ServerID.As4()
	copy(b[2:6], a[:])
	binary.BigEndian.PutUint64(b[12:20], uint64(s.Bound.UnixNano()))
	binary.BigEndian.PutUint64(b[20:28], uint64(s.Lease/time.Millisecond))
	binary.BigEndian.PutUint64(b[28:36], uint64(s.T1/time.Millisecond))
	binary.BigEndian.PutUint64(b[36:44], uint64(s.T2/time.Millisecond))
	b[44] = byte(len(s.ClientID))
	return append(b, s.ClientID...)
}

// parseState decodes and checks a persisted State. It is fed bytes from
// disk, so it trusts nothing.
func parseState(b []byte) (leaseState, error) {
	if len(b) == 0 {
		return leaseState{}, errors.New("dhcp: lease state is empty")
	}
	if b[0] != stateVersion {
		return leaseState{}, fmt.Errorf("dhcp: lease state version %d: want %d", b[0], stateVersion)
	}
	if len(b) < stateFixedLen {
		return leaseState{}, fmt.Errorf("dhcp: lease state: %d bytes, want at least %d", len(b), stateFixedLen)
	}
	n := int(b[44])
	if n < 2 || len(b) != stateFixedLen+n {
		return leaseState{}, fmt.Errorf("dhcp: lease state: client id length %d in %d bytes", n, len(b))
	}
	if b[1]&^(flagInfinite|flagServerMAC) != 0 {
		return leaseState{}, fmt.Errorf("dhcp: lease state: unknown flags %#x", b[1])
	}
	var ms [3]time.Duration
	for i := range ms {
		v := binary.BigEndian.Uint64(b[20+8*i:])
		if v > uint64(maxLease/time.Millisecond) {
			return leaseState{}, fmt.Errorf("dhcp: lease state: duration %dms out of range", v)
		}
		ms[i] = time.Duration(v) * time.Millisecond
	}
	s := leaseState{
		ServerID: netip.AddrFrom4([4]byte(b[2:6])),
		Bound:    time.Unix(0, int64(binary.BigEndian.Uint64(b[12:20]))),
		Lease:    ms[0],
		T1:       ms[1],
		T2:       ms[2],
		Infinite: b[1]&flagInfinite != 0,
		ClientID: append([]byte(nil), b[stateFixedLen:]...),
	}
	if b[1]&flagServerMAC != 0 {
		s.ServerMAC = append(net.HardwareAddr(nil), b[6:12]...)
	} else if !isZero(b[6:12]) {
		return leaseState{}, errors.New("dhcp: lease state: server MAC bytes without the flag")
	}
	if s.ServerID.IsUnspecified() {
		return leaseState{}, errors.New("dhcp: lease state: server identifier 0.0.0.0")
	}
	if !s.Infinite && (s.T1 <= 0 || s.T1 > s.T2 || s.T2 > s.Lease) {
		return leaseState{}, fmt.Errorf("dhcp: lease state: timers T1 %s T2 %s lease %s out of order", s.T1, s.T2, s.Lease)
	}
	return s, nil
}
