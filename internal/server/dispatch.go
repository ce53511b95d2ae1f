package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ipvirt/ipvirt/backend/api"
	"github.com/ipvirt/ipvirt/backend/wire"
	"github.com/ipvirt/ipvirt/internal/alloc"
	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/lease"
)

func opName(t wire.Type) string {
	switch t {
	case wire.OpQuery:
		return "query"
	case wire.OpWhoami:
		return "whoami"
	case wire.OpStatus:
		return "status"
	case wire.OpSessions:
		return "sessions"
	case wire.OpProgramsList:
		return "programs-list"
	case wire.OpProgramsAdd:
		return "programs-add"
	case wire.OpProgramsRemove:
		return "programs-remove"
	case wire.OpRelease:
		return "release"
	case wire.OpSessionOpen:
		return "session-open"
	case wire.OpSessionClose:
		return "session-close"
	case wire.OpFarm:
		return "farm"
	default:
		return "unknown"
	}
}

func errReply(code uint16, format string, args ...any) (wire.Type, []byte) {
	return wire.RespError, wire.AppendError(nil, code, fmt.Sprintf(format, args...))
}

func jsonReply(v any) (wire.Type, []byte) {
	b, err := json.Marshal(v)
	if err != nil {
		return errReply(wire.CodeInternal, "encode reply: %v", err)
	}
	return wire.RespJSON, b
}

func (s *Unix) dispatch(c identity.Caller, f wire.Frame) (wire.Type, []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), dispatchTimeout)
	defer cancel()
	admin := c.UID == 0 || s.Backend.IsAdmin(c.UID)
	switch f.Type {
	case wire.OpQuery:
		return wire.RespAnswer, wire.AppendAnswer(nil, s.toWire(c, s.Backend.Query(ctx, c)))
	case wire.OpWhoami:
		return jsonReply(s.whoami(c, s.Backend.Query(ctx, c)))
	case wire.OpStatus:
		return jsonReply(s.Backend.Status())
	case wire.OpSessions:
		var only *uint32
		if !admin {
			only = &c.UID
		}
		return jsonReply(s.Backend.Sessions(only))
	case wire.OpFarm:
		list, err := s.Backend.Farm(ctx)
		if err != nil {
			return errReply(wire.CodeBadRequest, "farm: %v", err)
		}
		if !admin {
			mine := list[:0]
			for _, l := range list {
				if l.UID == c.UID && l.Bad == "" {
					mine = append(mine, l)
				}
			}
			list = mine
		}
		if list == nil {
			list = []api.FarmLease{}
		}
		return jsonReply(list)
	case wire.OpProgramsList:
		return jsonReply(s.Backend.Programs())
	case wire.OpProgramsAdd, wire.OpProgramsRemove:
		if !admin {
			return errReply(wire.CodePermissionDenied, "programs: only root and administrators may change the program list (you are %s)", s.Backend.UserName(c.UID))
		}
		path := string(f.Payload)
		var list []api.ProgramEntry
		var err error
		if f.Type == wire.OpProgramsAdd {
			list, err = s.Backend.AddProgram(path)
		} else {
			list, err = s.Backend.RemoveProgram(path)
		}
		if err != nil {
			return errReply(wire.CodeBadRequest, "%v", err)
		}
		return jsonReply(list)
	case wire.OpRelease:
		if !admin {
			return errReply(wire.CodePermissionDenied, "release: only root and administrators may release sessions (you are %s)", s.Backend.UserName(c.UID))
		}
		sess, err := ParseSessionArg(string(f.Payload))
		if err != nil {
			return errReply(wire.CodeBadRequest, "release: %v", err)
		}
		released := s.Backend.ReleaseSession(sess)
		if len(released) == 0 {
			return errReply(wire.CodeNotFound, "release: session %s holds no VIP", sess)
		}
		out := make([]api.Released, 0, len(released))
		for _, l := range released {
			out = append(out, api.Released{Holder: l.Holder.Key(), VIP: l.Addr.String()})
		}
		return jsonReply(out)
	case wire.OpSessionOpen, wire.OpSessionClose:
		return s.registration(c, f)
	default:
		return errReply(wire.CodeBadRequest, "unknown request type %d", f.Type)
	}
}

// registration answers SESSION_OPEN and SESSION_CLOSE. Root alone may
// register, not administrators: under session_trust: pam a registration
// is what makes a session a login, and PAM runs its session stack as root.
func (s *Unix) registration(c identity.Caller, f wire.Frame) (wire.Type, []byte) {
	name := "session open"
	if f.Type == wire.OpSessionClose {
		name = "session close"
	}
	if c.UID != 0 {
		return errReply(wire.CodePermissionDenied, "%s: only root may register login sessions (pam_exec runs it as root); you are uid %d", name, c.UID)
	}
	note := string(f.Payload)
	var r api.RegistrationReport
	var err error
	if f.Type == wire.OpSessionOpen {
		r, err = s.Backend.OpenSession(c, note)
	} else {
		r, err = s.Backend.CloseSession(c, note)
	}
	switch {
	case errors.Is(err, ErrNotPermitted):
		return errReply(wire.CodePermissionDenied, "%s: %v", name, err)
	case err != nil:
		return errReply(wire.CodeBadRequest, "%s: %v", name, err)
	}
	return jsonReply(r)
}

// ErrNotPermitted, wrapped in a Backend's error, makes the reply
// permission-denied rather than bad-request.
var ErrNotPermitted = errors.New("not permitted")

// ParseSessionArg reads a session as given on the command line: a bare
// number is an audit session id, or the text form a:42 / p:1234.
func ParseSessionArg(s string) (lease.Session, error) {
	s = strings.TrimSpace(s)
	if id, err := strconv.ParseUint(s, 10, 32); err == nil {
		return lease.Session{Kind: lease.KindAudit, ID: uint32(id)}, nil
	}
	sess, err := lease.ParseSession(s)
	if err != nil || !sess.Valid() || sess.Stock() {
		return lease.Session{}, fmt.Errorf("%q is not a session id (write 42, a:42 or p:1234)", s)
	}
	return sess, nil
}

func (s *Unix) toWire(c identity.Caller, a alloc.Answer) wire.Answer {
	w := wire.Answer{Kind: a.Kind, MachineIP: s.Backend.MIP(), TTL: uint32(a.TTL / time.Second),
		Session: wire.NoSession, Reason: a.Reason}
	if c.Session.Valid() {
		w.Session = c.Session.ID
	}
	if a.Kind == wire.KindVIP {
		w.VIP, w.Prefix = a.Lease.Addr, uint8(a.Lease.Subnet.Bits())
		if !a.Lease.Expiry.IsZero() {
			w.Expiry = a.Lease.Expiry.Unix()
		}
	}
	return w
}

func (s *Unix) whoami(c identity.Caller, a alloc.Answer) api.WhoamiReport {
	r := api.WhoamiReport{PID: c.PID, UID: c.UID, GID: c.GID, Session: c.Session.String(), SessionUID: c.SessionUID,
		User: s.Backend.UserName(c.SessionUID), Exe: c.Exe, Result: a.Kind.String(), MachineIP: s.Backend.MIP().String(),
		Rule: string(a.Rule), Reason: a.Reason, TTLSeconds: int(a.TTL / time.Second)}
	if a.Kind == wire.KindVIP {
		r.VIP, r.Prefix, r.Mask = a.Lease.Addr.String(), a.Lease.Subnet.Bits(), a.Lease.Mask().String()
		r.Holder, r.Expiry = a.Holder.Key(), a.Lease.Expiry
	}
	return r
}
