package testbed

// Peer modes for the redirect hazard tests (docs/hazards.md): applications
// that read the way real programs do (splice, MSG_WAITALL, a Go relay whose
// io.Copy splices), readers that stop reading until told to resume, and
// clients that bound every run with a deadline and report what they saw.

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Server modes.
const (
	// ModeRelay: an application relaying to Target with
	// io.Copy(*net.TCPConn, *net.TCPConn) both ways, which splices.
	ModeRelay = "relay"
	// ModeSpliceSink reads a hazard stream with splice(2) into a pipe.
	ModeSpliceSink = "splice-sink"
	// ModeWaitAllSink reads a hazard stream with blocking
	// recv(Size, MSG_WAITALL) (Size 0: 100000) and counts short reads.
	ModeWaitAllSink = "waitall-sink"
	// ModeReadSink reads a hazard stream with read(2).
	ModeReadSink = "read-sink"
	// ModeStallSink is ModeReadSink that reads nothing until Resume.
	ModeStallSink = "stall-sink"
	// ModeStallProxy is a transparent proxy (to SO_ORIGINAL_DST, or
	// Target) that reads nothing from its client until Resume.
	ModeStallProxy = "stall-proxy"
)

// Client modes.
const (
	// ModeDeadlineStream is ModeStream on one connection per Conns, each
	// bounded by HazardDeadline.
	ModeDeadlineStream = "deadline-stream"
	// ModeSendReport sends a hazard stream of Bytes (writes up to
	// MaxWrite) to a sink and reads its SinkReport.
	ModeSendReport = "send-report"
	// ModeHold writes a hazard stream of Bytes with non-blocking writes
	// until it is held back (EAGAIN and no room for HoldWait), reports
	// that on its stderr (WaitHeld), then writes the rest blocking and
	// reads the sink's report.
	ModeHold = "hold"
)

// HoldWait is how long a writer that got EAGAIN must stay unwritable to
// count as held back.
const HoldWait = 500 * time.Millisecond

// HazardDeadline bounds each hazard client's connection and each sink's
// wait for data (SOCKHOP_HAZARD_DEADLINE overrides, e.g. "30s"): a hang
// becomes a reported error.
func HazardDeadline() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("SOCKHOP_HAZARD_DEADLINE")); err == nil && d > 0 {
		return d
	}
	return 60 * time.Second
}

// sinkIdle is how long a sink waits for its next byte before it reports
// that no data came.
const sinkIdle = 10 * time.Second

// TCPBytes are the byte counters of TCP_INFO (what `ss -i` shows).
type TCPBytes struct {
	BytesSent     uint64 `json:"bytes_sent"`
	BytesAcked    uint64 `json:"bytes_acked"`
	BytesReceived uint64 `json:"bytes_received"`
}

// SinkReport is what a sink replies after the stream's EOF (or failure).
type SinkReport struct {
	Method     string   `json:"method"`
	Verified   int64    `json:"verified"` // bytes in their place, in order
	Reads      int      `json:"reads"`
	ShortReads int      `json:"short_reads"` // waitall: reads returning less than asked
	FirstShort string   `json:"first_short,omitempty"`
	Error      string   `json:"error,omitempty"`
	TCPInfo    TCPBytes `json:"tcp_info"` // the sink's socket, at EOF
}

// HazardReport is what ModeSendReport and ModeHold clients print on their
// stderr; their Result carries the byte counts.
type HazardReport struct {
	Held    bool       `json:"held"`
	Queued  int64      `json:"queued"`   // bytes written before held back (or the cap)
	TCPInfo TCPBytes   `json:"tcp_info"` // the client's socket, after the report
	Sink    SinkReport `json:"sink"`
}

const (
	heldMarker   = "sockhop-hazard-held "
	reportMarker = "sockhop-hazard-report "
)

func init() {
	ServerModes[ModeRelay] = relay
	ServerModes[ModeSpliceSink] = func(spec PeerSpec, c *net.TCPConn) { sink(spec, c, "splice", spliceReader) }
	ServerModes[ModeWaitAllSink] = func(spec PeerSpec, c *net.TCPConn) { sink(spec, c, "waitall", waitAllReader) }
	ServerModes[ModeReadSink] = func(spec PeerSpec, c *net.TCPConn) { sink(spec, c, "read", plainReader) }
	ServerModes[ModeStallSink] = func(spec PeerSpec, c *net.TCPConn) {
		<-resumed
		sink(spec, c, "read", plainReader)
	}
	ServerModes[ModeStallProxy] = stallProxy
	ClientModes[ModeDeadlineStream] = deadlineStream
	ClientModes[ModeSendReport] = func(spec PeerSpec) (Result, error) { return sendReport(spec, false) }
	ClientModes[ModeHold] = func(spec PeerSpec) (Result, error) { return sendReport(spec, true) }

	// Peers catch SIGUSR1 (Resume) from their start: the signal may come
	// before the mode has accepted its connection, and uncaught it kills.
	if _, ok := os.LookupEnv(PeerEnv); ok {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGUSR1)
		go func() {
			<-sig
			close(resumed)
		}()
	}
}

// resumed is closed when the peer gets SIGUSR1.
var resumed = make(chan struct{})

// Resume lets a stall-sink or stall-proxy peer read.
func Resume(p *Peer) error {
	if err := p.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		return fmt.Errorf("resume %s peer %d: %w", p.Spec.Role, p.PID(), err)
	}
	return nil
}

// WaitHeld waits until a ModeHold client is held back (or wrote all its
// bytes without being held) and returns what it queued until then.
func WaitHeld(p *Peer, timeout time.Duration) (HazardReport, error) {
	var rep HazardReport
	err := waitStderr(p, timeout, func(stderr string) bool {
		var ok bool
		rep, ok = markedLine(stderr, heldMarker)
		return ok
	})
	switch {
	case errors.Is(err, errExited):
		return rep, fmt.Errorf("hold client exited before it was held back: %s", p.Stderr())
	case err != nil:
		return rep, fmt.Errorf("hold client neither held back nor done after %v", timeout)
	}
	return rep, nil
}

// Report is the HazardReport a finished ModeSendReport or ModeHold client printed.
func Report(p *Peer) (HazardReport, error) {
	if rep, ok := markedLine(p.Stderr(), reportMarker); ok {
		return rep, nil
	}
	return HazardReport{}, fmt.Errorf("%s peer printed no hazard report: %s", p.Spec.Role, p.Stderr())
}

func markedLine(stderr, marker string) (HazardReport, bool) {
	for _, line := range strings.Split(stderr, "\n") {
		if js, ok := strings.CutPrefix(line, marker); ok {
			var rep HazardReport
			if json.Unmarshal([]byte(js), &rep) == nil {
				return rep, true
			}
		}
	}
	return HazardReport{}, false
}

func printMarked(marker string, rep HazardReport) {
	js, _ := json.Marshal(rep)
	fmt.Fprintf(os.Stderr, "%s%s\n", marker, js)
}

// relay is an application that forwards with the standard library's
// io.Copy between two *net.TCPConn: on Linux that is splice(2). No
// deadlines: a real relay has none.
func relay(spec PeerSpec, down *net.TCPConn) {
	uc, err := net.Dial("tcp", spec.Target)
	if err != nil {
		return
	}
	up := uc.(*net.TCPConn)
	defer up.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		io.Copy(up, down)
		up.CloseWrite()
	}()
	go func() {
		defer wg.Done()
		io.Copy(down, up)
		down.CloseWrite()
	}()
	wg.Wait()
}

// stallProxy connects upstream at once but reads nothing from its client
// until Resume; then it forwards both ways with read/write copies, as
// proxies do.
func stallProxy(spec PeerSpec, down *net.TCPConn) {
	target, err := proxyTarget(spec, down)
	if err != nil {
		return
	}
	uc, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	up := uc.(*net.TCPConn)
	defer up.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		<-resumed
		io.CopyBuffer(onlyWriter{up}, onlyReader{down}, make([]byte, 64<<10))
		up.CloseWrite()
	}()
	go func() {
		defer wg.Done()
		io.CopyBuffer(onlyWriter{down}, onlyReader{up}, make([]byte, 64<<10))
		down.CloseWrite()
	}()
	wg.Wait()
}

// verifier checks a stream's bytes in order.
type verifier struct {
	seed   uint64
	pos    int64
	length int64
	want   []byte
}

func (v *verifier) check(b []byte) error {
	if v.pos+int64(len(b)) > v.length {
		return fmt.Errorf("%d bytes more than the %d expected", v.pos+int64(len(b))-v.length, v.length)
	}
	if cap(v.want) < len(b) {
		v.want = make([]byte, len(b))
	}
	want := v.want[:len(b)]
	Fill(want, v.seed, v.pos)
	for i := range b {
		if b[i] != want[i] {
			return fmt.Errorf("wrong byte at offset %d", v.pos+int64(i))
		}
	}
	v.pos += int64(len(b))
	return nil
}

// A reader reads the body of a hazard stream into v, filling rep.
type reader func(spec PeerSpec, c *net.TCPConn, fd int, v *verifier, rep *SinkReport) error

// sink reads a hazard stream (header, then Length bytes, then EOF) with
// read, checks every byte and replies with a SinkReport.
func sink(spec PeerSpec, c *net.TCPConn, method string, read reader) {
	rep := SinkReport{Method: method}
	defer func() {
		js, _ := json.Marshal(rep)
		c.SetWriteDeadline(time.Now().Add(HazardDeadline()))
		c.Write(append(js, '\n'))
	}()
	c.SetReadDeadline(time.Now().Add(HazardDeadline()))
	var hdr streamHeader
	if err := binary.Read(c, binary.LittleEndian, &hdr); err != nil || hdr.Magic != streamMagic {
		rep.Error = fmt.Sprintf("read stream header: %v", err)
		return
	}
	v := &verifier{seed: hdr.Seed, length: hdr.Length}
	rc, err := c.SyscallConn()
	if err != nil {
		rep.Error = err.Error()
		return
	}
	var fd int
	rc.Control(func(f uintptr) { fd = int(f) })
	err = read(spec, c, fd, v, &rep)
	rep.Verified = v.pos
	if info, ierr := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO); ierr == nil {
		rep.TCPInfo = TCPBytes{BytesSent: info.Bytes_sent, BytesAcked: info.Bytes_acked, BytesReceived: info.Bytes_received}
	}
	if err != nil {
		rep.Error = fmt.Sprintf("%s: %v after %d of %d bytes (%d bytes queued unread)", method, err, v.pos, v.length, inq(fd))
		// Read and drop the rest so that the client's writes end and it
		// gets this report rather than a reset.
		drain(fd)
	}
}

// drain reads the socket until EOF or an error (or sinkIdle without data).
func drain(fd int) {
	if err := blocking(fd); err != nil {
		return
	}
	buf := make([]byte, 256<<10)
	for {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if n <= 0 || err != nil {
			return
		}
	}
}

func inq(fd int) int {
	n, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
	if err != nil {
		return -1
	}
	return n
}

// blocking puts the socket in blocking mode, as a plain C program's, with
// sinkIdle as its receive timeout so that a stalled read ends.
func blocking(fd int) error {
	if err := unix.SetNonblock(fd, false); err != nil {
		return err
	}
	tv := unix.NsecToTimeval(sinkIdle.Nanoseconds())
	return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
}

func plainReader(_ PeerSpec, c *net.TCPConn, _ int, v *verifier, rep *SinkReport) error {
	buf := make([]byte, 256<<10)
	for {
		c.SetReadDeadline(time.Now().Add(sinkIdle))
		n, err := c.Read(buf)
		if n > 0 {
			rep.Reads++
			if cerr := v.check(buf[:n]); cerr != nil {
				return cerr
			}
		}
		if errors.Is(err, io.EOF) {
			if v.pos != v.length {
				return errors.New("early EOF")
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// spliceReader moves the data from the socket into a pipe with blocking
// splice(2), as a zero-copy C program or Go's io.Copy would, and reads the
// pipe to check it.
func spliceReader(_ PeerSpec, _ *net.TCPConn, fd int, v *verifier, rep *SinkReport) error {
	if err := blocking(fd); err != nil {
		return err
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return err
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	buf := make([]byte, 64<<10) // the pipe's capacity
	for {
		n, err := unix.Splice(fd, nil, p[1], nil, len(buf), unix.SPLICE_F_MOVE)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			return fmt.Errorf("splice returned no data for %v", sinkIdle)
		}
		if err != nil {
			return fmt.Errorf("splice: %w", err)
		}
		if n == 0 {
			if v.pos != v.length {
				return errors.New("splice returned EOF")
			}
			return nil
		}
		rep.Reads++
		if _, err := io.ReadFull(fdReader(p[0]), buf[:n]); err != nil {
			return fmt.Errorf("read pipe: %w", err)
		}
		if err := v.check(buf[:n]); err != nil {
			return err
		}
	}
}

type fdReader int

func (f fdReader) Read(b []byte) (int, error) {
	for {
		n, err := unix.Read(int(f), b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if n == 0 && err == nil {
			return 0, io.EOF
		}
		return max(n, 0), err
	}
}

// waitAllReader reads with blocking recv(MSG_WAITALL): each read must
// return exactly what it asked for (the stream's last read asks only for
// what remains).
func waitAllReader(spec PeerSpec, _ *net.TCPConn, fd int, v *verifier, rep *SinkReport) error {
	if err := blocking(fd); err != nil {
		return err
	}
	size := spec.Size
	if size <= 0 {
		size = 100000
	}
	buf := make([]byte, size)
	for {
		want := size
		if left := v.length - v.pos; left < int64(want) {
			want = int(left)
		}
		if want == 0 {
			want = 1 // expect EOF
		}
		n, _, err := unix.Recvfrom(fd, buf[:want], unix.MSG_WAITALL)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			return fmt.Errorf("recv returned no data for %v", sinkIdle)
		}
		if err != nil {
			return fmt.Errorf("recv: %w", err)
		}
		if n == 0 {
			if v.pos != v.length {
				return errors.New("recv returned EOF")
			}
			return nil
		}
		rep.Reads++
		if n < want {
			if rep.ShortReads == 0 {
				rep.FirstShort = fmt.Sprintf("recv(%d, MSG_WAITALL) returned %d at offset %d", want, n, v.pos)
			}
			rep.ShortReads++
		}
		if err := v.check(buf[:n]); err != nil {
			return err
		}
	}
}

// deadlineStream runs a stream exchange on each of Conns connections (at
// most Parallel at once), every one bounded by HazardDeadline.
func deadlineStream(spec PeerSpec) (Result, error) {
	return streamConns(spec, deadlineStreamOne), nil
}

func deadlineStreamOne(spec PeerSpec, i int, seed uint64, maxWrite int) (int64, int64, error) {
	c, err := Dial(spec, i)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(HazardDeadline()))
	hdr := streamHeader{Magic: streamMagic, MaxWrite: uint32(maxWrite), Seed: seed, Length: spec.Bytes}
	if err := binary.Write(c, binary.LittleEndian, hdr); err != nil {
		return 0, 0, err
	}
	return exchange(c, seed, seed^spec.ExpectSeed, spec.Bytes, maxWrite)
}

// sendReport sends a hazard stream to a sink and reads its report; with
// hold, it first writes without blocking until it is held back.
func sendReport(spec PeerSpec, hold bool) (Result, error) {
	c, err := Dial(spec, 0)
	if err != nil {
		return Result{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(HazardDeadline()))
	maxWrite := max(spec.MaxWrite, 1)
	seed := splitmix64(uint64(time.Now().UnixNano()))
	hdr := streamHeader{Magic: streamMagic, MaxWrite: uint32(maxWrite), Seed: seed, Length: spec.Bytes}
	if err := binary.Write(c, binary.LittleEndian, hdr); err != nil {
		return Result{}, fmt.Errorf("write stream header: %w", err)
	}
	res := Result{Conns: 1}
	var rep HazardReport
	fail := func(err error) (Result, error) {
		res.Errors = append(res.Errors, err.Error())
		printMarked(reportMarker, rep)
		return res, nil
	}

	var pos int64
	if hold {
		pos, rep.Held, err = writeUntilHeld(c, seed, spec.Bytes, maxWrite)
		rep.Queued = pos
		printMarked(heldMarker, rep)
		if err != nil {
			res.BytesSent = pos
			return fail(err)
		}
	}
	buf := make([]byte, maxWrite)
	for pos < spec.Bytes {
		n := int(min(int64(maxWrite), spec.Bytes-pos))
		Fill(buf[:n], seed, pos)
		w, err := c.Write(buf[:n])
		pos += int64(w)
		if err != nil {
			res.BytesSent = pos
			return fail(fmt.Errorf("write at %d: %w", pos, err))
		}
	}
	res.BytesSent = pos
	if err := c.CloseWrite(); err != nil {
		return fail(err)
	}
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		return fail(fmt.Errorf("read the sink's report: %w", err))
	}
	if err := json.Unmarshal(line, &rep.Sink); err != nil {
		return fail(fmt.Errorf("parse the sink's report %q: %w", line, err))
	}
	res.BytesVerified = rep.Sink.Verified
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
				rep.TCPInfo = TCPBytes{BytesSent: info.Bytes_sent, BytesAcked: info.Bytes_acked, BytesReceived: info.Bytes_received}
			}
		})
	}
	if rep.Sink.Error != "" {
		res.Errors = append(res.Errors, "sink: "+rep.Sink.Error)
	}
	if rep.Sink.ShortReads > 0 {
		res.Errors = append(res.Errors, fmt.Sprintf("sink: %d of %d reads were short, first: %s", rep.Sink.ShortReads, rep.Sink.Reads, rep.Sink.FirstShort))
	}
	printMarked(reportMarker, rep)
	return res, nil
}

// writeUntilHeld writes the stream from its start with non-blocking writes
// until the writer gets EAGAIN and stays unwritable for HoldWait, or all
// `length` bytes are written. It returns the bytes written.
func writeUntilHeld(c *net.TCPConn, seed uint64, length int64, maxWrite int) (int64, bool, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, false, err
	}
	var fd int
	rc.Control(func(f uintptr) { fd = int(f) })
	buf := make([]byte, maxWrite)
	var pos int64
	for pos < length {
		n := int(min(int64(maxWrite), length-pos))
		Fill(buf[:n], seed, pos)
		var (
			w    int
			werr error
		)
		// One write, no waiting: EAGAIN comes back to us.
		rc.Write(func(f uintptr) bool {
			w, werr = unix.Write(int(f), buf[:n])
			return true
		})
		switch {
		case werr == nil:
			pos += int64(w)
			continue
		case errors.Is(werr, unix.EINTR):
			continue
		case !errors.Is(werr, unix.EAGAIN):
			return pos, false, fmt.Errorf("write at %d: %w", pos, werr)
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		ready, err := unix.Poll(fds, int(HoldWait.Milliseconds()))
		if err != nil && !errors.Is(err, unix.EINTR) {
			return pos, false, fmt.Errorf("poll: %w", err)
		}
		if ready == 0 && err == nil {
			return pos, true, nil
		}
	}
	return pos, false, nil
}
