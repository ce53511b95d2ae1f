package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// Flags in settings.Flags; they mirror CFG_* in intercept.bpf.c.
const (
	cfgEnforce    = 1 << 0
	cfgPerProgram = 1 << 1
	maxRanges     = 16
)

type settings = interceptSettings

// ErrClosed is returned by the methods of a closed or released Interceptor.
var ErrClosed = errors.New("bpf: interceptor closed")

// Entry is one map entry: a session's VIP (Exe zero) or a program's.
type Entry struct {
	Session uint32
	Exe     ExeID
	VIP     netip.Addr
}

// Stats are the kernel programs' counters, summed over CPUs.
type Stats struct {
	ConnectBound  uint64 // connects bound to a VIP
	SendmsgSource uint64 // unconnected sends given a VIP source
	BindRewritten uint64 // binds to 0.0.0.0 / the machine IP turned into the VIP
	Denied        uint64 // enforcement refusals (EPERM)
	Misses        uint64 // miss events (pending sessions that used the network)
	BindFailed    uint64 // bpf_bind() errors (the connect went on unbound)
	EventsLost    uint64 // events dropped because the ring buffer was full
	Assigned      uint64 // VIPs taken from the stock at a holder's first call
	StockEmpty    uint64 // first calls that found the stock empty
}

// vip4 validates a VIP and returns it as the 4 bytes the maps store
// (network byte order).
func vip4(what string, a netip.Addr) ([4]byte, error) {
	a = a.Unmap()
	if !a.Is4() || a.IsUnspecified() {
		return [4]byte{}, fmt.Errorf("bpf: %s %v: not a usable IPv4 address", what, a)
	}
	return a.As4(), nil
}

func settingsFor(opts Options) (settings, error) {
	var s settings
	if opts.Enforce {
		s.Flags |= cfgEnforce
	}
	if opts.MachineIP.IsValid() {
		b, err := vip4("machine IP", opts.MachineIP)
		if err != nil {
			return s, err
		}
		s.MachineIp = binary.NativeEndian.Uint32(b[:])
	}
	if err := setRanges(&s, opts.Pool); err != nil {
		return s, err
	}
	return s, nil
}

func setRanges(s *settings, pool []Range) error {
	if len(pool) > maxRanges {
		return fmt.Errorf("bpf: %d pool ranges, at most %d", len(pool), maxRanges)
	}
	s.Nranges = uint32(len(pool))
	for i := range s.Ranges {
		s.Ranges[i].Start, s.Ranges[i].End = 0, 0
	}
	for i, r := range pool {
		start, err := vip4("pool range start", r.Start)
		if err != nil {
			return err
		}
		end, err := vip4("pool range end", r.End)
		if err != nil {
			return err
		}
		s.Ranges[i].Start = binary.BigEndian.Uint32(start[:])
		s.Ranges[i].End = binary.BigEndian.Uint32(end[:])
		if s.Ranges[i].Start > s.Ranges[i].End {
			return fmt.Errorf("bpf: pool range %v-%v: start after end", r.Start, r.End)
		}
	}
	return nil
}

func readSettings(m *ebpf.Map) (settings, error) {
	var s settings
	if err := m.Lookup(uint32(0), &s); err != nil {
		return s, fmt.Errorf("bpf: read config: %w", err)
	}
	return s, nil
}

func writeSettings(m *ebpf.Map, s settings) error {
	s.Abi = abiVersion
	if err := m.Put(uint32(0), &s); err != nil {
		return fmt.Errorf("bpf: write config: %w", err)
	}
	return nil
}

// applySettings writes the options, keeping the per-program flag in step
// with the programs map (which an adopted interceptor may already fill).
func (ic *Interceptor) applySettings(s settings) error {
	s.Flags &^= cfgPerProgram
	if ic.hasPrograms() {
		s.Flags |= cfgPerProgram
	}
	return writeSettings(ic.ko.maps["config"], s)
}

func (ic *Interceptor) updateSettings(f func(*settings) error) error {
	if ic.closed {
		return ErrClosed
	}
	s, err := readSettings(ic.ko.maps["config"])
	if err != nil {
		return err
	}
	if err := f(&s); err != nil {
		return err
	}
	return ic.applySettings(s)
}

func (ic *Interceptor) hasPrograms() bool {
	var k interceptHolder
	return ic.ko.maps["programs"].NextKey(nil, &k) == nil
}

// SetEnforce turns enforcement on or off. On attaches the hooks that tag
// sockets at creation and police packets (sock_create, sock_release,
// cgroup_skb egress and ingress) before it sets the flag; off clears the
// flag, then detaches them, so that no socket or packet pays for them
// while enforcement is off. Sockets created while it was off carry no tag,
// and their packets pass (as those of sockets older than the interceptor).
func (ic *Interceptor) SetEnforce(on bool) error {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if ic.closed {
		return ErrClosed
	}
	if on {
		if err := ic.ko.setEnforcement(true, ic.cgroup, ic.pinDir); err != nil {
			return errors.Join(err, ic.ko.setEnforcement(false, ic.cgroup, ic.pinDir))
		}
	}
	err := ic.updateSettings(func(s *settings) error {
		s.Flags &^= cfgEnforce
		if on {
			s.Flags |= cfgEnforce
		}
		return nil
	})
	if err != nil || on {
		return err
	}
	return ic.ko.setEnforcement(false, ic.cgroup, ic.pinDir)
}

// SetMachineIP sets the host address whose binds become VIP binds. The
// zero Addr clears it.
func (ic *Interceptor) SetMachineIP(a netip.Addr) error {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	return ic.updateSettings(func(s *settings) error {
		s.MachineIp = 0
		if !a.IsValid() {
			return nil
		}
		b, err := vip4("machine IP", a)
		s.MachineIp = binary.NativeEndian.Uint32(b[:])
		return err
	})
}

// SetPoolRanges replaces the pool ranges enforcement protects (at most 16).
func (ic *Interceptor) SetPoolRanges(pool []Range) error {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	return ic.updateSettings(func(s *settings) error { return setRanges(s, pool) })
}

func sessionHolder(sid uint32) interceptHolder { return interceptHolder{Sid: sid} }

func programHolder(sid uint32, exe ExeID) interceptHolder {
	return interceptHolder{Ino: exe.Ino, Dev: exe.Dev, Sid: sid}
}

// SetSession gives every process of audit session sid the source address
// vip (per-session mode), and ends the session's pending state.
func (ic *Interceptor) SetSession(sid uint32, vip netip.Addr) error {
	b, err := vip4("VIP", vip)
	if err != nil {
		return err
	}
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if ic.closed {
		return ErrClosed
	}
	m := ic.ko.maps["sessions"]
	var old [4]byte
	hadOld := m.Lookup(sid, &old) == nil
	if err := m.Put(sid, b); err != nil {
		return fmt.Errorf("bpf: set session %d -> %v: %w", sid, vip, err)
	}
	if err := ic.ko.maps["owners"].Put(b, sessionHolder(sid)); err != nil {
		return fmt.Errorf("bpf: set owner of %v: %w", vip, err)
	}
	if hadOld && old != b {
		if err := ic.releaseOwner(old, sessionHolder(sid)); err != nil {
			return err
		}
	}
	return ic.decided(sid)
}

// DeleteSession removes session sid's entry; its processes go back to the
// machine IP (per-program entries of the session stay).
func (ic *Interceptor) DeleteSession(sid uint32) error {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if ic.closed {
		return ErrClosed
	}
	m := ic.ko.maps["sessions"]
	var old [4]byte
	if err := m.Lookup(sid, &old); err != nil {
		return nil
	}
	if err := m.Delete(sid); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("bpf: delete session %d: %w", sid, err)
	}
	return ic.releaseOwner(old, sessionHolder(sid))
}

// SetProgram gives the processes of session sid running executable exe
// the source address vip (per-program mode). A program entry wins over
// the session's entry.
func (ic *Interceptor) SetProgram(sid uint32, exe ExeID, vip netip.Addr) error {
	b, err := vip4("VIP", vip)
	if err != nil {
		return err
	}
	if exe.IsZero() {
		return fmt.Errorf("bpf: set program for session %d: zero ExeID", sid)
	}
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if ic.closed {
		return ErrClosed
	}
	h := programHolder(sid, exe)
	m := ic.ko.maps["programs"]
	var old [4]byte
	hadOld := m.Lookup(h, &old) == nil
	if err := m.Put(h, b); err != nil {
		return fmt.Errorf("bpf: set program %d|%v -> %v: %w", sid, exe, vip, err)
	}
	if err := ic.ko.maps["owners"].Put(b, h); err != nil {
		return fmt.Errorf("bpf: set owner of %v: %w", vip, err)
	}
	if hadOld && old != b {
		if err := ic.releaseOwner(old, h); err != nil {
			return err
		}
	}
	if err := ic.updateSettings(func(*settings) error { return nil }); err != nil {
		return err
	}
	return ic.decided(sid)
}

// DeleteProgram removes the entry of program exe in session sid.
func (ic *Interceptor) DeleteProgram(sid uint32, exe ExeID) error {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if ic.closed {
		return ErrClosed
	}
	h := programHolder(sid, exe)
	m := ic.ko.maps["programs"]
	var old [4]byte
	if err := m.Lookup(h, &old); err != nil {
		return nil
	}
	if err := m.Delete(h); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("bpf: delete program %d|%v: %w", sid, exe, err)
	}
	if err := ic.releaseOwner(old, h); err != nil {
		return err
	}
	return ic.updateSettings(func(*settings) error { return nil })
}

// ForgetSession removes everything about session sid: its session entry,
// its program entries and its pending state. For a session that ended.
func (ic *Interceptor) ForgetSession(sid uint32) error {
	entries, err := ic.Entries()
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if e.Session != sid || e.Exe.IsZero() {
			continue
		}
		errs = append(errs, ic.DeleteProgram(sid, e.Exe))
	}
	errs = append(errs, ic.DeleteSession(sid), ic.Decided(sid))
	return errors.Join(errs...)
}

// Decided ends session sid's pending state without giving it a VIP (the
// daemon answered MIP, or works per program): no miss event will follow.
func (ic *Interceptor) Decided(sid uint32) error {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if ic.closed {
		return ErrClosed
	}
	return ic.decided(sid)
}

func (ic *Interceptor) decided(sid uint32) error {
	err := ic.ko.maps["pending"].Delete(sid)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("bpf: clear pending session %d: %w", sid, err)
	}
	return nil
}

// releaseOwner drops h's claim on addr; if another holder still has addr
// (the daemon moved a VIP between entries) it becomes the owner.
func (ic *Interceptor) releaseOwner(addr [4]byte, h interceptHolder) error {
	owners := ic.ko.maps["owners"]
	var cur interceptHolder
	if owners.Lookup(addr, &cur) != nil || cur != h {
		return nil
	}
	if next, ok := ic.holderOf(addr); ok {
		return owners.Put(addr, next)
	}
	if err := owners.Delete(addr); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("bpf: delete owner of %v: %w", netip.AddrFrom4(addr), err)
	}
	return nil
}

func (ic *Interceptor) holderOf(addr [4]byte) (interceptHolder, bool) {
	var sid uint32
	var v [4]byte
	it := ic.ko.maps["sessions"].Iterate()
	for it.Next(&sid, &v) {
		if v == addr {
			return sessionHolder(sid), true
		}
	}
	var h interceptHolder
	it = ic.ko.maps["programs"].Iterate()
	for it.Next(&h, &v) {
		if v == addr {
			return h, true
		}
	}
	return interceptHolder{}, false
}

// Entries lists every session and program entry, for reconciling an
// adopted interceptor with the daemon's lease store.
func (ic *Interceptor) Entries() ([]Entry, error) {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if ic.closed {
		return nil, ErrClosed
	}
	var out []Entry
	var sid uint32
	var v [4]byte
	it := ic.ko.maps["sessions"].Iterate()
	for it.Next(&sid, &v) {
		out = append(out, Entry{Session: sid, VIP: netip.AddrFrom4(v)})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("bpf: list sessions: %w", err)
	}
	var h interceptHolder
	it = ic.ko.maps["programs"].Iterate()
	for it.Next(&h, &v) {
		out = append(out, Entry{Session: h.Sid, Exe: ExeID{Dev: h.Dev, Ino: h.Ino}, VIP: netip.AddrFrom4(v)})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("bpf: list programs: %w", err)
	}
	return out, nil
}

// SetProgramsOfInterest replaces the set of executables whose exec is
// reported as EventExec.
func (ic *Interceptor) SetProgramsOfInterest(ids []ExeID) error {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if ic.closed {
		return ErrClosed
	}
	want := map[interceptExeId]bool{}
	for _, id := range ids {
		want[interceptExeId{Ino: id.Ino, Dev: id.Dev}] = true
	}
	return replaceKeys(ic.ko.maps["interest"], "programs of interest", want)
}

// Stats reads the kernel counters.
func (ic *Interceptor) Stats() (Stats, error) {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if ic.closed {
		return Stats{}, ErrClosed
	}
	var sums [9]uint64
	for i := range sums {
		var perCPU []uint64
		if err := ic.ko.maps["counters"].Lookup(uint32(i), &perCPU); err != nil {
			return Stats{}, fmt.Errorf("bpf: read counter %d: %w", i, err)
		}
		for _, v := range perCPU {
			sums[i] += v
		}
	}
	return Stats{
		ConnectBound: sums[0], SendmsgSource: sums[1], BindRewritten: sums[2], Denied: sums[3],
		Misses: sums[4], BindFailed: sums[5], EventsLost: sums[6], Assigned: sums[7], StockEmpty: sums[8],
	}, nil
}

// Denials is the number of binds and sends enforcement refused.
func (ic *Interceptor) Denials() (uint64, error) {
	s, err := ic.Stats()
	return s.Denied, err
}
