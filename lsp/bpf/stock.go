package bpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// Flags in settings.Flags for first-use assignment; they mirror CFG_* in
// intercept.bpf.c.
const (
	cfgAssign        = 1 << 2
	cfgTrustPAM      = 1 << 3
	cfgModeProgram   = 1 << 4
	cfgDenyExhausted = 1 << 5
)

// FirstUse says whether and for whom the kernel takes a VIP from the stock
// at a holder's first socket call, with the same rules the daemon applies
// (README: The rules): administrators (SetAdmins) never; under TrustPAM
// only registered sessions (SetRegistered); in PerProgram mode only the
// programs of interest (SetProgramsOfInterest), one VIP per (session,
// executable).
type FirstUse struct {
	Assign        bool
	TrustPAM      bool
	PerProgram    bool
	DenyExhausted bool // an empty stock refuses the call (EPERM) instead of leaving from the machine IP
}

// SetFirstUse applies fu.
func (ic *Interceptor) SetFirstUse(fu FirstUse) error {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	return ic.updateSettings(func(s *settings) error {
		s.Flags &^= cfgAssign | cfgTrustPAM | cfgModeProgram | cfgDenyExhausted
		for _, f := range []struct {
			on   bool
			flag uint32
		}{{fu.Assign, cfgAssign}, {fu.TrustPAM, cfgTrustPAM}, {fu.PerProgram, cfgModeProgram}, {fu.DenyExhausted, cfgDenyExhausted}} {
			if f.on {
				s.Flags |= f.flag
			}
		}
		return nil
	})
}

// PushStock adds a VIP to the stock. The address must be installed,
// persisted as a stock lease and held by no one: the kernel may hand it
// out the moment it is pushed.
func (ic *Interceptor) PushStock(vip netip.Addr) error {
	b, err := vip4("stock VIP", vip)
	if err != nil {
		return err
	}
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if ic.closed {
		return ErrClosed
	}
	if err := ic.ko.maps["stock"].Update(nil, b, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("bpf: push %v to the stock: %w", vip, err)
	}
	return nil
}

// DrainStock takes every VIP out of the stock and returns them: at start
// (the stock of a killed daemon) and to shrink it. A holder's first call
// meanwhile finds the stock empty.
func (ic *Interceptor) DrainStock() ([]netip.Addr, error) {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if ic.closed {
		return nil, ErrClosed
	}
	var out []netip.Addr
	m := ic.ko.maps["stock"]
	for {
		var b [4]byte
		if err := m.LookupAndDelete(nil, &b); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return out, nil
			}
			return out, fmt.Errorf("bpf: drain the stock: %w", err)
		}
		out = append(out, netip.AddrFrom4(b))
	}
}

// PopStock takes one VIP out of the stock, if it has one.
func (ic *Interceptor) PopStock() (netip.Addr, bool, error) {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if ic.closed {
		return netip.Addr{}, false, ErrClosed
	}
	var b [4]byte
	if err := ic.ko.maps["stock"].LookupAndDelete(nil, &b); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return netip.Addr{}, false, nil
		}
		return netip.Addr{}, false, fmt.Errorf("bpf: pop the stock: %w", err)
	}
	return netip.AddrFrom4(b), true, nil
}

// Claim makes vip the VIP of session sid (exe zero) or of program exe in
// it, unless the holder has one already (the kernel gave it one from the
// stock first), which it returns instead: a holder keeps the address its
// first call took.
func (ic *Interceptor) Claim(sid uint32, exe ExeID, vip netip.Addr) (netip.Addr, error) {
	name, key, h := entryOf(sid, exe)
	return ic.claim(name, key, h, vip)
}

// entryOf is the map, key and owner of the entry of session sid (exe
// zero) or of program exe in it.
func entryOf(sid uint32, exe ExeID) (mapName string, key any, h interceptHolder) {
	if exe.IsZero() {
		return "sessions", sid, sessionHolder(sid)
	}
	h = programHolder(sid, exe)
	return "programs", h, h
}

func (ic *Interceptor) claim(mapName string, key any, h interceptHolder, vip netip.Addr) (netip.Addr, error) {
	b, err := vip4("VIP", vip)
	if err != nil {
		return netip.Addr{}, err
	}
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if ic.closed {
		return netip.Addr{}, ErrClosed
	}
	m := ic.ko.maps[mapName]
	if err := m.Update(key, b, ebpf.UpdateNoExist); err != nil {
		if !errors.Is(err, ebpf.ErrKeyExist) {
			return netip.Addr{}, fmt.Errorf("bpf: claim %v for %d: %w", vip, h.Sid, err)
		}
		var cur [4]byte
		if err := m.Lookup(key, &cur); err != nil {
			return netip.Addr{}, fmt.Errorf("bpf: read the entry of %d: %w", h.Sid, err)
		}
		return netip.AddrFrom4(cur), nil
	}
	if err := ic.ko.maps["owners"].Put(b, h); err != nil {
		return netip.Addr{}, fmt.Errorf("bpf: set owner of %v: %w", vip, err)
	}
	if mapName == "programs" {
		if err := ic.updateSettings(func(*settings) error { return nil }); err != nil {
			return netip.Addr{}, err
		}
	}
	return vip, ic.decided(h.Sid)
}

// Entry is the VIP of session sid (exe zero), or of program exe in it, in
// the kernel, if it has one.
func (ic *Interceptor) Entry(sid uint32, exe ExeID) (netip.Addr, bool) {
	name, key, _ := entryOf(sid, exe)
	return ic.entry(name, key)
}

func (ic *Interceptor) entry(mapName string, key any) (netip.Addr, bool) {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if ic.closed {
		return netip.Addr{}, false
	}
	var b [4]byte
	if err := ic.ko.maps[mapName].Lookup(key, &b); err != nil {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4(b), true
}

// SetAdmins replaces the login uids whose sessions never take a VIP.
func (ic *Interceptor) SetAdmins(uids []uint32) error {
	return ic.replaceSet("admins", uids)
}

// SetRegistered replaces the sessions PAM registered (FirstUse.TrustPAM).
func (ic *Interceptor) SetRegistered(sids []uint32) error {
	return ic.replaceSet("registered", sids)
}

// Register adds (on) or removes one registered session.
func (ic *Interceptor) Register(sid uint32, on bool) error {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if ic.closed {
		return ErrClosed
	}
	m := ic.ko.maps["registered"]
	if on {
		return m.Put(sid, uint8(1))
	}
	if err := m.Delete(sid); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("bpf: unregister session %d: %w", sid, err)
	}
	return nil
}

func (ic *Interceptor) replaceSet(name string, ids []uint32) error {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if ic.closed {
		return ErrClosed
	}
	want := make(map[uint32]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	return replaceKeys(ic.ko.maps[name], name, want)
}

// replaceKeys makes the keys of the set map m (values 1) exactly want.
func replaceKeys[K comparable](m *ebpf.Map, name string, want map[K]bool) error {
	var k K
	var v uint8
	var stale []K
	it := m.Iterate()
	for it.Next(&k, &v) {
		if !want[k] {
			stale = append(stale, k)
		}
	}
	for _, k := range stale {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("bpf: %s: remove %v: %w", name, k, err)
		}
	}
	for k := range want {
		if err := m.Put(k, uint8(1)); err != nil {
			return fmt.Errorf("bpf: %s: add %v: %w", name, k, err)
		}
	}
	return nil
}
