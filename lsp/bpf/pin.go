package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// abiVersion must equal IPVIRT_ABI in intercept.bpf.c (a test checks it).
// It is stored in the config map so that a daemon never adopts pinned
// programs whose maps mean something else.
const abiVersion = 3

// The pin directory holds one file per map ("map_<name>") and per link
// ("link_<hook>"). It is created complete under a staging name and renamed
// into place, so a pin directory that exists is never half populated; only
// the links of enforceHooks come and go later, with enforcement.
// bpffs refuses names with a dot (EPERM), hence "_staging_", "_dying_".
var mapNames = []string{"sessions", "programs", "owners", "interest", "pending", "config", "counters", "events", "sock_tags",
	"sock_slots", "stock", "admins", "registered", "empty_reported"}

type cgroupHook struct {
	name   string
	attach ebpf.AttachType
	prog   func(*interceptPrograms) *ebpf.Program // its program is ipvirt_<name> in the objects
}

var cgroupHooks = []cgroupHook{
	{"connect4", ebpf.AttachCGroupInet4Connect, func(p *interceptPrograms) *ebpf.Program { return p.IpvirtConnect4 }},
	{"sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, func(p *interceptPrograms) *ebpf.Program { return p.IpvirtSendmsg4 }},
	{"bind4", ebpf.AttachCGroupInet4Bind, func(p *interceptPrograms) *ebpf.Program { return p.IpvirtBind4 }},
	{"connect6", ebpf.AttachCGroupInet6Connect, func(p *interceptPrograms) *ebpf.Program { return p.IpvirtConnect6 }},
	{"sendmsg6", ebpf.AttachCGroupUDP6Sendmsg, func(p *interceptPrograms) *ebpf.Program { return p.IpvirtSendmsg6 }},
	{"bind6", ebpf.AttachCGroupInet6Bind, func(p *interceptPrograms) *ebpf.Program { return p.IpvirtBind6 }},
}

// enforceHooks are enforcement past bind and connect: sockets are tagged
// with their creator, and packets carrying a pool address are policed
// against it. They run for every socket and packet of the cgroup, so they
// are attached only while enforcement is on (a connect over loopback cost
// a tenth more with them attached and enforcement off), in this order:
// sock_release before sock_create, so that no socket claims a tag slot
// that nothing would free, and detached in the reverse order.
var enforceHooks = []cgroupHook{
	{"sock_release", ebpf.AttachCgroupInetSockRelease, func(p *interceptPrograms) *ebpf.Program { return p.IpvirtSockRelease }},
	{"sock_create", ebpf.AttachCGroupInetSockCreate, func(p *interceptPrograms) *ebpf.Program { return p.IpvirtSockCreate }},
	{"egress", ebpf.AttachCGroupInetEgress, func(p *interceptPrograms) *ebpf.Program { return p.IpvirtEgress }},
	{"ingress", ebpf.AttachCGroupInetIngress, func(p *interceptPrograms) *ebpf.Program { return p.IpvirtIngress }},
}

type tracingHook struct {
	name   string
	attach ebpf.AttachType
	prog   func(*interceptPrograms) *ebpf.Program
}

var tracingHooks = []tracingHook{
	{"new_session", ebpf.AttachTraceFExit, func(p *interceptPrograms) *ebpf.Program { return p.IpvirtNewSession }},
	{"exec", ebpf.AttachTraceRawTp, func(p *interceptPrograms) *ebpf.Program { return p.IpvirtExec }},
}

// kernelObjects are the maps and links an Interceptor holds, whether it
// created them or adopted them from pins.
type kernelObjects struct {
	maps  map[string]*ebpf.Map
	links map[string]link.Link
	// spec and enforce, the loaded programs of enforceHooks by name
	// (loaded from spec against maps when first needed), are what
	// setEnforcement attaches.
	spec    *ebpf.CollectionSpec
	enforce map[string]*ebpf.Program
}

// detach breaks every link explicitly (a pin or a stray fd elsewhere would
// otherwise keep the program attached), then closes all handles.
func (ko *kernelObjects) detach() error {
	var errs []error
	for name, l := range ko.links {
		if err := l.Detach(); err != nil && !errors.Is(err, link.ErrNotSupported) {
			errs = append(errs, fmt.Errorf("bpf: detach %s: %w", name, err))
		}
		l.Close()
	}
	ko.links = nil
	ko.closeMaps()
	return errors.Join(errs...)
}

// release closes the handles and leaves whatever is pinned attached.
func (ko *kernelObjects) release() {
	for _, l := range ko.links {
		l.Close()
	}
	ko.links = nil
	ko.closeMaps()
}

func (ko *kernelObjects) closeMaps() {
	for _, m := range ko.maps {
		m.Close()
	}
	ko.maps = nil
	for _, p := range ko.enforce {
		p.Close()
	}
	ko.enforce = nil
}

// setEnforcement attaches every hook of enforceHooks not attached yet (on)
// or detaches every one attached, to the cgroup, pinning their links in
// pinDir or removing their pins ("": none, the caller pins). A partial set
// (a daemon killed half-way) is completed or removed. Detaching frees every
// tag slot: no sock_release is left to do it.
func (ko *kernelObjects) setEnforcement(on bool, cgroup, pinDir string) error {
	if !on {
		var errs []error
		detached := false
		for i := len(enforceHooks) - 1; i >= 0; i-- {
			name := enforceHooks[i].name
			l, ok := ko.links[name]
			if !ok {
				continue
			}
			if err := l.Detach(); err != nil && !errors.Is(err, link.ErrNotSupported) {
				errs = append(errs, fmt.Errorf("bpf: detach %s: %w", name, err))
				continue
			}
			l.Close()
			delete(ko.links, name)
			detached = true
			if pinDir != "" {
				if err := os.Remove(filepath.Join(pinDir, "link_"+name)); err != nil && !errors.Is(err, os.ErrNotExist) {
					errs = append(errs, fmt.Errorf("bpf: unpin %s: %w", name, err))
				}
			}
		}
		if len(errs) > 0 || !detached {
			return errors.Join(errs...)
		}
		return clearSlots(ko.maps["sock_slots"])
	}
	if err := ko.loadEnforcement(); err != nil {
		return err
	}
	cg, err := os.Open(cgroup)
	if err != nil {
		return fmt.Errorf("bpf: open cgroup %s: %w", cgroup, err)
	}
	defer cg.Close()
	for _, h := range enforceHooks {
		if _, ok := ko.links[h.name]; ok {
			continue
		}
		l, err := link.AttachRawLink(link.RawLinkOptions{Target: int(cg.Fd()), Program: ko.enforce[h.name], Attach: h.attach})
		if err != nil {
			return classifyAttachError(fmt.Errorf("bpf: attach %s to cgroup %s: %w", h.name, cgroup, err))
		}
		ko.links[h.name] = l
		if pinDir != "" {
			if err := l.Pin(filepath.Join(pinDir, "link_"+h.name)); err != nil {
				return fmt.Errorf("bpf: pin link %s: %w", h.name, err)
			}
		}
	}
	return nil
}

// loadEnforcement loads the programs of enforceHooks against the maps, once.
func (ko *kernelObjects) loadEnforcement() error {
	if ko.enforce != nil {
		return nil
	}
	one := ko.spec.Copy()
	one.Programs = map[string]*ebpf.ProgramSpec{}
	for _, h := range enforceHooks {
		one.Programs["ipvirt_"+h.name] = ko.spec.Programs["ipvirt_"+h.name]
	}
	c, err := ebpf.NewCollectionWithOptions(one, ebpf.CollectionOptions{MapReplacements: ko.maps})
	if err != nil {
		return classifyLoadError(err)
	}
	defer c.Close()
	ko.enforce = map[string]*ebpf.Program{}
	for _, h := range enforceHooks {
		ko.enforce[h.name] = c.DetachProgram("ipvirt_" + h.name)
	}
	return nil
}

// clearSlots frees every tag slot (sock_slots), once no program uses them.
func clearSlots(m *ebpf.Map) error {
	n := m.MaxEntries()
	keys := make([]uint32, n)
	for i := range keys {
		keys[i] = uint32(i)
	}
	values := make([]interceptTagSlot, n)
	if _, err := m.BatchUpdate(keys, values, nil); err == nil {
		return nil
	} else if !errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("bpf: clear tag slots: %w", err)
	}
	for i := range keys {
		if err := m.Put(keys[i], &values[i]); err != nil {
			return fmt.Errorf("bpf: clear tag slots: %w", err)
		}
	}
	return nil
}

func (ko *kernelObjects) pin(dir string) error {
	for name, m := range ko.maps {
		if err := m.Pin(filepath.Join(dir, "map_"+name)); err != nil {
			return fmt.Errorf("bpf: pin map %s: %w", name, err)
		}
	}
	for name, l := range ko.links {
		if err := l.Pin(filepath.Join(dir, "link_"+name)); err != nil {
			return fmt.Errorf("bpf: pin link %s: %w", name, err)
		}
	}
	return nil
}

// attachFresh loads the programs, attaches every hook (those of enforcement
// too when enforce) and pins the result at pinDir. On any error it undoes
// everything: no hook stays attached.
func attachFresh(spec *ebpf.CollectionSpec, cgroup, pinDir string, enforce bool) (_ *kernelObjects, _ *lockedDir, err error) {
	objs, err := loadObjects(spec)
	if err != nil {
		return nil, nil, err
	}
	ko := &kernelObjects{maps: objs.mapsByName(), links: map[string]link.Link{}, spec: spec,
		enforce: map[string]*ebpf.Program{}}
	// Links hold their own references to the programs; those of
	// enforcement stay loaded for SetEnforce.
	for _, h := range enforceHooks {
		ko.enforce[h.name] = h.prog(&objs.interceptPrograms)
	}
	objs.IpvirtSockRelease, objs.IpvirtSockCreate, objs.IpvirtEgress, objs.IpvirtIngress = nil, nil, nil, nil
	defer objs.interceptPrograms.Close()
	staging := pinDir + "_staging_" + strconv.Itoa(os.Getpid())
	var lock *lockedDir
	defer func() {
		if err != nil {
			ko.detach()
			removePins(staging)
			lock.unlock()
		}
	}()
	if err := writeSettings(ko.maps["config"], settings{}); err != nil {
		return nil, nil, err
	}

	cg, err := os.Open(cgroup)
	if err != nil {
		return nil, nil, fmt.Errorf("bpf: open cgroup %s: %w", cgroup, err)
	}
	defer cg.Close()
	for _, h := range cgroupHooks {
		// A bpf_link (not the legacy PROG_ATTACH) so that it can be pinned
		// and coexists with other programs on the same cgroup.
		l, err := link.AttachRawLink(link.RawLinkOptions{
			Target: int(cg.Fd()), Program: h.prog(&objs.interceptPrograms), Attach: h.attach,
		})
		if err != nil {
			return nil, nil, classifyAttachError(fmt.Errorf("bpf: attach %s to cgroup %s: %w", h.name, cgroup, err))
		}
		ko.links[h.name] = l
	}
	if err := ko.setEnforcement(enforce, cgroup, ""); err != nil {
		return nil, nil, err
	}
	for _, h := range tracingHooks {
		prog := h.prog(&objs.interceptPrograms)
		if prog == nil {
			continue // not loadable here (see loadObjects)
		}
		l, err := link.AttachTracing(link.TracingOptions{Program: prog, AttachType: h.attach})
		if err != nil {
			// Optional, like loading: session events make allocation
			// happen ahead of the first connect, nothing more.
			continue
		}
		ko.links[h.name] = l
	}

	if err := os.Mkdir(staging, 0o700); err != nil {
		return nil, nil, fmt.Errorf("bpf: create %s: %w", staging, err)
	}
	if lock, err = tryLockDir(staging); err != nil {
		return nil, nil, err
	}
	if err := ko.pin(staging); err != nil {
		return nil, nil, err
	}
	if err := unix.Renameat2(unix.AT_FDCWD, staging, unix.AT_FDCWD, pinDir, unix.RENAME_NOREPLACE); err != nil {
		return nil, nil, fmt.Errorf("bpf: publish %s as %s: %w", staging, pinDir, err)
	}
	return ko, lock, nil
}

// loadObjects loads the maps and the cgroup programs, which interception
// needs, then each tracing program on its own: they only tell the daemon of
// new sessions and execs, and some kernels refuse them (no fexit trampoline
// support, a function not traceable, lockdown), which must not cost the
// interception itself. A tracing program that did not load is nil.
func loadObjects(spec *ebpf.CollectionSpec) (*interceptObjects, error) {
	core := spec.Copy()
	tracing := map[string]*ebpf.ProgramSpec{}
	for name, ps := range core.Programs {
		if ps.Type == ebpf.Tracing {
			tracing[name] = ps
			delete(core.Programs, name)
		}
	}
	coll, err := ebpf.NewCollection(core)
	if err != nil {
		return nil, classifyLoadError(err)
	}
	objs := &interceptObjects{}
	if err := coll.Assign(&objs.interceptMaps); err != nil {
		coll.Close()
		return nil, fmt.Errorf("bpf: assign maps: %w", err)
	}
	p := &objs.interceptPrograms
	progs := map[string]**ebpf.Program{
		"ipvirt_connect4": &p.IpvirtConnect4, "ipvirt_sendmsg4": &p.IpvirtSendmsg4, "ipvirt_bind4": &p.IpvirtBind4,
		"ipvirt_connect6": &p.IpvirtConnect6, "ipvirt_sendmsg6": &p.IpvirtSendmsg6, "ipvirt_bind6": &p.IpvirtBind6,
		"ipvirt_new_session": &p.IpvirtNewSession, "ipvirt_exec": &p.IpvirtExec,
		"ipvirt_sock_create": &p.IpvirtSockCreate, "ipvirt_egress": &p.IpvirtEgress, "ipvirt_ingress": &p.IpvirtIngress,
		"ipvirt_sock_release": &p.IpvirtSockRelease,
	}
	for name, dst := range progs {
		if _, ok := tracing[name]; ok {
			continue
		}
		if *dst = coll.DetachProgram(name); *dst == nil {
			coll.Close()
			objs.interceptPrograms.Close()
			return nil, fmt.Errorf("bpf: program %s missing from the objects", name)
		}
	}
	for name := range objs.mapNames() {
		coll.DetachMap(name)
	}
	coll.Close()
	for name, ps := range tracing {
		one := spec.Copy()
		one.Programs = map[string]*ebpf.ProgramSpec{name: ps}
		c, err := ebpf.NewCollectionWithOptions(one, ebpf.CollectionOptions{MapReplacements: objs.mapsByName()})
		if err != nil {
			continue // see the comment above; the README documents the window
		}
		*progs[name] = c.DetachProgram(name)
		c.Close()
	}
	return objs, nil
}

func (o *interceptObjects) mapsByName() map[string]*ebpf.Map {
	m := o.interceptMaps
	return map[string]*ebpf.Map{
		"config": m.Config, "counters": m.Counters, "events": m.Events, "interest": m.Interest,
		"owners": m.Owners, "pending": m.Pending, "programs": m.Programs, "sessions": m.Sessions,
		"sock_tags": m.SockTags, "sock_slots": m.SockSlots, "stock": m.Stock, "admins": m.Admins,
		"registered": m.Registered, "empty_reported": m.EmptyReported,
	}
}

func (o *interceptObjects) mapNames() map[string]*ebpf.Map { return o.mapsByName() }

// adopt takes over the interceptor pinned at pinDir by an earlier daemon
// (one that crashed or called Release): the programs never stopped.
// The links of enforcement are adopted as they are, some or none; Open
// then attaches or detaches them as its Options ask.
func adopt(spec *ebpf.CollectionSpec, cgroup, pinDir string) (_ *kernelObjects, _ *lockedDir, err error) {
	lock, err := tryLockDir(pinDir)
	if err != nil {
		return nil, nil, err
	}
	ko := &kernelObjects{maps: map[string]*ebpf.Map{}, links: map[string]link.Link{}, spec: spec}
	defer func() {
		if err != nil {
			ko.release() // never detach what we failed to adopt
			lock.unlock()
		}
	}()
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrIncompatible, pinDir, fmt.Sprintf(format, args...))
	}
	for _, name := range mapNames {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "map_"+name), nil)
		if err != nil {
			return nil, nil, bad("map %s: %v", name, err)
		}
		ko.maps[name] = m
		if err := spec.Maps[name].Compatible(m); err != nil {
			return nil, nil, bad("map %s: %v", name, err)
		}
	}
	s, err := readSettings(ko.maps["config"])
	if err != nil {
		return nil, nil, bad("%v", err)
	}
	if s.Abi != abiVersion {
		return nil, nil, bad("ABI %d, this build speaks %d", s.Abi, abiVersion)
	}
	cgID, err := cgroupID(cgroup)
	if err != nil {
		return nil, nil, err
	}
	for i, h := range append(cgroupHooks[:len(cgroupHooks):len(cgroupHooks)], enforceHooks...) {
		l, err := link.LoadPinnedLink(filepath.Join(pinDir, "link_"+h.name), nil)
		if i >= len(cgroupHooks) && errors.Is(err, os.ErrNotExist) {
			continue // enforcement was off, or the daemon died attaching it
		}
		if err != nil {
			return nil, nil, bad("link %s: %v", h.name, err)
		}
		ko.links[h.name] = l
		info, err := l.Info()
		if err != nil {
			return nil, nil, bad("link %s: %v", h.name, err)
		}
		ci := info.Cgroup()
		if ci == nil || ci.CgroupId != cgID || ebpf.AttachType(ci.AttachType) != h.attach {
			return nil, nil, bad("link %s is not attached to %s (cgroup id %d) as %s", h.name, cgroup, cgID, h.attach)
		}
	}
	for _, h := range tracingHooks {
		l, err := link.LoadPinnedLink(filepath.Join(pinDir, "link_"+h.name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue // the earlier daemon could not attach it either
		}
		if err != nil {
			return nil, nil, bad("link %s: %v", h.name, err)
		}
		ko.links[h.name] = l
	}
	return ko, lock, nil
}

// removePins detaches every link pinned in dir and deletes the directory,
// which frees everything nobody else holds. Used for leftovers (a staging
// or dying directory of a dead process) and by Close.
func removePins(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bpf: read %s: %w", dir, err)
	}
	var errs []error
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if strings.HasPrefix(e.Name(), "link_") {
			if l, err := link.LoadPinnedLink(p, nil); err == nil {
				if err := l.Detach(); err != nil && !errors.Is(err, link.ErrNotSupported) {
					errs = append(errs, fmt.Errorf("bpf: detach %s: %w", p, err))
				}
				l.Close()
			}
		}
		if err := os.Remove(p); err != nil {
			errs = append(errs, fmt.Errorf("bpf: unpin %s: %w", p, err))
		}
	}
	if err := os.Remove(dir); err != nil {
		errs = append(errs, fmt.Errorf("bpf: remove %s: %w", dir, err))
	}
	return errors.Join(errs...)
}

// cleanupStale removes staging and dying directories left by processes
// that died in the middle of Open or Close. A live owner holds its
// directory's flock, so those are skipped.
func cleanupStale(pinDir string) {
	for _, pattern := range []string{pinDir + "_staging_*", pinDir + "_dying_*"} {
		dirs, _ := filepath.Glob(pattern)
		for _, d := range dirs {
			l, err := tryLockDir(d)
			if err != nil {
				continue
			}
			removePins(d)
			l.unlock()
		}
	}
}

// classifyLoadError turns a load failure caused by the kernel (no BTF, a
// missing field or helper, verifier refusal due to privileges) into an
// UnsupportedError.
func classifyLoadError(err error) error {
	var ve *ebpf.VerifierError
	switch {
	case errors.Is(err, ebpf.ErrNotSupported), errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return &UnsupportedError{Requirement: "kernel", Err: fmt.Errorf("load programs: %w", err)}
	case errors.As(err, &ve):
		return &UnsupportedError{Requirement: "kernel", Err: fmt.Errorf("verifier refused the programs: %w", err)}
	case strings.Contains(err.Error(), "CO-RE"), strings.Contains(err.Error(), "btf"):
		return &UnsupportedError{Requirement: "kernel", Err: fmt.Errorf("kernel types do not match: %w", err)}
	}
	return fmt.Errorf("bpf: load programs: %w", err)
}

func classifyAttachError(err error) error {
	if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EOPNOTSUPP) {
		return &UnsupportedError{Requirement: "kernel", Err: err}
	}
	return err
}
