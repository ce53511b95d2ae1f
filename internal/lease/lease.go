// Package lease holds the value types shared by every part of the backend:
// who holds a virtual IP (a Holder) and what it holds (a Lease).
//
// They are small comparable values, in the spirit of net/netip, so that they
// can be map keys, cross goroutines by value and be persisted byte for byte.
package lease

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/ipvirt/ipvirt/internal/pool"
)

// SessionKind says which kernel notion of "login session" a SessionID is.
type SessionKind uint8

const (
	// KindNone marks the zero Session: a process in no login session
	// (Windows' session 0: daemons, cron, system services).
	KindNone SessionKind = iota
	// KindAudit is the kernel audit session (/proc/PID/sessionid), set by
	// pam_loginuid at every login. Ids are never reused before a reboot.
	KindAudit
	// KindPOSIX is the POSIX session (getsid): the leader's pid. The kernel
	// reuses it only after every process of the session is gone, so within
	// one daemon lifetime it is unique among live sessions; across a daemon
	// restart a session that ended and a new one that drew the same pid
	// cannot be told apart (use audit sessions where that matters).
	KindPOSIX
	// KindStock is no login session: a lease the daemon acquired ahead
	// for the kernel interceptor to hand out on a session's first
	// connect (its ID numbers the stock place). The kernel assigns the
	// address; the daemon then transfers the lease to the real holder.
	KindStock
)

func (k SessionKind) String() string {
	switch k {
	case KindAudit:
		return "audit"
	case KindPOSIX:
		return "posix"
	case KindStock:
		return "stock"
	default:
		return "none"
	}
}

// Session identifies one login session on this boot of the host.
type Session struct {
	Kind SessionKind
	ID   uint32
}

// Valid reports whether s names a login session (or a stock place).
func (s Session) Valid() bool { return s.Kind != KindNone }

// Stock reports whether s is a stock place rather than a login session.
func (s Session) Stock() bool { return s.Kind == KindStock }

// String is the stable text form, also used in store keys: "a:42" (audit),
// "p:1234" (POSIX), "s:3" (stock) or "none".
func (s Session) String() string {
	switch s.Kind {
	case KindAudit:
		return "a:" + strconv.FormatUint(uint64(s.ID), 10)
	case KindPOSIX:
		return "p:" + strconv.FormatUint(uint64(s.ID), 10)
	case KindStock:
		return "s:" + strconv.FormatUint(uint64(s.ID), 10)
	default:
		return "none"
	}
}

// ParseSession is the inverse of Session.String.
func ParseSession(text string) (Session, error) {
	if text == "none" {
		return Session{}, nil
	}
	kind, rest, ok := strings.Cut(text, ":")
	if !ok {
		return Session{}, fmt.Errorf("lease: session %q: missing kind prefix", text)
	}
	var k SessionKind
	switch kind {
	case "a":
		k = KindAudit
	case "p":
		k = KindPOSIX
	case "s":
		k = KindStock
	default:
		return Session{}, fmt.Errorf("lease: session %q: unknown kind %q", text, kind)
	}
	id, err := strconv.ParseUint(rest, 10, 32)
	if err != nil {
		return Session{}, fmt.Errorf("lease: session %q: %w", text, err)
	}
	return Session{Kind: k, ID: uint32(id)}, nil
}

// Holder is who holds a VIP: a whole session (per-session mode) or one
// program in a session (per-program mode, Program is the executable path).
type Holder struct {
	Session Session
	Program string
}

// PerProgram reports whether h is a (session, program) holder.
func (h Holder) PerProgram() bool { return h.Program != "" }

// Key is the stable text form used as the store key and in logs:
// "a:42" or "a:42|/usr/bin/psql". Program paths never contain '|' in
// practice; ParseHolder splits at the first one, so one that does still
// round-trips.
func (h Holder) Key() string {
	if h.Program == "" {
		return h.Session.String()
	}
	return h.Session.String() + "|" + h.Program
}

func (h Holder) String() string { return h.Key() }

// ParseHolder is the inverse of Holder.Key.
func ParseHolder(key string) (Holder, error) {
	sess, prog, _ := strings.Cut(key, "|")
	s, err := ParseSession(sess)
	if err != nil {
		return Holder{}, err
	}
	return Holder{Session: s, Program: prog}, nil
}

// Lease is one VIP granted to one holder.
type Lease struct {
	Holder Holder
	Addr   netip.Addr
	// Subnet is the VIP's network: its Bits() give the subnet mask handed to
	// the caller (the static pool's subnet_mask, or DHCP option 1).
	Subnet netip.Prefix
	// Source names the address source that granted it ("static", "dhcp").
	Source  string
	Granted time.Time
	// Expiry is when the address stops being valid unless renewed. Zero means
	// the address is held for as long as the holder lives (static pool).
	Expiry time.Time
	// UID is the session's user (the audit loginuid, or the caller's uid in
	// POSIX mode), kept for reports.
	UID uint32
	// State is the source's private, persisted state (DHCP: client id,
	// server id, T1/T2). Opaque to everything but the source.
	State []byte
}

// Mask returns the subnet mask as an address (255.255.255.0 for a /24).
func (l Lease) Mask() netip.Addr { return PrefixMask(l.Subnet.Bits()) }

// PrefixMask returns the IPv4 mask of a prefix length, or the zero Addr if
// bits is outside 0..32.
func PrefixMask(bits int) netip.Addr {
	if bits < 0 || bits > 32 {
		return netip.Addr{}
	}
	var m uint32
	if bits > 0 {
		m = ^uint32(0) << (32 - bits)
	}
	return pool.FromV4(m)
}
