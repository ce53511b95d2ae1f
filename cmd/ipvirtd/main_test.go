package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipvirt/ipvirt/backend/client"
	"github.com/ipvirt/ipvirt/sim/daemonproc"
)

// A SIGHUP while the daemon was starting (opening its config and store,
// about 50 ms) used to kill it with exit 129, which systemd's
// Restart=on-failure counts as a clean stop. The test starts ipvirtd as the
// unit does (with NOTIFY_SOCKET), waits for it to open its config file (it
// is then past the Go runtime's start, in main), and sends SIGHUP every
// 200 µs until well after it serves: it must stay alive, answer, and tell
// the supervisor READY=1.
func TestSIGHUPDuringStartIsAReload(t *testing.T) {
	bin, err := daemonproc.Binary("ipvirtd")
	if err != nil {
		t.Fatal(err)
	}
	d, err := daemonproc.New(t.TempDir(), "adapter: lo\nsource: static\nsession_identity: posix\n"+
		"static_pool: {start: 127.77.0.10, end: 127.77.0.20, subnet_mask: 255.255.255.0}\n", false)
	if err != nil {
		t.Fatal(err)
	}
	notifyPath := filepath.Join(d.Dir, "notify.sock")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()

	for round := range 3 {
		ino, err := unix.InotifyInit1(unix.IN_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := unix.InotifyAddWatch(ino, d.Config, unix.IN_OPEN); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "--config", d.Config)
		cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notifyPath)
		logs := &daemonproc.LockedBuffer{}
		cmd.Stdout, cmd.Stderr = logs, logs
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		var ev [unix.SizeofInotifyEvent + unix.NAME_MAX + 1]byte
		if _, err := unix.Read(ino, ev[:]); err != nil { // blocks until the config is opened
			t.Fatal(err)
		}
		unix.Close(ino)

		served := false
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
			cmd.Process.Signal(syscall.SIGHUP)
			select {
			case err := <-exited:
				t.Fatalf("round %d: ipvirtd died of SIGHUP during start-up: %v\n%s", round, err, logs)
			case <-time.After(200 * time.Microsecond):
			}
			if !served {
				if c, err := client.Dial(d.Socket, 50*time.Millisecond); err == nil {
					_, err = c.Status()
					c.Close()
					if served = err == nil; served {
						deadline = time.Now().Add(300 * time.Millisecond)
					}
				}
			}
		}
		if !served {
			t.Fatalf("round %d: ipvirtd never answered\n%s", round, logs)
		}
		notify.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64)
		n, err := notify.Read(buf)
		if err != nil || string(buf[:n]) != "READY=1" {
			t.Fatalf("round %d: supervisor got %q, %v; want READY=1", round, buf[:n], err)
		}
		cmd.Process.Signal(syscall.SIGTERM)
		if err := <-exited; err != nil {
			t.Fatalf("round %d: stop: %v\n%s", round, err, logs)
		}
	}
}
