package server

import (
	"net"
	"os"
	"testing"
)

// TestSockDiagOwner: the kernel names the uid owning the client end of a
// loopback connection; a connection that is not on this host has none.
func TestSockDiagOwner(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	d, err := newSockDiag()
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	for range 3 {
		uid, err := d.tcpOwner(sc.RemoteAddr().(*net.TCPAddr), sc.LocalAddr().(*net.TCPAddr))
		if err != nil || uid != uint32(os.Getuid()) {
			t.Fatalf("owner = %d, %v; want %d", uid, err, os.Getuid())
		}
	}
	far := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 9}
	if uid, err := d.tcpOwner(far, sc.LocalAddr().(*net.TCPAddr)); err == nil {
		t.Fatalf("a socket that does not exist has owner %d", uid)
	}
}
