package bpf

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// PeerRecords tell ipvirtd the audit session of a process connecting to its
// Unix socket from a note the kernel made at connect(), in the connecting
// task's own context (see peerid.bpf.c): one map lookup where /proc takes a
// path walk through inodes created on the spot for a process that has only
// just started. The socket serves the LD_PRELOAD interceptor, so this runs
// whichever interceptor is configured.
//
// It needs a kernel with cgroup/connect_unix and pidfs inode numbers (6.9),
// BTF, CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN. Without them OpenPeerRecords
// fails and the daemon reads /proc as before; a connection with no note
// (made before it was opened, from outside the cgroup the program is
// attached to, naming the socket by another path, or aged out of the table)
// is identified from /proc too.
//
// It holds the program and its table while it is attached.
type PeerRecords struct {
	objs peeridObjects
	link link.Link
}

// OpenPeerRecords attaches the program to the cgroup2 directory cgroup,
// noting the connections its processes make to the Unix socket at path (as
// clients name it: an absolute path of at most 107 bytes).
func OpenPeerRecords(cgroup, path string) (*PeerRecords, error) {
	var want peeridListenerPath
	if len(path) == 0 || len(path) >= len(want.Path) {
		return nil, fmt.Errorf("bpf: peer records: socket path %q: not 1 to %d bytes", path, len(want.Path)-1)
	}
	want.Len = uint32(len(path))
	for i := range len(path) {
		want.Path[i] = int8(path[i])
	}
	r := &PeerRecords{}
	if err := loadPeeridObjects(&r.objs, nil); err != nil {
		return nil, fmt.Errorf("bpf: peer records: load: %w", err)
	}
	if err := r.objs.Listener.Put(uint32(0), &want); err != nil {
		r.objs.Close()
		return nil, fmt.Errorf("bpf: peer records: set the socket path: %w", err)
	}
	var err error
	if r.link, err = link.AttachCgroup(link.CgroupOptions{Path: cgroup, Attach: ebpf.AttachCgroupUnixConnect, Program: r.objs.IpvirtPeer}); err != nil {
		r.objs.Close()
		return nil, fmt.Errorf("bpf: peer records: attach cgroup/connect_unix to %s: %w", cgroup, err)
	}
	return r, nil
}

// Take returns, and removes, the record of process pid (its id in the
// initial pid namespace, as SO_PEERCRED gives it to a daemon there): its
// audit session and login uid (4294967295: none), if the record was made by
// the process whose pidfs inode number is ino (fstat of a pidfd of the
// caller), since pid alone could name an earlier process. The record is
// that of the process's latest connect to the socket.
func (r *PeerRecords) Take(pid int32, ino uint64) (session, loginUID uint32, ok bool) {
	// Raw pointers: the map takes them as they are, with no marshalling
	// (and no allocation) on the path of every first call.
	key := uint32(pid)
	var v peeridPeer
	if err := r.objs.Peers.LookupAndDelete(unsafe.Pointer(&key), unsafe.Pointer(&v)); err != nil || v.PidfsIno != ino || ino == 0 {
		return 0, 0, false
	}
	return v.Sessionid, v.Loginuid, true
}

// Close detaches the program; connections made from then on are not noted.
func (r *PeerRecords) Close() error {
	return errors.Join(r.link.Close(), r.objs.Close())
}
