package benchkit

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// ErrBPFUnsupported means the kernel would not load or attach AttachBare's
// program.
var ErrBPFUnsupported = errors.New("the kernel refused a cgroup/connect4 program")

// bareBind is the least a cgroup/connect4 program can do to give a socket
// its source: build a sockaddr_in for vip (port 0) on the stack, call
// bpf_bind (which the kernel does as IP_BIND_ADDRESS_NO_PORT: the port is
// picked at connect), allow the connect. No map, no session lookup.
func bareBind(vip netip.Addr) asm.Instructions {
	a := vip.As4()
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1), // ctx, kept across the stores
		// struct sockaddr_in at fp-16: sin_family AF_INET and sin_port 0
		// in one little-endian word, the address as it lies in memory,
		// then sin_zero.
		asm.StoreImm(asm.RFP, -16, unix.AF_INET, asm.Word),
		asm.StoreImm(asm.RFP, -12, int64(int32(binary.LittleEndian.Uint32(a[:]))), asm.Word),
		asm.StoreImm(asm.RFP, -8, 0, asm.Word),
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -16),
		asm.Mov.Imm(asm.R3, 16),
		asm.FnBind.Call(),
		asm.Mov.Imm(asm.R0, 1), // 1: let the connect go on
		asm.Return(),
	}
}

// AttachBare loads bareBind for vip and attaches it to the cgroup
// directory dir: the yardstick beside which bench/peers and bench/bpfcost
// put ipvirt's programs. The returned function detaches and unloads it.
func AttachBare(dir string, vip netip.Addr) (func(), error) {
	_ = rlimit.RemoveMemlock() // no-op on kernels with memcg accounting
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "bare_bind4",
		Type:         ebpf.CGroupSockAddr,
		AttachType:   ebpf.AttachCGroupInet4Connect,
		Instructions: bareBind(vip),
		License:      "GPL",
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBPFUnsupported, err)
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: dir, Attach: ebpf.AttachCGroupInet4Connect, Program: prog})
	if err != nil {
		prog.Close()
		return nil, fmt.Errorf("%w: attach to %s: %v", ErrBPFUnsupported, dir, err)
	}
	return func() { l.Close(); prog.Close() }, nil
}
