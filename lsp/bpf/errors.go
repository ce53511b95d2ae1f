package bpf

import (
	"errors"
	"fmt"
)

// ErrUnsupported matches (errors.Is) every error Open returns because this
// host cannot run the kernel interceptor at all: no root or missing
// capabilities, no kernel BTF, no cgroup2, a kernel without the hooks. The
// daemon falls back to the LD_PRELOAD library alone on it.
var ErrUnsupported = errors.New("bpf: kernel interception unavailable")

// ErrBusy is returned by Open when another live process owns the pinned
// interceptor in the same pin directory.
var ErrBusy = errors.New("bpf: pinned interceptor in use by another process")

// ErrIncompatible is returned by Open when a pinned interceptor exists but
// cannot be adopted (other ABI, other cgroup, damaged pin directory) and
// Options.ReplaceStale is false.
var ErrIncompatible = errors.New("bpf: pinned interceptor cannot be adopted")

// UnsupportedError says which requirement is missing. It matches
// ErrUnsupported.
type UnsupportedError struct {
	// Requirement names what is missing: "root", "capabilities", "btf",
	// "cgroup2", "bpffs", "kernel".
	Requirement string
	Err         error
}

func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("bpf: kernel interception unavailable: %s: %v", e.Requirement, e.Err)
}

func (e *UnsupportedError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrUnsupported) true.
func (e *UnsupportedError) Is(target error) bool { return target == ErrUnsupported }

func unsupported(req string, format string, args ...any) error {
	return &UnsupportedError{Requirement: req, Err: fmt.Errorf(format, args...)}
}
