// Package client speaks the control protocol to ipvirtd: what ipvirtctl,
// the simulator and the tests use.
package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/ipvirt/ipvirt/backend/api"

	"github.com/ipvirt/ipvirt/backend/wire"
)

// SocketPath picks the daemon's socket: the flag if set, else
// $IPVIRT_SOCKET, else the default.
func SocketPath(flag string) string {
	if flag != "" {
		return flag
	}
	if env := os.Getenv("IPVIRT_SOCKET"); env != "" {
		return env
	}
	return api.DefaultSocket
}

// Client is one connection to the daemon. Not safe for concurrent use.
type Client struct {
	conn    net.Conn
	timeout time.Duration
}

// Dial connects to the daemon's socket.
func Dial(path string, timeout time.Duration) (*Client, error) {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("unix", path, time.Until(deadline))
		if err == nil {
			return &Client{conn: c, timeout: timeout}, nil
		}
		// A Unix socket whose backlog is full refuses at once (EAGAIN)
		// rather than queue the connect: while a flood fills it, the
		// daemon empties it within milliseconds, turning the flood away.
		// Root's places are kept for this moment; try again.
		if errors.Is(err, syscall.EAGAIN) && time.Until(deadline) > dialRetry {
			time.Sleep(dialRetry)
			continue
		}
		return nil, fmt.Errorf("cannot reach ipvirtd at %s: %w (is it running? set --socket or IPVIRT_SOCKET)", path, err)
	}
}

// dialRetry is the pause before connecting again to a full socket.
const dialRetry = 5 * time.Millisecond

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Call sends one request and returns the response frame; an ERROR frame is
// returned as a *wire.RemoteError.
func (c *Client) Call(op wire.Type, payload []byte) (wire.Frame, error) {
	c.conn.SetDeadline(time.Now().Add(c.timeout))
	if err := wire.WriteFrame(c.conn, op, payload); err != nil {
		return wire.Frame{}, fmt.Errorf("send: %w", err)
	}
	f, err := wire.ReadFrame(c.conn, wire.MaxResponsePayload)
	if err != nil {
		return wire.Frame{}, fmt.Errorf("receive: %w", err)
	}
	if f.Type == wire.RespError {
		code, msg, err := wire.ParseError(f.Payload)
		if err != nil {
			return wire.Frame{}, err
		}
		return wire.Frame{}, &wire.RemoteError{Code: code, Message: msg}
	}
	return f, nil
}

func (c *Client) callJSON(op wire.Type, payload []byte, v any) error {
	f, err := c.Call(op, payload)
	if err != nil {
		return err
	}
	if f.Type != wire.RespJSON {
		return fmt.Errorf("daemon answered type %d, want JSON", f.Type)
	}
	return json.Unmarshal(f.Payload, v)
}

// Query asks for the calling process's address, as the interceptors do.
func (c *Client) Query() (wire.Answer, error) {
	f, err := c.Call(wire.OpQuery, nil)
	if err != nil {
		return wire.Answer{}, err
	}
	if f.Type != wire.RespAnswer {
		return wire.Answer{}, fmt.Errorf("daemon answered type %d, want ANSWER", f.Type)
	}
	return wire.ParseAnswer(f.Payload)
}

// Whoami asks what the calling process would get, with its identity.
func (c *Client) Whoami() (api.WhoamiReport, error) {
	var r api.WhoamiReport
	return r, c.callJSON(wire.OpWhoami, nil, &r)
}

// Status returns the daemon's summary.
func (c *Client) Status() (api.StatusReport, error) {
	var r api.StatusReport
	return r, c.callJSON(wire.OpStatus, nil, &r)
}

// Sessions lists the sessions the caller may see.
func (c *Client) Sessions() ([]api.SessionReport, error) {
	var r []api.SessionReport
	return r, c.callJSON(wire.OpSessions, nil, &r)
}

// Farm lists the VIPs of every host of an etcd farm the caller may see.
func (c *Client) Farm() ([]api.FarmLease, error) {
	var r []api.FarmLease
	return r, c.callJSON(wire.OpFarm, nil, &r)
}

// Programs returns the effective per-program list.
func (c *Client) Programs() ([]api.ProgramEntry, error) {
	var r []api.ProgramEntry
	return r, c.callJSON(wire.OpProgramsList, nil, &r)
}

// AddProgram adds a program to the list (administrators only).
func (c *Client) AddProgram(path string) ([]api.ProgramEntry, error) {
	var r []api.ProgramEntry
	return r, c.callJSON(wire.OpProgramsAdd, []byte(path), &r)
}

// RemoveProgram removes a program from the list (administrators only).
func (c *Client) RemoveProgram(path string) ([]api.ProgramEntry, error) {
	var r []api.ProgramEntry
	return r, c.callJSON(wire.OpProgramsRemove, []byte(path), &r)
}

// Released is one lease ended by Release.
type Released struct {
	Holder string `json:"holder"`
	VIP    string `json:"vip"`
}

// Release ends every lease of a session (administrators only).
func (c *Client) Release(session string) ([]Released, error) {
	var r []Released
	return r, c.callJSON(wire.OpRelease, []byte(session), &r)
}

// SessionOpen registers the audit session the calling process is in
// (root only; what pam_exec runs at login). note goes to the daemon's log.
func (c *Client) SessionOpen(note string) (api.RegistrationReport, error) {
	var r api.RegistrationReport
	return r, c.callJSON(wire.OpSessionOpen, []byte(note), &r)
}

// SessionClose unregisters the calling process's audit session (root only;
// what pam_exec runs at logout).
func (c *Client) SessionClose(note string) (api.RegistrationReport, error) {
	var r api.RegistrationReport
	return r, c.callJSON(wire.OpSessionClose, []byte(note), &r)
}

// IsPermissionDenied reports whether err is the daemon refusing the caller.
func IsPermissionDenied(err error) bool {
	var re *wire.RemoteError
	return errors.As(err, &re) && re.Code == wire.CodePermissionDenied
}
