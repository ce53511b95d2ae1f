package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ipvirt/ipvirt/internal/cgroup"
	"golang.org/x/sys/unix"
)

const (
	// DefaultPinDir is where Open pins links and maps when Options.PinDir
	// is empty.
	DefaultPinDir = "/sys/fs/bpf/ipvirt"
	// bpffsRoot is mounted by Open when the default pin directory is used
	// and no bpffs is mounted there.
	bpffsRoot = "/sys/fs/bpf"
	// fallbackCgroup2 is where Open mounts a cgroup2 hierarchy on a host
	// that has none mounted (a pure cgroup v1 host).
	fallbackCgroup2 = "/run/ipvirt/cgroup2"
	kernelBTF       = "/sys/kernel/btf/vmlinux"
)

// checkPrivileges fails when the process cannot load and attach the
// programs: cgroup hooks need CAP_NET_ADMIN, BPF needs CAP_BPF, reading
// the current task through BTF and tracing need CAP_PERFMON (CAP_SYS_ADMIN
// stands in for the last two on any kernel).
func checkPrivileges() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return unsupported("capabilities", "capget: %w", err)
	}
	has := func(c uint) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
	admin := has(unix.CAP_SYS_ADMIN)
	var missing []string
	if !has(unix.CAP_NET_ADMIN) {
		missing = append(missing, "CAP_NET_ADMIN")
	}
	if !admin && !has(unix.CAP_BPF) {
		missing = append(missing, "CAP_BPF")
	}
	if !admin && !has(unix.CAP_PERFMON) {
		missing = append(missing, "CAP_PERFMON")
	}
	if len(missing) == 0 {
		return nil
	}
	req := "capabilities"
	if os.Geteuid() != 0 {
		req = "root"
	}
	return unsupported(req, "uid %d lacks %s (run ipvirtd as root)", os.Geteuid(), strings.Join(missing, ", "))
}

func checkBTF() error {
	if _, err := os.Stat(kernelBTF); err != nil {
		return unsupported("btf", "kernel built without CONFIG_DEBUG_INFO_BTF (%v)", err)
	}
	return nil
}

func fsMagic(path string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, err
	}
	return int64(st.Type), nil
}

// cgroupRoot resolves Options.CgroupPath: the given directory (which must be
// on cgroup2), or the host's cgroup2 root, mounting one under /run/ipvirt
// when the host has none.
// CgroupDir is the directory of a cgroup2 path (as /proc/PID/cgroup names
// it, "/user.slice") under the host's cgroup2 mount, for Options.CgroupPath.
func CgroupDir(path string) (string, error) {
	root, err := cgroupRoot("")
	if err != nil {
		return "", err
	}
	dir := filepath.Join(root, filepath.Clean("/"+path))
	if _, err := os.Stat(dir); err != nil {
		return "", unsupported("cgroup2", "scope %s: %w", path, err)
	}
	return dir, nil
}

func cgroupRoot(path string) (string, error) {
	if path == "" {
		f, err := os.Open("/proc/self/mountinfo")
		if err != nil {
			return "", unsupported("cgroup2", "read mountinfo: %w", err)
		}
		p, ok := cgroup.FindMount(f)
		f.Close()
		if ok {
			path = p
		} else {
			if err := os.MkdirAll(fallbackCgroup2, 0o755); err != nil {
				return "", unsupported("cgroup2", "no cgroup2 mounted and cannot create %s: %w", fallbackCgroup2, err)
			}
			if err := unix.Mount("cgroup2", fallbackCgroup2, "cgroup2", 0, ""); err != nil {
				return "", unsupported("cgroup2", "no cgroup2 mounted and mount at %s failed: %w", fallbackCgroup2, err)
			}
			path = fallbackCgroup2
		}
	}
	magic, err := fsMagic(path)
	if err != nil {
		return "", unsupported("cgroup2", "cgroup path %s: %w", path, err)
	}
	if magic != unix.CGROUP2_SUPER_MAGIC {
		return "", unsupported("cgroup2", "cgroup path %s is not on a cgroup2 filesystem (magic %#x)", path, magic)
	}
	return path, nil
}

// cgroupID is the id the kernel reports in a cgroup link's info: the
// kernfs node id, which is the directory's inode number on cgroup2.
func cgroupID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("bpf: stat cgroup %s: %w", path, err)
	}
	return st.Ino, nil
}

// ensureBPFFS checks that pinDir's parent is on bpffs, mounting bpffs at
// /sys/fs/bpf when that is the parent and nothing is mounted there yet.
func ensureBPFFS(pinDir string) error {
	parent := filepath.Dir(pinDir)
	magic, err := fsMagic(parent)
	if err == nil && magic == unix.BPF_FS_MAGIC {
		return nil
	}
	if filepath.Clean(parent) != bpffsRoot {
		if err != nil {
			return unsupported("bpffs", "pin directory parent %s: %w", parent, err)
		}
		return unsupported("bpffs", "pin directory parent %s is not on bpffs (magic %#x); mount -t bpf bpf %s", parent, magic, parent)
	}
	// Two processes mounting at once would stack two bpffs instances and
	// hide the first one's pins: serialise on a lock file and re-check.
	if err := os.MkdirAll("/run/ipvirt", 0o755); err != nil {
		return unsupported("bpffs", "create /run/ipvirt: %w", err)
	}
	lock, err := os.OpenFile("/run/ipvirt/bpffs.lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return unsupported("bpffs", "open mount lock: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return unsupported("bpffs", "lock %s: %w", lock.Name(), err)
	}
	if magic, err := fsMagic(bpffsRoot); err == nil && magic == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := os.MkdirAll(bpffsRoot, 0o755); err != nil {
		return unsupported("bpffs", "create %s: %w", bpffsRoot, err)
	}
	if err := unix.Mount("bpf", bpffsRoot, "bpf", 0, "mode=0700"); err != nil {
		return unsupported("bpffs", "mount bpffs at %s: %w", bpffsRoot, err)
	}
	return nil
}

// lockedDir is a directory held with an exclusive flock: the pin directory's
// owner holds it for the Interceptor's lifetime, so a second daemon cannot
// adopt what a live one is using, and a SIGKILLed owner releases it.
type lockedDir struct {
	f *os.File
}

func tryLockDir(path string) (*lockedDir, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrBusy, path)
		}
		return nil, fmt.Errorf("bpf: lock %s: %w", path, err)
	}
	return &lockedDir{f: f}, nil
}

func lockDirWait(path string) (*lockedDir, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("bpf: lock %s: %w", path, err)
	}
	return &lockedDir{f: f}, nil
}

func (l *lockedDir) unlock() {
	if l != nil && l.f != nil {
		l.f.Close() // closing the last fd drops the flock
		l.f = nil
	}
}
