package bpf

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// Options configure Open. The zero value attaches at the host's cgroup2
// root, pins at /sys/fs/bpf/ipvirt and does not enforce.
type Options struct {
	// CgroupPath is the cgroup2 directory to attach to. Empty: the root of
	// the host's cgroup2 hierarchy, so every process on the host is covered
	// (a cgroup2 is mounted under /run/ipvirt if the host has none). A
	// subdirectory limits interception to the processes inside it.
	CgroupPath string
	// PinDir is the bpffs directory holding the pinned links and maps.
	// Empty: DefaultPinDir. Its parent must be on bpffs (Open mounts
	// bpffs at /sys/fs/bpf when needed).
	PinDir string
	// Enforce refuses (EPERM) binds and sendmsg source addresses that name
	// another holder's VIP or a pool address the caller does not hold, and
	// attaches the hooks that tag sockets and police packets (see
	// SetEnforce).
	Enforce bool
	// MachineIP is the host's own address: a bind to it by a holder becomes
	// a bind to the holder's VIP, like a bind to 0.0.0.0.
	MachineIP netip.Addr
	// Pool lists the address ranges VIPs come from (enforcement).
	Pool []Range
	// ReplaceStale makes Open tear down a pinned interceptor it cannot
	// adopt (another ABI after an upgrade, another cgroup) and attach
	// fresh, instead of returning ErrIncompatible.
	ReplaceStale bool
	// EventBuffer is the capacity of the Events channel (default 256).
	EventBuffer int
	// Logger receives warnings (default slog.Default()).
	Logger *slog.Logger
}

// Range is an inclusive range of IPv4 addresses.
type Range struct {
	Start, End netip.Addr
}

// Interceptor is the loaded and attached kernel interceptor. Its methods
// are safe for concurrent use.
type Interceptor struct {
	mu      sync.Mutex
	cgroup  string
	pinDir  string
	adopted bool
	ko      *kernelObjects
	lock    *lockedDir
	log     *slog.Logger

	rd     *ringbuf.Reader
	events chan Event
	done   chan struct{}
	wg     sync.WaitGroup
	closed bool
}

// Open loads the programs and attaches them to the cgroup, or adopts the
// ones a previous daemon left pinned at the pin directory (Adopted then
// reports true and the map entries are the previous daemon's: reconcile
// them with Entries). Errors caused by the host (not root, no BTF, no
// cgroup2) match ErrUnsupported.
func Open(opts Options) (*Interceptor, error) {
	if err := checkPrivileges(); err != nil {
		return nil, err
	}
	if err := checkBTF(); err != nil {
		return nil, err
	}
	want, err := settingsFor(opts)
	if err != nil {
		return nil, err
	}
	cgroup, err := cgroupRoot(opts.CgroupPath)
	if err != nil {
		return nil, err
	}
	pinDir := opts.PinDir
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	if !filepath.IsAbs(pinDir) {
		return nil, fmt.Errorf("bpf: pin directory %q is not absolute", pinDir)
	}
	pinDir = filepath.Clean(pinDir)
	if err := ensureBPFFS(pinDir); err != nil {
		return nil, err
	}
	_ = rlimit.RemoveMemlock() // no-op on kernels with memcg accounting
	spec, err := loadIntercept()
	if err != nil {
		return nil, fmt.Errorf("bpf: embedded objects: %w", err)
	}

	// One Open or Close at a time per bpffs directory: the adopt-or-create
	// decision must not race another daemon's.
	parent, err := lockDirWait(filepath.Dir(pinDir))
	if err != nil {
		return nil, err
	}
	defer parent.unlock()
	cleanupStale(pinDir)

	ic := &Interceptor{cgroup: cgroup, pinDir: pinDir, log: opts.Logger}
	if ic.log == nil {
		ic.log = slog.Default()
	}
	if _, err := os.Stat(pinDir); err == nil {
		ic.ko, ic.lock, err = adopt(spec, cgroup, pinDir)
		if errors.Is(err, ErrIncompatible) && opts.ReplaceStale {
			ic.log.Warn("bpf: replacing pinned interceptor", "err", err)
			if err := removePins(pinDir); err != nil {
				return nil, err
			}
		} else if err != nil {
			return nil, err
		} else {
			ic.adopted = true
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("bpf: stat %s: %w", pinDir, err)
	}
	if ic.ko == nil {
		if ic.ko, ic.lock, err = attachFresh(spec, cgroup, pinDir, opts.Enforce); err != nil {
			return nil, err
		}
	}
	fail := func(err error) (*Interceptor, error) {
		if ic.adopted {
			ic.ko.release()
		} else {
			ic.ko.detach()
			removePins(pinDir)
		}
		ic.lock.unlock()
		return nil, err
	}
	if ic.adopted {
		// First-use assignment goes on as the previous daemon set it
		// until this one's SetFirstUse: a restart is no window.
		if prev, err := readSettings(ic.ko.maps["config"]); err == nil {
			want.Flags |= prev.Flags & (cfgAssign | cfgTrustPAM | cfgModeProgram | cfgDenyExhausted)
		}
	}
	// An adopted interceptor's enforcement hooks are as its daemon left
	// them: attach them before enforcement starts, detach them once it
	// has stopped.
	if ic.adopted && opts.Enforce {
		if err := ic.ko.setEnforcement(true, cgroup, pinDir); err != nil {
			return fail(err)
		}
	}
	if err := ic.applySettings(want); err != nil {
		return fail(err)
	}
	if ic.adopted && !opts.Enforce {
		if err := ic.ko.setEnforcement(false, cgroup, pinDir); err != nil {
			return fail(err)
		}
	}
	rd, err := ringbuf.NewReader(ic.ko.maps["events"])
	if err != nil {
		return fail(fmt.Errorf("bpf: event reader: %w", err))
	}
	n := opts.EventBuffer
	if n <= 0 {
		n = 256
	}
	ic.rd, ic.events, ic.done = rd, make(chan Event, n), make(chan struct{})
	ic.wg.Add(1)
	go func() {
		defer ic.wg.Done()
		readEvents(rd, ic.events, ic.done, ic.log)
	}()
	return ic, nil
}

// Adopted reports whether Open took over a pinned interceptor instead of
// attaching a new one.
func (ic *Interceptor) Adopted() bool { return ic.adopted }

// SessionEvents reports whether the kernel tells of new audit sessions
// (EventSession), so that a daemon can allocate before a session's first
// connect. Some kernels refuse the fexit program; interception works
// without it, and the daemon learns of a session at its first socket call
// (EventMiss) or its first query instead.
func (ic *Interceptor) SessionEvents() bool {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if ic.ko == nil {
		return false
	}
	_, ok := ic.ko.links["new_session"]
	return ok
}

// CgroupPath is the cgroup2 directory the programs are attached to.
func (ic *Interceptor) CgroupPath() string { return ic.cgroup }

// PinDir is the bpffs directory holding the pins.
func (ic *Interceptor) PinDir() string { return ic.pinDir }

// Events delivers the kernel's reports. The channel is closed by Close and
// Release. Read it continuously: while it is full, new events are dropped
// in the kernel and counted in Stats.EventsLost.
func (ic *Interceptor) Events() <-chan Event { return ic.events }

func (ic *Interceptor) stopEvents() {
	close(ic.done)
	ic.rd.Close()
	ic.wg.Wait()
}

// Close detaches every program, removes the pins and frees the maps: no
// trace of the interceptor stays in the kernel. A daemon that stops for
// good calls Close; one that restarts in place may call Release instead.
func (ic *Interceptor) Close() error {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if ic.closed {
		return nil
	}
	ic.closed = true
	ic.stopEvents()

	parent, err := lockDirWait(filepath.Dir(ic.pinDir))
	if err != nil {
		return err
	}
	defer parent.unlock()
	// Rename first so that a crash half-way through leaves a directory no
	// one adopts; the next Open deletes it.
	dir := ic.pinDir
	dying := ic.pinDir + "_dying_" + strconv.Itoa(os.Getpid())
	if err := unix.Renameat2(unix.AT_FDCWD, ic.pinDir, unix.AT_FDCWD, dying, unix.RENAME_NOREPLACE); err == nil {
		dir = dying
	} else {
		ic.log.Warn("bpf: rename pin directory before removal", "dir", ic.pinDir, "err", err)
	}
	errs := []error{ic.ko.detach(), removePins(dir)}
	ic.lock.unlock()
	return errors.Join(errs...)
}

// Release closes this process's handles but leaves the programs attached
// and pinned, for a daemon restart without an interception gap: the next
// Open adopts them.
func (ic *Interceptor) Release() error {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if ic.closed {
		return nil
	}
	ic.closed = true
	ic.stopEvents()
	ic.ko.release()
	ic.lock.unlock()
	return nil
}
