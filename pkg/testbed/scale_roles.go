package testbed

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

// ModeConnHold is a client that opens Conns connections to Target (an echo
// server), Parallel at a time, makes one Size-byte round trip on each, then
// holds them all open until Resume, and closes them. Its Result has the
// connections that completed and, in LatenciesNs, the time it took to set
// them all up. It prints heldConnsMarker on stderr once all are open, for
// WaitConnsHeld. The per-process descriptor limit bounds Conns: spread a
// large count over several peers (and several server ports, for the
// ephemeral ports).
const ModeConnHold = "conn-hold"

const heldConnsMarker = "sockhop-conns-held "

// ModeConnectClose is a client that opens Conns connections to Target and
// closes each at once, without sending.
const ModeConnectClose = "connect-close"

// ModeSlowSink is a server that reads nothing for its first 100 ms (times
// SOCKHOP_TEST_PATIENCE), then 64 KiB at a time with a millisecond's pause
// after each read (at most ~64 MB/s), until EOF, then replies with the byte
// count as ModeSink does: a receiver any sender outruns, even a sender slowed
// down by emulation, whose queue fills from the first byte.
const ModeSlowSink = "slow-sink"

func init() {
	ClientModes[ModeConnHold] = connHold
	ClientModes[ModeConnectClose] = connectClose
	ServerModes[ModeSlowSink] = slowSink
}

func slowSink(_ PeerSpec, c *net.TCPConn) {
	buf := make([]byte, 64<<10)
	var n int64
	time.Sleep(Patience(100 * time.Millisecond))
	for {
		got, err := c.Read(buf)
		n += int64(got)
		if err != nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	binary.Write(c, binary.LittleEndian, n)
}

func connectClose(spec PeerSpec) (Result, error) {
	var res Result
	for i := 0; i < max(spec.Conns, 1); i++ {
		c, err := Dial(spec, 0)
		if err != nil {
			return res, err
		}
		c.Close()
		res.Conns++
	}
	return res, nil
}

func connHold(spec PeerSpec) (Result, error) {
	n, par := max(spec.Conns, 1), max(spec.Parallel, 1)
	size := max(spec.Size, 1)
	conns := make([]*net.TCPConn, n)
	errs := make([]error, n)
	start := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, par)
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := Dial(spec, 0)
			if err != nil {
				errs[i] = err
				return
			}
			conns[i] = c
			msg := make([]byte, size)
			Fill(msg, uint64(i), 0)
			back := make([]byte, size)
			if _, err := c.Write(msg); err != nil {
				errs[i] = err
				return
			}
			if _, err := io.ReadFull(c, back); err != nil {
				errs[i] = err
				return
			}
			if string(back) != string(msg) {
				errs[i] = errors.New("echo differs from what was sent")
			}
		}(i)
	}
	wg.Wait()
	setup := time.Since(start)
	res := Result{LatenciesNs: []int64{setup.Nanoseconds()}}
	var msgs []string
	for i, err := range errs {
		if err == nil {
			res.Conns++
			res.BytesVerified += int64(size)
		} else if len(msgs) < 5 {
			msgs = append(msgs, fmt.Sprintf("conn %d: %v", i, err))
		}
	}
	fmt.Fprintf(os.Stderr, "%s%d\n", heldConnsMarker, res.Conns)
	<-resumed
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	if len(msgs) > 0 {
		return res, fmt.Errorf("%d of %d connections failed: %s", n-res.Conns, n, strings.Join(msgs, "; "))
	}
	return res, nil
}

// WaitConnsHeld waits until a ModeConnHold client holds its connections.
func WaitConnsHeld(p *Peer, timeout time.Duration) error {
	err := waitStderr(p, timeout, func(stderr string) bool { return strings.Contains(stderr, heldConnsMarker) })
	switch {
	case errors.Is(err, errExited):
		return fmt.Errorf("conn-hold client exited before holding its connections: %s", p.Stderr())
	case err != nil:
		return fmt.Errorf("conn-hold client still connecting after %v", timeout)
	}
	return nil
}
