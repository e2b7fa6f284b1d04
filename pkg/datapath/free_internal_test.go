package datapath

import (
	"bytes"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sockhop/sockhop/internal/needs"
)

// Uninstall frees the sockhash while receivers may hold unread redirected
// bytes. Those bytes must still be read, first, and the sender's later
// bytes follow through TCP, in order. (Deleting a single socket's key while
// it holds unread redirected data stalled the later TCP data in an
// experiment on 6.18, which is why the datapath never takes a socket that
// may hold redirected data out of the sockhash.)
func TestFreeingTheSockhashKeepsUnreadData(t *testing.T) {
	needs.Root(t, "to load BPF programs")
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
		if err != nil {
			t.Fatalf("read after %d of %d bytes: %v", len(got), 2<<20, err)
		}
		got = append(got, buf[:n]...)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, append(first, second...)) {
		t.Fatal("the bytes after freeing the sockhash arrived out of order")
	}
}
