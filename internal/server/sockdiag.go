package server

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// sockDiag asks the kernel's socket diagnostics (NETLINK_SOCK_DIAG) for the
// owner of one TCP socket on this host: an exact lookup by its four-tuple,
// not a dump, so its cost does not grow with the sockets the host has (an
// HTTP flood is thousands of them). Not safe for concurrent use.
type sockDiag struct {
	fd  int
	seq uint32
}

func newSockDiag() (*sockDiag, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("sock_diag: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("sock_diag: bind: %w", err)
	}
	// A reply that never comes (it always does) must not hang Accept.
	tv := unix.Timeval{Sec: 1}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	return &sockDiag{fd: fd}, nil
}

func (d *sockDiag) close() { unix.Close(d.fd) }

// Sizes of the kernel's structures (linux/inet_diag.h, linux/netlink.h).
const (
	nlmsgHdrLen      = 16
	inetDiagReqV2Len = 56
	// inetDiagMsgUID is where inet_diag_msg holds idiag_uid: after
	// family, state, timer, retrans (4 bytes), the 48-byte socket id, and
	// expires, rqueue, wqueue (12 bytes).
	inetDiagMsgUID   = 64
	sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY
	inetDiagNoCookie = ^uint32(0)
)

// tcpOwner returns the uid owning the TCP socket whose local end is src and
// remote end dst (IPv4 or IPv6).
func (d *sockDiag) tcpOwner(src, dst *net.TCPAddr) (uint32, error) {
	family := uint8(unix.AF_INET6)
	s4, d4 := src.IP.To4(), dst.IP.To4()
	if s4 != nil && d4 != nil {
		family = unix.AF_INET
	}
	d.seq++
	var b [nlmsgHdrLen + inetDiagReqV2Len]byte
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], sockDiagByFamily)
	ne.PutUint16(b[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(b[8:], d.seq)
	r := b[nlmsgHdrLen:]
	r[0], r[1] = family, unix.IPPROTO_TCP
	ne.PutUint32(r[4:], 0xffffffff) // every state
	id := r[8:]
	binary.BigEndian.PutUint16(id[0:], uint16(src.Port))
	binary.BigEndian.PutUint16(id[2:], uint16(dst.Port))
	if family == unix.AF_INET {
		copy(id[4:], s4)
		copy(id[20:], d4)
	} else {
		copy(id[4:], src.IP.To16())
		copy(id[20:], dst.IP.To16())
	}
	ne.PutUint32(id[40:], inetDiagNoCookie)
	ne.PutUint32(id[44:], inetDiagNoCookie)
	if err := unix.Sendto(d.fd, b[:], 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("sock_diag: send: %w", err)
	}
	var resp [512]byte
	for {
		n, _, err := unix.Recvfrom(d.fd, resp[:], 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("sock_diag: receive: %w", err)
		}
		if n < nlmsgHdrLen {
			return 0, errors.New("sock_diag: short reply")
		}
		if ne.Uint32(resp[8:]) != d.seq {
			continue // a late answer to an earlier lookup
		}
		switch typ := ne.Uint16(resp[4:]); typ {
		case unix.NLMSG_ERROR:
			if n >= nlmsgHdrLen+4 {
				if errno := int32(ne.Uint32(resp[nlmsgHdrLen:])); errno != 0 {
					return 0, fmt.Errorf("sock_diag: %w", syscall.Errno(-errno))
				}
			}
			return 0, errors.New("sock_diag: no socket")
		case sockDiagByFamily:
			if n < nlmsgHdrLen+inetDiagMsgUID+4 {
				return 0, errors.New("sock_diag: short inet_diag_msg")
			}
			return ne.Uint32(resp[nlmsgHdrLen+inetDiagMsgUID:]), nil
		default:
			return 0, fmt.Errorf("sock_diag: reply type %d", typ)
		}
	}
}
