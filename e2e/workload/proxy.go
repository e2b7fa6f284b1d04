package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// runProxy listens where Istio's rules redirect to and forwards every connection
// to where it was meant to go.
func runProxy(args []string) error {
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	outbound := fs.String("outbound", ":15001", "listen address for redirected outbound connections")
	inbound := fs.String("inbound", ":15006", "listen address for redirected inbound connections")
	inboundSource := fs.String("inbound-source", "127.0.0.6", "source address of forwarded inbound connections")
	if err := fs.Parse(args); err != nil {
		return err
	}
	errc := make(chan error, 2)
	for _, l := range []struct{ addr, source string }{{*outbound, ""}, {*inbound, *inboundSource}} {
		ln, err := net.Listen("tcp4", l.addr)
		if err != nil {
			return fmt.Errorf("listen %s: %w", l.addr, err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					errc <- fmt.Errorf("accept on %s: %w", l.addr, err)
					return
				}
				go forward(c.(*net.TCPConn), l.source)
			}
		}()
	}
	fmt.Printf("proxy: outbound %s, inbound %s (uid %d)\n", *outbound, *inbound, unix.Getuid())
	return <-errc
}

// onlyReader and onlyWriter hide ReadFrom/WriteTo so io.CopyBuffer does a plain
// read/write loop, not splice(2): sidecar proxies copy through user space.
type onlyReader struct{ io.Reader }
type onlyWriter struct{ io.Writer }

func forward(down *net.TCPConn, source string) {
	defer down.Close()
	dst, err := originalDst(down)
	if err != nil {
		return
	}
	d := net.Dialer{}
	if source != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(source)}
	}
	uc, err := d.Dial("tcp4", dst.String())
	if err != nil {
		down.SetLinger(0)
		return
	}
	up := uc.(*net.TCPConn)
	defer up.Close()
	var wg sync.WaitGroup
	pipe := func(dst, src *net.TCPConn) {
		defer wg.Done()
		_, err := io.CopyBuffer(onlyWriter{dst}, onlyReader{src}, make([]byte, 64<<10))
		if err != nil {
			// Pass a reset on instead of turning it into a clean end of stream.
			dst.SetLinger(0)
			dst.Close()
			src.Close()
			return
		}
		dst.CloseWrite()
	}
	wg.Add(2)
	go pipe(up, down)
	go pipe(down, up)
	wg.Wait()
}

// originalDst is where the client meant to connect before iptables REDIRECT.
func originalDst(c *net.TCPConn) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var (
		sa   unix.RawSockaddrInet4
		serr error
	)
	err = rc.Control(func(fd uintptr) {
		l := uint32(unsafe.Sizeof(sa))
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_IP, unix.SO_ORIGINAL_DST,
			uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&l)), 0)
		if e != 0 {
			serr = e
		}
	})
	if err != nil {
		return netip.AddrPort{}, err
	}
	if serr != nil {
		return netip.AddrPort{}, fmt.Errorf("SO_ORIGINAL_DST: %w", serr)
	}
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port), nil
}
