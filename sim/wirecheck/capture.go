// Package wirecheck captures the Ethernet frames of a network namespace and
// decodes them, so that a simulation can check what really crossed a LAN
// rather than what its programs claim to have sent.
//
// Capture uses a raw AF_PACKET socket opened with golang.org/x/sys/unix (no
// cgo, no libpcap); decoding uses the pure-Go gopacket layers.
package wirecheck

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Frame is one captured Ethernet frame.
type Frame struct {
	// At is when the frame was read from the socket, not when it crossed
	// the wire; frames are read in kernel order so At never goes backwards.
	At time.Time
	// Ifindex is the interface the frame arrived on, which on a bridge
	// tells which port (and so which host) it came from.
	Ifindex int
	Data    []byte
}

const (
	// A burst of DHCP or ARP traffic from many simulated hosts must not
	// overflow the socket while the reader goroutine is descheduled.
	rcvBufBytes = 64 << 20 // a 500-session storm puts ~8,000 frames of ~2 KiB truesize on the LAN
	// Short enough for Stop to return promptly, long enough not to spin.
	rcvTimeout = 100 * time.Millisecond
	// Veth and bridge ports hand GSO super-packets to packet sockets, so a
	// frame can be far larger than the MTU.
	readBufBytes = 256 << 10
	// Stop drains what is already queued, but must not be held forever by
	// a sender that never pauses.
	drainLimit = time.Second
)

// Capture is a running capture started by Start.
type Capture struct {
	fd   int
	stop chan struct{}
	done chan struct{}
	once sync.Once

	mu     sync.Mutex
	frames []Frame
}

// Start opens the capture socket inside open (the caller's function that runs
// fn with the OS thread in the right network namespace; the socket stays in
// that namespace afterwards) and receives frames in a goroutine until Stop.
//
// The socket is not bound to an interface, so it sees every interface of the
// namespace, including ones created after Start. Frames the namespace itself
// transmits (PACKET_OUTGOING) are dropped: a frame crossing a bridge is then
// kept once per ingress port instead of once more per egress port.
func Start(open func(fn func() error) error) (*Capture, error) {
	fd := -1
	err := open(func() error {
		s, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("wirecheck: open AF_PACKET socket: %w", err)
		}
		fd = s
		return nil
	})
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("wirecheck: start capture: %w", err)
	}
	if fd < 0 {
		return nil, errors.New("wirecheck: start capture: open did not run the socket function")
	}
	if err := configure(fd); err != nil {
		unix.Close(fd)
		return nil, err
	}
	c := &Capture{fd: fd, stop: make(chan struct{}), done: make(chan struct{})}
	go c.run()
	return c, nil
}

func configure(fd int) error {
	// SO_RCVBUFFORCE ignores rmem_max but needs CAP_NET_ADMIN; without it
	// the plain option still gets as much as the system allows.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvBufBytes); err != nil {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvBufBytes); err != nil {
			return fmt.Errorf("wirecheck: set receive buffer: %w", err)
		}
	}
	tv := unix.NsecToTimeval(rcvTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("wirecheck: set receive timeout: %w", err)
	}
	return nil
}

func (c *Capture) run() {
	defer close(c.done)
	buf := make([]byte, readBufBytes)
	var drainUntil time.Time
	for {
		flags := 0
		if drainUntil.IsZero() {
			select {
			case <-c.stop:
				drainUntil = time.Now().Add(drainLimit)
			default:
			}
		}
		if !drainUntil.IsZero() {
			if time.Now().After(drainUntil) {
				return
			}
			// Frames already queued when Stop was called did cross the
			// wire before it, so they belong in the result.
			flags = unix.MSG_DONTWAIT
		}
		n, from, err := unix.Recvfrom(c.fd, buf, flags)
		switch {
		case err == nil:
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
			if !drainUntil.IsZero() && !errors.Is(err, unix.EINTR) {
				return
			}
			continue
		case errors.Is(err, unix.ENETDOWN):
			// An interface of the namespace went down; the others go on.
			continue
		default:
			// The socket is unusable; Stop still returns what was kept.
			return
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		if !ok || !keep(ll) {
			continue
		}
		f := Frame{At: time.Now(), Ifindex: ll.Ifindex, Data: append([]byte(nil), buf[:n]...)}
		c.mu.Lock()
		c.frames = append(c.frames, f)
		c.mu.Unlock()
	}
}

func keep(ll *unix.SockaddrLinklayer) bool {
	if ll.Pkttype == unix.PACKET_OUTGOING {
		return false
	}
	// Only these link types carry an Ethernet header that the decoders
	// expect; a tun or ipip device would hand over bare IP packets.
	return ll.Hatype == unix.ARPHRD_ETHER || ll.Hatype == unix.ARPHRD_LOOPBACK
}

// Stop ends the capture and returns every kept frame in order. It is
// idempotent so that a deferred Stop can follow an explicit one.
func (c *Capture) Stop() []Frame {
	c.once.Do(func() {
		close(c.stop)
		<-c.done
		unix.Close(c.fd)
	})
	return c.Frames()
}

// Frames returns a snapshot of the frames kept so far, so a test can wait for
// a frame to appear while the capture keeps running.
func (c *Capture) Frames() []Frame {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Frame(nil), c.frames...)
}

// htons converts to network byte order, which the protocol argument of an
// AF_PACKET socket is expected in.
func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}
