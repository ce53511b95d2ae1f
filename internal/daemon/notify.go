package daemon

import (
	"net"
	"os"
)

// notifyReady tells a supervisor that the daemon serves: systemd's
// Type=notify protocol, one datagram to $NOTIFY_SOCKET. systemd holds back a
// reload (SIGHUP) until it has this, so no reload lands while the daemon is
// still opening its store; other supervisors leave the variable unset.
func notifyReady() error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' { // abstract namespace
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte("READY=1"))
	return err
}
