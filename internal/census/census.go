// Package census asks the kernel which TCP and UDP sockets are bound to a
// set of addresses, and which processes hold them. The daemon uses it as
// evidence that is independent of its own lease file: a socket bound to a
// pool address is a holder, whatever the file says (issue 10).
//
// Sockets come from NETLINK_SOCK_DIAG dumps (the interface ss(8) uses),
// with a bytecode filter so that the kernel sends only the sockets bound to
// the addresses asked about: the reply stays small on a host with a
// hundred thousand connections. IPv4 sockets and IPv6 sockets bound to
// IPv4-mapped addresses are both found (the filter's AF_INET conditions
// match mapped addresses). Processes come from /proc/PID/fd, read only when
// a socket was found.
package census

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Proto is a transport protocol.
type Proto uint8

const (
	TCP Proto = unix.IPPROTO_TCP
	UDP Proto = unix.IPPROTO_UDP
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	}
	return "proto " + strconv.Itoa(int(p))
}

// Socket is one socket the kernel reports bound to an address of interest.
type Socket struct {
	Proto  Proto
	Local  netip.AddrPort // IPv4 (an IPv4-mapped IPv6 address is unmapped)
	Remote netip.AddrPort // zero port and unspecified address when unconnected
	State  uint8          // TCP state (UDP: 1 connected, 7 unconnected)
	UID    uint32         // the socket's owner
	Inode  uint64         // 0 for sockets no file refers to any more
	IPv6   bool           // an AF_INET6 socket (bound to a mapped address)
}

var tcpStates = [...]string{1: "established", 2: "syn-sent", 3: "syn-recv", 4: "fin-wait-1", 5: "fin-wait-2",
	6: "time-wait", 7: "close", 8: "close-wait", 9: "last-ack", 10: "listen", 11: "closing", 13: "bound"}

// String is the socket as the administrator reads it in an error:
// "TCP 10.50.0.105:41234 -> 10.50.0.1:5432 established", "UDP 10.50.0.105:5353".
func (s Socket) String() string {
	var b strings.Builder
	b.WriteString(s.Proto.String())
	b.WriteByte(' ')
	b.WriteString(s.Local.String())
	if s.Remote.Port() != 0 {
		b.WriteString(" -> ")
		b.WriteString(s.Remote.String())
	}
	if s.Proto == TCP && int(s.State) < len(tcpStates) && tcpStates[s.State] != "" {
		b.WriteByte(' ')
		b.WriteString(tcpStates[s.State])
	}
	return b.String()
}

// Dumper sends sock_diag requests on one netlink socket. It is safe for
// concurrent use (requests are serialised).
type Dumper struct {
	mu  sync.Mutex
	fd  int
	seq uint32
	buf []byte
	// noV6 is set once the kernel refused an AF_INET6 dump (IPv6
	// disabled): there are no IPv6 sockets to find then.
	noV6 bool
}

// Open opens a netlink socket for sock_diag. It needs no privilege: any
// user may list the host's sockets (ss does).
func Open() (*Dumper, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("census: sock_diag: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("census: sock_diag: bind: %w", err)
	}
	// A reply that never comes (it always does) must not hang a grant.
	tv := unix.Timeval{Sec: 2}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	return &Dumper{fd: fd, buf: make([]byte, 64<<10)}, nil
}

// Close closes the netlink socket.
func (d *Dumper) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd < 0 {
		return nil
	}
	err := unix.Close(d.fd)
	d.fd = -1
	return err
}

// Sizes and constants of the kernel's structures (linux/netlink.h,
// linux/inet_diag.h, linux/sock_diag.h).
const (
	nlmsgHdrLen       = 16
	inetDiagReqV2Len  = 56
	inetDiagMsgLen    = 72
	sockDiagByFamily  = 20 // SOCK_DIAG_BY_FAMILY
	inetDiagReqBC     = 1  // INET_DIAG_REQ_BYTECODE
	bcJmp             = 1  // INET_DIAG_BC_JMP
	bcSCond           = 7  // INET_DIAG_BC_S_COND
	bcOpLen           = 4  // struct inet_diag_bc_op
	bcHostCondLen     = 8  // struct inet_diag_hostcond without the address
	bcCond4Len        = bcOpLen + bcHostCondLen + 4
	bcBlockLen        = bcCond4Len + bcOpLen // S_COND then JMP
	maxFilterPrefixes = 1024
	tcpTimeWait       = 6
	tcpNewSynRecv     = 12
)

// states asks for every socket state but TIME_WAIT and the request
// sockets of half-open connections: neither has an owner or a file, and
// both belong to the kernel rather than to a holder (a request socket's
// listener is reported itself). Bit 13 (TCP_BOUND_INACTIVE, Linux 6.9)
// adds TCP sockets that are bound but neither listening nor connected.
const states = ^uint32(0) &^ (1<<tcpTimeWait | 1<<tcpNewSynRecv)

// Bound returns the TCP and UDP sockets, IPv4 and IPv4-mapped IPv6, whose
// local address lies in one of include and in none of exclude (the
// adapter's own address, in a subnet asked about). Sockets bound to the
// wildcard address (0.0.0.0, ::) are not reported: they hold no particular
// address.
func (d *Dumper) Bound(include, exclude []netip.Prefix) ([]Socket, error) {
	in, out4 := v4(include), v4(exclude)
	if len(in) == 0 {
		return nil, nil
	}
	bc := filter(in, out4)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd < 0 {
		return nil, errors.New("census: closed")
	}
	var out []Socket
	for _, q := range [...]struct {
		family uint8
		proto  Proto
	}{{unix.AF_INET, TCP}, {unix.AF_INET, UDP}, {unix.AF_INET6, TCP}, {unix.AF_INET6, UDP}} {
		if q.family == unix.AF_INET6 && d.noV6 {
			continue
		}
		var err error
		out, err = d.dump(out, q.family, q.proto, bc)
		if q.family == unix.AF_INET6 && (errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EAFNOSUPPORT)) {
			d.noV6 = true
			continue
		}
		if err != nil {
			return nil, err
		}
	}
	// The kernel filtered; filtering again costs nothing and keeps a
	// kernel that ignored the bytecode from widening the answer.
	out = slices.DeleteFunc(out, func(s Socket) bool {
		a := s.Local.Addr()
		return !containedIn(in, a) || containedIn(out4, a)
	})
	return out, nil
}

func v4(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if p.IsValid() && p.Addr().Is4() {
			out = append(out, p.Masked())
		}
	}
	return out
}

func containedIn(ps []netip.Prefix, a netip.Addr) bool {
	return slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Contains(a) })
}

// filter builds the inet_diag bytecode "local address in none of exclude
// and in one of include". Each prefix is a block of two operations:
//
//	S_COND prefix   yes: the JMP below   no: the next block
//	JMP             no: 4 past the end (reject; exclude blocks)
//	                    or the end (accept; include blocks)
//
// and a last JMP past the end rejects what no include block accepted. The
// kernel validates a program by following the yes branches, which must
// visit every operation and stop exactly at the end; jumps may land on an
// operation, at the end (accept) or 4 bytes past it (reject). An op's yes
// is one byte, its no 16 bits: hence a JMP per block rather than a long
// yes to the end.
func filter(include, exclude []netip.Prefix) []byte {
	if len(include)+len(exclude) > maxFilterPrefixes {
		// Too long for 16-bit jumps; the caller's own check narrows the
		// answer. (A static pool is a handful of prefixes.)
		include, exclude = []netip.Prefix{netip.PrefixFrom(netip.IPv4Unspecified(), 0)}, nil
	}
	n := (len(include)+len(exclude))*bcBlockLen + bcOpLen
	b := make([]byte, n)
	ne := binary.NativeEndian
	off := 0
	block := func(p netip.Prefix, accept bool) {
		b[off] = bcSCond
		b[off+1] = bcCond4Len
		ne.PutUint16(b[off+2:], bcBlockLen)
		b[off+4] = unix.AF_INET
		b[off+5] = byte(p.Bits())
		ne.PutUint32(b[off+8:], ^uint32(0)) // port -1: any
		a := p.Addr().As4()
		copy(b[off+12:], a[:])
		off += bcCond4Len
		b[off] = bcJmp
		b[off+1] = bcOpLen
		if accept {
			ne.PutUint16(b[off+2:], uint16(n-off))
		} else {
			ne.PutUint16(b[off+2:], uint16(n-off+bcOpLen))
		}
		off += bcOpLen
	}
	for _, p := range exclude {
		block(p, false)
	}
	for _, p := range include {
		block(p, true)
	}
	b[off] = bcJmp
	b[off+1] = bcOpLen
	ne.PutUint16(b[off+2:], bcOpLen*2) // 4 past the end: reject
	return b
}

func (d *Dumper) dump(out []Socket, family uint8, proto Proto, bc []byte) ([]Socket, error) {
	d.seq++
	ne := binary.NativeEndian
	attrLen := 4 + len(bc)
	req := make([]byte, nlmsgHdrLen+inetDiagReqV2Len+(attrLen+3)&^3)
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], sockDiagByFamily)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], d.seq)
	r := req[nlmsgHdrLen:]
	r[0], r[1] = family, byte(proto)
	ne.PutUint32(r[4:], states)
	a := r[inetDiagReqV2Len:]
	ne.PutUint16(a[0:], uint16(attrLen))
	ne.PutUint16(a[2:], inetDiagReqBC)
	copy(a[4:], bc)
	if err := unix.Sendto(d.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return out, fmt.Errorf("census: sock_diag: send: %w", err)
	}
	for {
		n, _, err := unix.Recvfrom(d.fd, d.buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return out, fmt.Errorf("census: sock_diag %s dump: receive: %w", proto, err)
		}
		msgs := d.buf[:n]
		for len(msgs) >= nlmsgHdrLen {
			l := int(ne.Uint32(msgs[0:]))
			if l < nlmsgHdrLen || l > len(msgs) {
				return out, errors.New("census: sock_diag: malformed reply")
			}
			m := msgs[:l]
			msgs = msgs[min((l+3)&^3, len(msgs)):]
			if ne.Uint32(m[8:]) != d.seq {
				continue // the end of an earlier, abandoned dump
			}
			switch ne.Uint16(m[4:]) {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m) >= nlmsgHdrLen+4 {
					if errno := int32(ne.Uint32(m[nlmsgHdrLen:])); errno != 0 {
						return out, fmt.Errorf("census: sock_diag %s dump: %w", proto, syscall.Errno(-errno))
					}
				}
				return out, nil
			case sockDiagByFamily:
				if s, ok := parseMsg(m[nlmsgHdrLen:], proto); ok {
					out = append(out, s)
				}
			}
		}
	}
}

// parseMsg decodes an inet_diag_msg.
func parseMsg(b []byte, proto Proto) (Socket, bool) {
	if len(b) < inetDiagMsgLen {
		return Socket{}, false
	}
	ne := binary.NativeEndian
	s := Socket{Proto: proto, State: b[1], UID: ne.Uint32(b[64:]), Inode: uint64(ne.Uint32(b[68:]))}
	sport, dport := binary.BigEndian.Uint16(b[4:]), binary.BigEndian.Uint16(b[6:])
	src, dst := b[8:24], b[24:40]
	switch b[0] {
	case unix.AF_INET:
		s.Local = netip.AddrPortFrom(netip.AddrFrom4([4]byte(src[:4])), sport)
		s.Remote = netip.AddrPortFrom(netip.AddrFrom4([4]byte(dst[:4])), dport)
	case unix.AF_INET6:
		s.IPv6 = true
		s.Local = netip.AddrPortFrom(netip.AddrFrom16([16]byte(src)).Unmap(), sport)
		s.Remote = netip.AddrPortFrom(netip.AddrFrom16([16]byte(dst)).Unmap(), dport)
	default:
		return Socket{}, false
	}
	if !s.Local.Addr().Is4() {
		return Socket{}, false
	}
	return s, true
}

// Owners finds, by reading /proc/PID/fd under procRoot, the processes
// holding a file that refers to each socket inode. A socket shared by
// several processes (fork, SCM_RIGHTS) lists them all. Processes that
// vanish during the scan are skipped; a process whose descriptors cannot
// be read (not root) is too.
func Owners(procRoot string, inodes []uint64) (map[uint64][]int, error) {
	want := map[uint64]bool{}
	for _, ino := range inodes {
		if ino != 0 {
			want[ino] = true
		}
	}
	out := map[uint64][]int{}
	if len(want) == 0 {
		return out, nil
	}
	d, err := os.Open(procRoot)
	if err != nil {
		return nil, fmt.Errorf("census: %w", err)
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return nil, fmt.Errorf("census: %w", err)
	}
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil || pid <= 0 {
			continue
		}
		dir := procRoot + "/" + name + "/fd"
		f, err := os.Open(dir)
		if err != nil {
			continue
		}
		fds, _ := f.Readdirnames(-1)
		f.Close()
		found := map[uint64]bool{}
		for _, fd := range fds {
			link, err := os.Readlink(dir + "/" + fd)
			if err != nil {
				continue
			}
			rest, ok := strings.CutPrefix(link, "socket:[")
			if !ok {
				continue
			}
			ino, err := strconv.ParseUint(strings.TrimSuffix(rest, "]"), 10, 64)
			if err != nil || !want[ino] || found[ino] {
				continue
			}
			found[ino] = true
			out[ino] = append(out[ino], pid)
		}
	}
	return out, nil
}

// RangePrefixes returns the fewest prefixes that cover the IPv4 range
// start..end exactly (a static pool as a filter).
func RangePrefixes(start, end netip.Addr) []netip.Prefix {
	if !start.Is4() || !end.Is4() || end.Less(start) {
		return nil
	}
	s := uint64(binary.BigEndian.Uint32(start.AsSlice()))
	e := uint64(binary.BigEndian.Uint32(end.AsSlice()))
	var out []netip.Prefix
	for s <= e {
		bits := 32
		// Grow the block while s stays aligned to it and it fits in the range.
		for bits > 0 {
			size := uint64(1) << (32 - (bits - 1))
			if s%size != 0 || s+size-1 > e {
				break
			}
			bits--
		}
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], uint32(s))
		out = append(out, netip.PrefixFrom(netip.AddrFrom4(a), bits))
		s += uint64(1) << (32 - bits)
	}
	return out
}

// inetDiagNoCookie asks for a socket by its addresses alone.
const inetDiagNoCookie = ^uint32(0)

// Owner returns the uid owning the TCP socket whose local end is local and
// whose remote end is remote (IPv4, or IPv6): an exact lookup by the
// four-tuple, not a dump, so its cost does not grow with the sockets the
// host has. The HTTP server asks it who is at the other end of a loopback
// connection: that end is a socket of this host too.
func (d *Dumper) Owner(local, remote netip.AddrPort) (uint32, error) {
	// net.TCPAddr may hold an IPv4 address in its 16-byte form.
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	d.mu.Lock()
	defer d.mu.Unlock()
	d.seq++
	family := uint8(unix.AF_INET6)
	if local.Addr().Is4() && remote.Addr().Is4() {
		family = unix.AF_INET
	}
	ne := binary.NativeEndian
	var req [nlmsgHdrLen + inetDiagReqV2Len]byte
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], sockDiagByFamily)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(req[8:], d.seq)
	r := req[nlmsgHdrLen:]
	r[0], r[1] = family, byte(TCP)
	ne.PutUint32(r[4:], ^uint32(0))
	id := r[8:]
	binary.BigEndian.PutUint16(id[0:], local.Port())
	binary.BigEndian.PutUint16(id[2:], remote.Port())
	if family == unix.AF_INET {
		a, b := local.Addr().As4(), remote.Addr().As4()
		copy(id[4:], a[:])
		copy(id[20:], b[:])
	} else {
		a, b := local.Addr().As16(), remote.Addr().As16()
		copy(id[4:], a[:])
		copy(id[20:], b[:])
	}
	ne.PutUint32(id[40:], inetDiagNoCookie)
	ne.PutUint32(id[44:], inetDiagNoCookie)
	if err := unix.Sendto(d.fd, req[:], 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("census: sock_diag: send: %w", err)
	}
	for {
		n, _, err := unix.Recvfrom(d.fd, d.buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("census: sock_diag lookup: receive: %w", err)
		}
		m := d.buf[:n]
		if len(m) < nlmsgHdrLen || ne.Uint32(m[8:]) != d.seq {
			continue // a late answer to an earlier request
		}
		switch ne.Uint16(m[4:]) {
		case unix.NLMSG_ERROR:
			if len(m) >= nlmsgHdrLen+4 {
				if errno := int32(ne.Uint32(m[nlmsgHdrLen:])); errno != 0 {
					return 0, fmt.Errorf("census: sock_diag lookup: %w", syscall.Errno(-errno))
				}
			}
			return 0, errors.New("census: sock_diag lookup: no such socket")
		case sockDiagByFamily:
			if s, ok := parseMsg(m[nlmsgHdrLen:], TCP); ok {
				return s.UID, nil
			}
			return 0, errors.New("census: sock_diag lookup: unreadable reply")
		}
	}
}
