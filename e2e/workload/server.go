package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/sockhop/sockhop/pkg/testbed"
)

// The request/response protocol: the client sends a header (request size,
// response size) and the request body; the server answers with a response body
// of the asked size. Connections are kept open, as HTTP/1.1 keep-alive is.
type rrHeader struct {
	ReqSize  uint32
	RespSize uint32
}

// The stream protocol is testbed's: the client's header names its seed and the
// length; both sides then send `length` pseudo-random bytes at once (the server's
// mixed with its own seed, so a client that reached the wrong server notices) and
// check every byte they receive.
const streamMagic = 0x504f4853 // "SHOP"

type streamHeader struct {
	Magic    uint32
	MaxWrite uint32
	Seed     uint64
	Length   int64
}

const maxMessage = 16 << 20

func runServer(args []string) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	rrAddr := fs.String("rr", ":8080", "listen address of the request/response service")
	streamAddr := fs.String("stream", ":8081", "listen address of the checksummed stream service")
	seed := fs.Uint64("seed", 0, "identity mixed into the streams this server sends")
	if err := fs.Parse(args); err != nil {
		return err
	}
	errc := make(chan error, 2)
	for _, s := range []struct {
		addr   string
		handle func(*net.TCPConn)
	}{
		{*rrAddr, serveRR},
		{*streamAddr, func(c *net.TCPConn) { serveStream(c, *seed) }},
	} {
		ln, err := net.Listen("tcp4", s.addr)
		if err != nil {
			return fmt.Errorf("listen %s: %w", s.addr, err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					errc <- fmt.Errorf("accept on %s: %w", s.addr, err)
					return
				}
				go s.handle(c.(*net.TCPConn))
			}
		}()
	}
	fmt.Printf("server: request/response on %s, streams on %s, seed %d\n", *rrAddr, *streamAddr, *seed)
	return <-errc
}

func serveRR(c *net.TCPConn) {
	defer c.Close()
	var (
		hdr  rrHeader
		req  []byte
		resp []byte
	)
	for {
		if err := binary.Read(c, binary.LittleEndian, &hdr); err != nil {
			return
		}
		if hdr.ReqSize > maxMessage || hdr.RespSize > maxMessage {
			c.SetLinger(0)
			return
		}
		if int(hdr.ReqSize) > len(req) {
			req = make([]byte, hdr.ReqSize)
		}
		if _, err := io.ReadFull(c, req[:hdr.ReqSize]); err != nil {
			return
		}
		if int(hdr.RespSize) > len(resp) {
			resp = make([]byte, hdr.RespSize)
			testbed.Fill(resp, 1, 0)
		}
		if _, err := c.Write(resp[:hdr.RespSize]); err != nil {
			return
		}
	}
}

func serveStream(c *net.TCPConn, seed uint64) {
	defer c.Close()
	var hdr streamHeader
	if err := binary.Read(c, binary.LittleEndian, &hdr); err != nil || hdr.Magic != streamMagic || hdr.MaxWrite == 0 {
		return
	}
	if _, _, err := exchange(c, hdr.Seed^seed, hdr.Seed, hdr.Length, int(hdr.MaxWrite), 0); err != nil {
		// Reset: the client must not mistake a failed check for success.
		c.SetLinger(0)
	}
}

// exchange sends `length` bytes of stream(sendSeed) while it reads and checks
// `length` bytes of stream(recvSeed) and the EOF after them: full duplex.
// bytesPerSec > 0 paces the sending side.
func exchange(c *net.TCPConn, sendSeed, recvSeed uint64, length int64, maxWrite int, bytesPerSec int64) (sent, verified int64, err error) {
	var (
		wg   sync.WaitGroup
		werr error
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		var w io.Writer = c
		if bytesPerSec > 0 {
			w = newPacedWriter(c, bytesPerSec)
		}
		sent, werr = testbed.WriteStream(w, sendSeed, length, maxWrite)
		if werr == nil {
			werr = c.CloseWrite()
		}
	}()
	verified, err = testbed.ReadStream(c, recvSeed, length)
	wg.Wait()
	return sent, verified, errors.Join(werr, err)
}

// runSleep waits for SIGTERM: the main container of a pod whose work is exec'd into it.
func runSleep() error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	<-ctx.Done()
	return nil
}
