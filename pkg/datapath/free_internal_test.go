package datapath

import (
	"bytes"
	"errors"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sockhop/sockhop/internal/needs"
)

// Closing every handle of a datapath (what an uninstall does after it
// unpinned everything) does not free the sockhash of live connections:
// their psocks hold the sk_msg program they were paired under, and it
// holds its maps. So a connection with unread redirected bytes carries on
// redirecting, in order, until it closes (docs/datapath.md). The test
// checks that the later bytes were redirected too (the receiver's TCP_INFO
// never saw them) and that everything arrives in order.
func TestClosedDatapathKeepsItsConnections(t *testing.T) {
	needs.Root(t, "to load BPF programs")
	if err := Probe(); err != nil {
		needs.Missing(t, "this kernel cannot run sockhop: "+err.Error())
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lf, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	sa, err := unix.Getsockname(int(lf.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	d, err := loadSelfTestDatapath(-1)
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	p, err := redirectedPair(&selfTestNet{ln: int(lf.Fd()), addr: sa}, d)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
	unix.SetsockoptTimeval(p.a, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	unix.SetsockoptTimeval(p.b, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)

	first := bytes.Repeat([]byte("1"), 1<<20)
	if err := writeRedirected(d, p.a, first); err != nil {
		t.Fatal(err)
	}
	d.close() // what Uninstall does: links first, then the maps are freed

	second := bytes.Repeat([]byte("2"), 1<<20)
	werr := make(chan error, 1)
	go func() {
		b := second
		for len(b) > 0 {
			n, err := unix.Write(p.a, b)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				werr <- err
				return
			}
			b = b[n:]
		}
		werr <- nil
	}()
	got := make([]byte, 0, 2<<20)
	buf := make([]byte, 64<<10)
	for len(got) < 2<<20 {
		n, err := unix.Read(p.b, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatalf("read after %d of %d bytes: %v", len(got), 2<<20, err)
		}
		got = append(got, buf[:n]...)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, append(first, second...)) {
		t.Fatal("the bytes after closing the datapath arrived out of order")
	}
	info, err := unix.GetsockoptTCPInfo(p.b, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		t.Fatal(err)
	}
	if info.Bytes_received >= 1<<20 {
		t.Fatalf("the receiver's TCP saw %d bytes: the later chunk went through TCP, not by the program the connection holds", info.Bytes_received)
	}
}
