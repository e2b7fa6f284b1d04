package main

import (
	"flag"
	"fmt"
	"net"

	"golang.org/x/sys/unix"

	"github.com/sockhop/sockhop/pkg/testbed"
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

func forward(down *net.TCPConn, source string) {
	dst, err := testbed.OriginalDst(down)
	if err != nil {
		down.Close()
		return
	}
	d := net.Dialer{}
	if source != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(source)}
	}
	uc, err := d.Dial("tcp4", dst.String())
	if err != nil {
		down.SetLinger(0)
		down.Close()
		return
	}
	testbed.Relay(down, uc.(*net.TCPConn))
}
