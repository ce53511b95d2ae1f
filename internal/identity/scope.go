package identity

import (
	"bytes"
	"fmt"
	"strings"
)

// Cgroup returns pid's cgroup2 path ("/user.slice/user-1000.slice/..."),
// the "0::" line of /proc/PID/cgroup.
func (p Proc) Cgroup(pid int) (string, error) {
	var buf [512]byte
	b, err := p.readSmall(pid, "cgroup", buf[:])
	if err != nil {
		return "", err
	}
	for line := range bytes.SplitSeq(b, []byte{'\n'}) {
		if path, ok := bytes.CutPrefix(line, []byte("0::")); ok {
			return string(path), nil
		}
	}
	return "", fmt.Errorf("identity: /proc/%d/cgroup has no cgroup2 line", pid)
}

// InScope reports whether the cgroup path lies in scope (a cgroup path
// itself, "/" or "" for the whole host).
func InScope(path, scope string) bool {
	if scope == "" || scope == "/" {
		return true
	}
	return path == scope || strings.HasPrefix(path, scope+"/")
}

// inScope reports whether pid is in the resolver's scope, and its cgroup
// when it is not. A process whose cgroup cannot be read (it exited) is out.
func (r Resolver) inScope(pid int) (bool, string) {
	if r.Scope == "" || r.Scope == "/" {
		return true, ""
	}
	cg, err := r.Proc.Cgroup(pid)
	if err != nil {
		return false, "?"
	}
	return InScope(cg, r.Scope), cg
}
