package adapter

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// LockDir holds the adapter locks. It is a runtime directory: a lock is
// an flock, released by the kernel when its holder dies, so a file left
// behind by a killed daemon blocks nothing.
var LockDir = "/run/ipvirt"

// Lock takes the host-wide lock on a for this process, or fails naming the
// daemon that holds it. A daemon that installs VIPs on an adapter
// reconciles the adapter's ipvirt addresses with its own leases; a second
// daemon on the same adapter would remove the first one's VIPs, so it must
// hold this lock before it touches the adapter. The lock is per network
// namespace (an adapter name means one interface only within one) and held
// until the process exits.
func Lock(a Adapter) (*os.File, error) {
	ns, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("adapter: lock %s: %w", a.Name, err)
	}
	ns = strings.Trim(strings.TrimPrefix(ns, "net:"), "[]")
	if err := os.MkdirAll(LockDir, 0o755); err != nil {
		return nil, fmt.Errorf("adapter: lock %s: %w", a.Name, err)
	}
	path := filepath.Join(LockDir, fmt.Sprintf("adapter-%s-%s.lock", ns, a.Name))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("adapter: lock %s: %w", a.Name, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("adapter %s is managed by another ipvirtd (pid %s, lock %s): two daemons on one adapter would remove each other's VIPs",
				a.Name, strings.TrimSpace(string(holder)), path)
		}
		return nil, fmt.Errorf("adapter: lock %s: %w", path, err)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return f, nil
}
