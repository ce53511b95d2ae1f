package bpf

import (
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"
)

// ExeID names an executable the way the kernel programs see it: the device
// of the file's superblock and its inode number (task->mm->exe_file).
//
// It follows the file, not the name: renaming or hard-linking a binary keeps
// its ExeID, a copy gets a new one. A package upgrade writes the new binary
// to a temporary name and renames it over the old one, so the upgraded
// program has a new ExeID: processes still running the old binary keep
// matching the old ExeID (the kernel keeps the old inode alive while it is
// mapped), new execs carry the new one. The daemon must recompute ExeIDs of
// its listed paths when they change (inotify on the paths) and update the
// programs-of-interest set and per-program entries; until it does, new
// execs of the upgraded program fall back to the session's entry.
type ExeID struct {
	// Dev is the kernel's internal dev_t: MAJOR<<20 | MINOR. It is NOT
	// stat(2)'s st_dev, which glibc and the kernel's stat encode as
	// (MINOR&0xff) | (MAJOR<<8) | ((MINOR&~0xff)<<12).
	Dev uint32
	Ino uint64
}

// IsZero reports whether id is the zero ExeID (no executable).
func (id ExeID) IsZero() bool { return id == ExeID{} }

func (id ExeID) String() string {
	return strconv.FormatUint(uint64(id.Dev>>20), 10) + ":" +
		strconv.FormatUint(uint64(id.Dev&(1<<20-1)), 10) + "/" +
		strconv.FormatUint(id.Ino, 10)
}

// KernelDev converts stat(2)'s st_dev to the kernel's internal dev_t
// encoding that the eBPF programs read from the superblock.
func KernelDev(statDev uint64) uint32 {
	return unix.Major(statDev)<<20 | unix.Minor(statDev)&(1<<20-1)
}

// ExeIDFromPath returns the ExeID of the file at path (symlinks followed).
//
// It is computed from stat(2), which reports the superblock's device and
// the inode number on ext4, xfs, tmpfs and most filesystems. On btrfs
// subvolumes and overlayfs, stat reports another device than the
// superblock's, so the result does not match what the kernel sees; use the
// ExeID carried by an exec event (EventExec) there.
func ExeIDFromPath(path string) (ExeID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return ExeID{}, fmt.Errorf("bpf: exe id of %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return ExeID{}, fmt.Errorf("bpf: exe id of %s: not a regular file", path)
	}
	return ExeID{Dev: KernelDev(uint64(st.Dev)), Ino: st.Ino}, nil
}
