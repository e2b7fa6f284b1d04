package testbed

// A peer mode for the retirement tests: a C-style program with a reader
// thread blocked on the socket its writer thread sends on, the one case in
// which a send's view of "my last redirect is done" can be wrong (another
// thread of the socket may be in the middle of one).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// ModeReaderHeld (client) holds a thread blocked in read(2) on its
// connection (readerHold at most) while another thread writes Bytes in
// Size writes to a
// ModeSlowSink (from the start of a connection, so that the bound trips),
// waits until everything it wrote has been acknowledged, then prints
// ReaderHeldReport on its stderr (WaitReaderHeld) and waits for Resume. Then
// it writes Bytes more through a small send buffer (waiting for room wakes
// the reader, which returns), ends its sending and reads the sink's count
// of both.
const ModeReaderHeld = "reader-held"

// ReaderHeldReport is what a ModeReaderHeld peer saw while its reader was
// blocked.
type ReaderHeldReport struct {
	Written int64 `json:"written"`
	// Wakeups: times the reader's read returned while it was to be held
	// (a reader that was woken left the kernel for a moment: the test
	// did not hold it all along).
	Wakeups int64  `json:"wakeups"`
	Error   string `json:"error,omitempty"`
}

const readerHeldMarker = "sockhop-reader-held "

// readerHold is how long a ModeReaderHeld reader stays in one read(2) at
// most: longer than its client's first writes and its wait after them.
func readerHold() time.Duration { return Patience(5 * time.Second) }

func init() {
	ClientModes[ModeReaderHeld] = readerHeld
}

// WaitReaderHeld waits until a ModeReaderHeld client wrote its first Bytes
// with its reader blocked, and returns what it reported.
func WaitReaderHeld(p *Peer, timeout time.Duration) (ReaderHeldReport, error) {
	var rep ReaderHeldReport
	err := waitStderr(p, timeout, func(stderr string) bool { return markedJSON(stderr, readerHeldMarker, &rep) })
	switch {
	case errors.Is(err, errExited):
		return rep, fmt.Errorf("reader-held client exited before it reported: %s", p.Stderr())
	case err != nil:
		return rep, fmt.Errorf("reader-held client did not report within %v: %s", timeout, p.Stderr())
	}
	return rep, nil
}

func readerHeld(spec PeerSpec) (Result, error) {
	res := Result{Conns: 1}
	c, err := Dial(spec, 0)
	if err != nil {
		return res, err
	}
	defer c.Close()
	fd, err := blockingFD(c)
	if err != nil {
		return res, err
	}
	// The reader stays in the kernel until readerHold has passed (its
	// receive timeout), or until it is woken. A send buffer that the
	// writes never fill: a writer waiting for room would wake the reader
	// when room comes (sk_write_space).
	hold := unix.NsecToTimeval(readerHold().Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &hold); err != nil {
		return res, err
	}
	// Forced: net.core.wmem_max caps SO_SNDBUF (212992 by default).
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, int(2*spec.Bytes)); err != nil {
		return res, fmt.Errorf("SO_SNDBUFFORCE (the peer needs CAP_NET_ADMIN): %w", err)
	}

	var stopping atomic.Bool
	var wakeups atomic.Int64
	readerDone := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // the read blocks this thread in the kernel
		buf := make([]byte, 64)
		for {
			n, err := unix.Read(fd, buf)
			if stopping.Load() {
				readerDone <- nil
				return
			}
			wakeups.Add(1)
			switch {
			case errors.Is(err, unix.EINTR), errors.Is(err, unix.EAGAIN):
				continue // a wakeup without data (tcp_bpf_recvmsg returns EAGAIN then)
			case err != nil:
				readerDone <- fmt.Errorf("blocked read: %w", err)
				return
			case n > 0:
				readerDone <- fmt.Errorf("read %d bytes from a sink that sends none until EOF", n)
				return
			}
		}
	}()
	time.Sleep(Patience(100 * time.Millisecond)) // the reader is in read(2)

	buf := make([]byte, max(spec.Size, 1))
	Fill(buf, 7, 0)
	write := func(n int64) error {
		for left := n; left > 0; {
			w, err := unix.Write(fd, buf[:min(int64(len(buf)), left)])
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return fmt.Errorf("write at %d: %w", res.BytesSent, err)
			}
			left -= int64(w)
			res.BytesSent += int64(w)
		}
		return nil
	}
	var rep ReaderHeldReport
	fail := func(err error) (Result, error) {
		rep.Error = err.Error()
		printJSON(readerHeldMarker, rep)
		return res, err
	}
	if err := write(spec.Bytes); err != nil {
		return fail(err)
	}
	rep.Written = res.BytesSent
	// Everything written was acknowledged: the sink has it (its last
	// ACKs are what the datapath's retirement runs on).
	for end := time.Now().Add(HazardDeadline()); ; {
		info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return fail(err)
		}
		if n, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ); err == nil && n == 0 && info.Unacked == 0 {
			break
		}
		if time.Now().After(end) {
			return fail(fmt.Errorf("the sink did not acknowledge what was written within %v", HazardDeadline()))
		}
		time.Sleep(5 * time.Millisecond)
	}
	// What the datapath does on those ACKs, it has done by now.
	time.Sleep(Patience(500 * time.Millisecond))
	rep.Wakeups = wakeups.Load()
	printJSON(readerHeldMarker, rep)
	<-resumed

	// Let the reader go: a writer that has to wait for room in a small
	// send buffer wakes it when room comes (sk_write_space), or its
	// receive timeout ends its read. Then the rest of the stream, the end,
	// and the count.
	stopping.Store(true)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 16<<10); err != nil {
		return res, err
	}
	if err := write(spec.Bytes); err != nil {
		return res, err
	}
	select {
	case err := <-readerDone:
		if err != nil {
			return res, err
		}
	case <-time.After(HazardDeadline()):
		return res, fmt.Errorf("the reader did not return within %v", HazardDeadline())
	}
	if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
		return res, fmt.Errorf("shutdown writing: %w", err)
	}
	deadline := unix.NsecToTimeval(HazardDeadline().Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &deadline); err != nil {
		return res, err
	}
	var count [8]byte
	for got := 0; got < len(count); {
		n, err := unix.Read(fd, count[got:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n == 0 {
			return res, fmt.Errorf("read the sink's count (%d of 8 bytes): %v", got, err)
		}
		got += n
	}
	res.BytesVerified = int64(binary.LittleEndian.Uint64(count[:]))
	return res, nil
}
