// Package cgroup finds the host's cgroup2 hierarchy and makes subtrees in
// it: the scope a daemon limits itself to, and the private subtree a
// scenario or test runs its sessions in, so that it sees none of the
// host's other sessions and they see none of its programs.
package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// FindMount returns the first cgroup2 mount point in mountinfo.
func FindMount(mountinfo io.Reader) (string, bool) {
	sc := bufio.NewScanner(mountinfo)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw"
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fields := strings.Fields(pre)
		fstype := strings.Fields(post)
		if len(fields) < 5 || len(fstype) < 1 || fstype[0] != "cgroup2" {
			continue
		}
		return unescapeMount(fields[4]), true
	}
	return "", false
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			v := 0
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + int(c-'0')
			}
			if ok {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Mount is the host's cgroup2 mount point.
func Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("cgroup: %w", err)
	}
	defer f.Close()
	m, ok := FindMount(f)
	if !ok {
		return "", errors.New("cgroup: no cgroup2 hierarchy is mounted")
	}
	return m, nil
}

// Group is a cgroup2 subtree made for one run.
type Group struct {
	Path string // as /proc/PID/cgroup names it: "/ipvirt-sim-123-1"
	Dir  string // its directory under the mount
}

// Create makes the subtree name directly under the cgroup2 root.
func Create(name string) (*Group, error) {
	m, err := Mount()
	if err != nil {
		return nil, err
	}
	g := &Group{Path: "/" + name, Dir: filepath.Join(m, name)}
	if err := os.Mkdir(g.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	return g, nil
}

// Wrap makes argv join the group before it runs: its first process writes
// its own pid to cgroup.procs and execs argv, so every process it starts is
// born inside.
func (g *Group) Wrap(argv []string) []string {
	return append([]string{"/bin/sh", "-c", `echo $$ > "$0" && exec "$@"`, filepath.Join(g.Dir, "cgroup.procs")}, argv...)
}

// Remove kills whatever still runs in the group and removes it.
func (g *Group) Remove() error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(filepath.Join(g.Dir, "cgroup.procs"))
		pids := strings.Fields(string(b))
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		err := os.Remove(g.Dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup: remove %s: %w (still in it: %v)", g.Dir, err, pids)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
