package testbed

// Peer modes for the stranded-receiver test: a receiver that reads with
// read(2) long enough to be redirected into, then starts to splice while
// redirected bytes sit unread (what no guard can prevent, only abort), and
// a sender that then waits to see what its end of the connection reports.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// ModeStrandSink (server) reads Size bytes of a Fill(Seed) stream
	// with read(2), waits until the rest of the stream's Bytes are queued
	// unread, then calls a blocking splice(2) and reports how it ended
	// (StrandSinkReport, on stderr).
	ModeStrandSink = "strand-sink"
	// ModeStrandRecoverSink (server) reads Size bytes of a Fill(Seed)
	// stream with read(2), waits until Size more are queued unread, makes
	// one non-blocking splice(2) (which cannot see them: EAGAIN), then
	// reads the rest of the stream's Bytes with read(2), 64 KiB every
	// 10 ms, checked, and reports (StrandSinkReport): a receiver that
	// splices once and goes back to read(2), which must not be aborted.
	ModeStrandRecoverSink = "strand-recover-sink"
	// ModeStrandSend (client) writes Bytes of a Fill(Seed) stream, then
	// blocks reading until the connection fails (or HazardDeadline), then
	// writes once more; it reports both errors (StrandSendReport). With
	// Size, it writes Size bytes first, the last MaxWrite of them after
	// StrandSettle (so that its receiver has read the rest and the
	// direction switches to redirect on that write), then waits for
	// Resume before the rest.
	ModeStrandSend = "strand-send"
)

// StrandSettle: what a ModeStrandSend peer with Size gives its receiver to
// read what it wrote before its last write of the Size bytes.
func StrandSettle() time.Duration { return Patience(200 * time.Millisecond) }

// StrandSinkReport is what a ModeStrandSink peer saw.
type StrandSinkReport struct {
	Read   int64 `json:"read"`   // bytes read with read(2), checked
	Reads  int   `json:"reads"`  // read(2) calls
	Queued int   `json:"queued"` // FIONREAD just before the splice
	// The splice: its result, errno (0: none) and how long it blocked.
	SpliceN     int           `json:"splice_n"`
	SpliceErrno int           `json:"splice_errno"`
	SpliceErr   string        `json:"splice_err,omitempty"`
	Blocked     time.Duration `json:"blocked"`
	Error       string        `json:"error,omitempty"` // the test could not run
}

// StrandSendReport is what a ModeStrandSend peer saw after its writes.
type StrandSendReport struct {
	Written    int64  `json:"written"`
	ReadErrno  int    `json:"read_errno"` // the blocking read after the writes
	ReadErr    string `json:"read_err,omitempty"`
	WriteErrno int    `json:"write_errno"` // writes after that: the first error
	WriteErr   string `json:"write_err,omitempty"`
	// WritesAfter: writes accepted after the read failed.
	WritesAfter int    `json:"writes_after"`
	Error       string `json:"error,omitempty"`
}

const (
	strandSplicingMarker = "sockhop-strand-splicing "
	strandSinkMarker     = "sockhop-strand-sink "
	strandSendMarker     = "sockhop-strand-send "
	strandRecoverMarker  = "sockhop-strand-recovering"
	strandPausedMarker   = "sockhop-strand-paused"
	strandWrittenMarker  = "sockhop-strand-written"
)

func init() {
	ServerModes[ModeStrandSink] = strandSink
	ServerModes[ModeStrandRecoverSink] = strandRecoverSink
	ClientModes[ModeStrandSend] = strandSend
}

func printJSON(marker string, v any) {
	js, _ := json.Marshal(v)
	fmt.Fprintf(os.Stderr, "%s%s\n", marker, js)
}

func errnoOf(err error) int {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return int(errno)
	}
	return 0
}

// blockingFD is the connection's descriptor, made blocking as a plain C
// program's (blocking).
func blockingFD(c *net.TCPConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	var fd int
	rc.Control(func(f uintptr) { fd = int(f) })
	return fd, blocking(fd)
}

// waitQueued waits until want bytes are queued unread on fd, and returns
// how many are.
func waitQueued(fd, want int) (int, error) {
	for end := time.Now().Add(HazardDeadline()); ; {
		n := inq(fd)
		if n >= want {
			return n, nil
		}
		if time.Now().After(end) {
			return n, fmt.Errorf("only %d of %d bytes queued", n, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func strandSink(spec PeerSpec, c *net.TCPConn) {
	var rep StrandSinkReport
	defer func() { printJSON(strandSinkMarker, rep) }()
	fail := func(err error) { rep.Error = err.Error() }
	fd, err := blockingFD(c)
	if err != nil {
		fail(err)
		return
	}
	// Plain reads, small enough to take several (the guard wants three).
	buf := make([]byte, 16<<10)
	v := &verifier{seed: spec.Seed, length: spec.Bytes}
	for rep.Read < int64(spec.Size) {
		n, err := unix.Read(fd, buf[:min(len(buf), spec.Size-int(rep.Read))])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n <= 0 {
			fail(fmt.Errorf("read at %d: %v (n=%d)", rep.Read, err, n))
			return
		}
		rep.Reads++
		if err := v.check(buf[:n]); err != nil {
			fail(err)
			return
		}
		rep.Read += int64(n)
	}
	// Wait for the rest to be queued (redirected, unread).
	if rep.Queued, err = waitQueued(fd, int(spec.Bytes-rep.Read)); err != nil {
		fail(err)
		return
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		fail(err)
		return
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	fmt.Fprintf(os.Stderr, "%s%d\n", strandSplicingMarker, rep.Queued)
	start := time.Now()
	for {
		// Blocking (SO_RCVTIMEO: sinkIdle): a stall ends as EAGAIN.
		var n int64
		if spec.Uring {
			var m int
			m, err = uringSplice(fd, p[1], 64<<10, spec.UringFixed)
			n = int64(m)
		} else {
			n, err = unix.Splice(fd, nil, p[1], nil, 64<<10, unix.SPLICE_F_MOVE)
		}
		rep.SpliceN = int(n)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	rep.Blocked = time.Since(start)
	if err != nil {
		rep.SpliceErrno, rep.SpliceErr = errnoOf(err), err.Error()
	}
}

func strandRecoverSink(spec PeerSpec, c *net.TCPConn) {
	var rep StrandSinkReport
	defer func() { printJSON(strandSinkMarker, rep) }()
	fail := func(err error) { rep.Error = err.Error() }
	fd, err := blockingFD(c)
	if err != nil {
		fail(err)
		return
	}
	buf := make([]byte, 64<<10)
	v := &verifier{seed: spec.Seed, length: spec.Bytes}
	read := func(n int) error {
		m, err := unix.Read(fd, buf[:min(len(buf), n)])
		if errors.Is(err, unix.EINTR) {
			return nil
		}
		if err != nil || m <= 0 {
			return fmt.Errorf("read at %d: %v (n=%d)", rep.Read, err, m)
		}
		rep.Reads++
		rep.Read += int64(m)
		return v.check(buf[:m])
	}
	for rep.Read < int64(spec.Size) {
		if err := read(min(16<<10, spec.Size-int(rep.Read))); err != nil {
			fail(err)
			return
		}
	}
	if rep.Queued, err = waitQueued(fd, spec.Size); err != nil {
		fail(err)
		return
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		fail(err)
		return
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	// Non-blocking on the socket's side (tcp_splice_read follows the
	// file's O_NONBLOCK, not SPLICE_F_NONBLOCK).
	if err := unix.SetNonblock(fd, true); err != nil {
		fail(err)
		return
	}
	n, err := unix.Splice(fd, nil, p[1], nil, 64<<10, unix.SPLICE_F_NONBLOCK)
	rep.SpliceN = int(n)
	if err != nil {
		rep.SpliceErrno, rep.SpliceErr = errnoOf(err), err.Error()
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		fail(err)
		return
	}
	fmt.Fprintln(os.Stderr, strandRecoverMarker)
	for rep.Read < spec.Bytes {
		if err := read(int(spec.Bytes - rep.Read)); err != nil {
			fail(err)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// StrandRecovering says whether a ModeStrandRecoverSink peer made its
// splice and reads again.
func StrandRecovering(p *Peer) bool {
	return strings.Contains(p.Stderr(), strandRecoverMarker)
}

func strandSend(spec PeerSpec) (Result, error) {
	var rep StrandSendReport
	res := Result{Conns: 1}
	defer func() { printJSON(strandSendMarker, rep) }()
	c, err := Dial(spec, 0)
	if err != nil {
		return res, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(HazardDeadline()))
	// Writes of MaxWrite exactly: at 4 KiB and more, the small-message
	// bound (256 KiB) does not apply, so the whole rest stays redirected.
	buf := make([]byte, max(spec.MaxWrite, 1))
	paused := spec.Size <= 0
	for rep.Written < spec.Bytes {
		if !paused && rep.Written+int64(len(buf)) >= int64(spec.Size) {
			time.Sleep(StrandSettle())
		}
		if !paused && rep.Written >= int64(spec.Size) {
			paused = true
			fmt.Fprintln(os.Stderr, strandPausedMarker)
			<-resumed
		}
		n := int(min(int64(len(buf)), spec.Bytes-rep.Written))
		Fill(buf[:n], spec.Seed, rep.Written)
		w, err := c.Write(buf[:n])
		rep.Written += int64(w)
		if err != nil {
			rep.Error = fmt.Sprintf("write at %d: %v", rep.Written, err)
			break
		}
	}
	res.BytesSent = rep.Written
	if rep.Error != "" {
		res.Errors = append(res.Errors, rep.Error)
		return res, nil
	}
	fmt.Fprintln(os.Stderr, strandWrittenMarker)
	// The receiver never writes: this read ends only when the connection does.
	_, err = c.Read(make([]byte, 1))
	if err == nil || errors.Is(err, io.EOF) {
		rep.ReadErr = fmt.Sprint(err)
	} else {
		rep.ReadErrno, rep.ReadErr = errnoOf(err), err.Error()
	}
	// A few writes: a socket that was redirecting may accept one more
	// (tcp_bpf_sendmsg) before the error shows.
	for i := 0; i < 3; i++ {
		if _, err = c.Write([]byte{0}); err != nil {
			rep.WriteErrno, rep.WriteErr = errnoOf(err), err.Error()
			break
		}
		rep.WritesAfter++
		time.Sleep(10 * time.Millisecond)
	}
	return res, nil
}

// StrandSink is the report a ModeStrandSink peer printed, once it has.
func StrandSink(p *Peer) (StrandSinkReport, bool) {
	var rep StrandSinkReport
	return rep, markedJSON(p.Stderr(), strandSinkMarker, &rep)
}

// StrandSplicing says whether a ModeStrandSink peer has started to splice.
func StrandSplicing(p *Peer) bool {
	return strings.Contains(p.Stderr(), strandSplicingMarker)
}

// StrandPaused says whether a ModeStrandSend peer with Size wrote its Size
// bytes and waits for Resume.
func StrandPaused(p *Peer) bool {
	return strings.Contains(p.Stderr(), strandPausedMarker)
}

// StrandWritten says whether a ModeStrandSend peer wrote all its bytes.
func StrandWritten(p *Peer) bool {
	return strings.Contains(p.Stderr(), strandWrittenMarker)
}

// StrandSend is the report a finished ModeStrandSend peer printed.
func StrandSend(p *Peer) (StrandSendReport, error) {
	var rep StrandSendReport
	if !markedJSON(p.Stderr(), strandSendMarker, &rep) {
		return rep, fmt.Errorf("strand sender printed no report: %s", p.Stderr())
	}
	return rep, nil
}

func markedJSON(stderr, marker string, v any) bool {
	for _, line := range strings.Split(stderr, "\n") {
		if js, ok := strings.CutPrefix(line, marker); ok && json.Unmarshal([]byte(js), v) == nil {
			return true
		}
	}
	return false
}
