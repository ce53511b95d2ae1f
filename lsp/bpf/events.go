package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"

	"github.com/cilium/ebpf/ringbuf"
)

// NoSession is the audit session id of a task outside any login session
// (AUDIT_SID_UNSET), also used in Event.Owner when no holder is known.
const NoSession uint32 = 0xFFFFFFFF

// EventKind says what an Event reports.
type EventKind uint32

const (
	// EventSession: a task wrote /proc/self/loginuid and got a new audit
	// session (Session, LoginUID). Sent before the session's first
	// connect can happen, in the normal order of a login (pam_loginuid
	// runs before the shell starts).
	EventSession EventKind = 1
	// EventExec: a program in the programs-of-interest set was executed
	// (Session, PID, Exe).
	EventExec EventKind = 2
	// EventMiss: a session that the daemon has not decided about yet made
	// its first socket call (Addr, Port, Hook): it left from the machine
	// IP. Sent once per session; SetSession, SetProgram and Decided end
	// the pending state.
	EventMiss EventKind = 3
	// EventDenied: enforcement refused a bind or a sendmsg source address
	// with EPERM, or dropped a packet (HookEgress, HookIngress: Session,
	// PID, UID, Exe and Comm are then the socket's creator's, reported at
	// most once a second per socket) (Session, PID, UID, Addr, Port, Hook,
	// Owner).
	EventDenied EventKind = 4
	// EventAssigned: a holder's first socket call took Addr from the
	// stock (Session, LoginUID, PID, Exe: the holder is the session, or
	// in per-program mode the session and Exe).
	EventAssigned EventKind = 5
	// EventEmpty: a holder's first call found the stock empty and left
	// from the machine IP (or was refused): at most once a second per
	// holder.
	EventEmpty EventKind = 6
)

func (k EventKind) String() string {
	switch k {
	case EventSession:
		return "session"
	case EventExec:
		return "exec"
	case EventMiss:
		return "miss"
	case EventDenied:
		return "denied"
	case EventAssigned:
		return "assigned"
	case EventEmpty:
		return "empty"
	}
	return fmt.Sprintf("kind(%d)", uint32(k))
}

// Hook is the socket operation an event comes from.
type Hook uint16

const (
	HookNone Hook = iota
	HookConnect4
	HookSendmsg4
	HookBind4
	HookConnect6
	HookSendmsg6
	HookBind6
	// HookEgress: a packet leaving a socket carried another holder's
	// address as its source (IP_MULTICAST_IF, a ping or raw socket).
	HookEgress
	// HookIngress: a packet for another holder's address arrived at a
	// socket that is not the holder's (a wildcard listener).
	HookIngress
)

var hookNames = [...]string{"none", "connect4", "sendmsg4", "bind4", "connect6", "sendmsg6", "bind6", "egress", "ingress"}

func (h Hook) String() string {
	if int(h) < len(hookNames) {
		return hookNames[h]
	}
	return fmt.Sprintf("hook(%d)", uint16(h))
}

// Event is one report from the kernel programs.
type Event struct {
	Kind     EventKind
	Session  uint32 // audit session id of the task (NoSession: none)
	PID      uint32 // thread group id
	UID      uint32 // real uid of the task
	LoginUID uint32 // audit loginuid of the task
	Addr     netip.Addr
	Port     uint16
	Hook     Hook
	Owner    uint32 // EventDenied: session holding Addr, NoSession if in the pool only
	Exe      ExeID  // the task's executable
	Comm     string // the task's command name (up to 15 bytes)
}

// eventSize is sizeof(struct event) in intercept.bpf.c.
const eventSize = 64

func parseEvent(raw []byte) (Event, error) {
	if len(raw) != eventSize {
		return Event{}, fmt.Errorf("bpf: event of %d bytes, want %d (stale pinned programs?)", len(raw), eventSize)
	}
	le := binary.LittleEndian // bpfel objects only: the host is little-endian
	e := Event{
		Kind:     EventKind(le.Uint32(raw[0:])),
		Session:  le.Uint32(raw[4:]),
		PID:      le.Uint32(raw[8:]),
		UID:      le.Uint32(raw[12:]),
		LoginUID: le.Uint32(raw[16:]),
		Port:     le.Uint16(raw[24:]),
		Hook:     Hook(le.Uint16(raw[26:])),
		Owner:    le.Uint32(raw[28:]),
		Exe:      ExeID{Ino: le.Uint64(raw[32:]), Dev: le.Uint32(raw[40:])},
	}
	if a := [4]byte(raw[20:24]); a != [4]byte{} {
		e.Addr = netip.AddrFrom4(a)
	}
	comm := raw[48:64]
	if i := bytes.IndexByte(comm, 0); i >= 0 {
		comm = comm[:i]
	}
	e.Comm = string(comm)
	return e, nil
}

// readEvents forwards ring buffer records to out until the reader is
// closed. A slow consumer blocks it; the kernel then drops events and counts
// them (Stats.EventsLost) instead of slowing any socket call.
func readEvents(rd *ringbuf.Reader, out chan<- Event, done <-chan struct{}, log *slog.Logger) {
	defer close(out)
	var rec ringbuf.Record
	for {
		if err := rd.ReadInto(&rec); err != nil {
			if errors.Is(err, ringbuf.ErrClosed) || errors.Is(err, os.ErrClosed) {
				return
			}
			log.Warn("bpf: read event", "err", err)
			continue
		}
		e, err := parseEvent(rec.RawSample)
		if err != nil {
			log.Warn("bpf: bad event", "err", err)
			continue
		}
		select {
		case out <- e:
		case <-done:
			return
		}
	}
}
