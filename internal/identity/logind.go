package identity

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// LogindDir is where systemd-logind describes its sessions. Logind names a
// session by its audit session id when the login went through pam_loginuid,
// so an audit session id finds its file directly.
const LogindDir = "/run/systemd/sessions"

// LogindSession is the part of a logind session file shown in reports.
type LogindSession struct {
	User       string // user name
	RemoteHost string // where the session was opened from (ssh, xrdp)
	Type       string // tty, x11, wayland, ...
	Service    string // PAM service: sshd, xrdp-sesman, login
}

// ReadLogind returns what logind records of session id; ok is false when
// there is no such file (no logind on the host, or not a logind session).
// The backend never depends on it.
func ReadLogind(dir string, id uint32) (LogindSession, bool) {
	f, err := os.Open(filepath.Join(dir, strconv.FormatUint(uint64(id), 10)))
	if err != nil {
		return LogindSession{}, false
	}
	defer f.Close()
	var s LogindSession
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		switch k {
		case "USER":
			s.User = v
		case "REMOTE_HOST":
			s.RemoteHost = v
		case "TYPE":
			s.Type = v
		case "SERVICE":
			s.Service = v
		}
	}
	return s, sc.Err() == nil
}
