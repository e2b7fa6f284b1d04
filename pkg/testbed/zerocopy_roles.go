package testbed

// A peer mode for the MSG_ZEROCOPY hazard: a sender that enables
// SO_ZEROCOPY and waits for the kernel's completion of every zerocopy send,
// as a program that reuses its buffers only once they complete does.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// ModeZeroCopySend (client) writes to a ModeSink server. With Size, it
// first writes Size bytes with write(2) in four writes StrandSettle apart
// (so that its receiver reads them and the direction switches to
// redirect), then enables SO_ZEROCOPY; without, it enables it before it
// connects. Then it makes Iterations sends of MaxWrite bytes, with
// MSG_ZEROCOPY if SO_ZEROCOPY was accepted (plain sends if it was refused,
// as a program that checks it falls back), and waits (up to
// HazardDeadline) for their completions on the error queue, or for the
// connection to fail; then for the sink's count of what it received. It
// reports what it saw (ZeroCopyReport).
const ModeZeroCopySend = "zerocopy-send"

// ZeroCopyReport is what a ModeZeroCopySend peer saw.
type ZeroCopyReport struct {
	Written  int64 `json:"written"`  // bytes accepted, plain and zerocopy
	Received int64 `json:"received"` // bytes the sink counted (-1: no count)
	// SockoptErrno: setsockopt(SO_ZEROCOPY) failed with it (0: accepted).
	SockoptErrno int `json:"sockopt_errno"`
	Sends        int `json:"sends"`       // MSG_ZEROCOPY sends accepted
	Completions  int `json:"completions"` // of those, completed (error queue)
	Copied       int `json:"copied"`      // ...with the kernel's "copied" code
	// SendErrno: the first failed send; SockErrno: the socket's error
	// (SO_ERROR) when it stopped waiting, if any.
	SendErrno int           `json:"send_errno"`
	SockErrno int           `json:"sock_errno"`
	Waited    time.Duration `json:"waited"` // from the last send to the end of the wait
	Error     string        `json:"error,omitempty"`
}

const zeroCopyMarker = "sockhop-zerocopy "

func init() {
	ClientModes[ModeZeroCopySend] = zeroCopySend
}

func zeroCopySend(spec PeerSpec) (Result, error) {
	var rep ZeroCopyReport
	res := Result{Conns: 1}
	defer func() { printJSON(zeroCopyMarker, rep) }()
	fail := failWith(&res, &rep.Error)
	spec.ZeroCopy = spec.Size <= 0
	c, err := Dial(spec, 0)
	if err != nil {
		return res, err
	}
	defer c.Close()
	fd, err := blockingFD(c)
	if err != nil {
		return fail("descriptor: %v", err)
	}
	if spec.Size > 0 {
		buf := make([]byte, (spec.Size+3)/4)
		for i := 0; i < 4; i++ {
			n, err := unix.Write(fd, buf)
			if err != nil {
				return fail("write: %v", err)
			}
			rep.Written += int64(n)
			time.Sleep(StrandSettle())
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ZEROCOPY, 1); err != nil {
			rep.SockoptErrno = errnoOf(err)
		}
	}
	flags := unix.MSG_ZEROCOPY
	if rep.SockoptErrno != 0 {
		flags = 0
	}
	// One buffer per send, never reused: the wait is for the kernel's
	// word that it is done with them.
	for i := 0; i < spec.Iterations; i++ {
		buf := make([]byte, max(spec.MaxWrite, 1))
		n, err := unix.SendmsgN(fd, buf, nil, nil, flags)
		if err != nil {
			rep.SendErrno = errnoOf(err)
			break
		}
		if flags != 0 {
			rep.Sends++
		}
		rep.Written += int64(n)
	}
	res.BytesSent = rep.Written
	start := time.Now()
	// Until every send completed, and a moment more for any extra ids.
	var done time.Time
	for end := start.Add(HazardDeadline()); time.Now().Before(end); {
		if rep.Completions >= rep.Sends {
			if done.IsZero() {
				done = time.Now()
			} else if time.Since(done) > 50*time.Millisecond {
				break
			}
		}
		fds := []unix.PollFd{{Fd: int32(fd)}} // POLLERR is always reported
		if _, err := unix.Poll(fds, 10); err != nil && !errors.Is(err, unix.EINTR) {
			return fail("poll: %v", err)
		}
		if fds[0].Revents&unix.POLLERR == 0 {
			if fds[0].Revents&unix.POLLHUP != 0 {
				break
			}
			continue
		}
		if got, copied, err := zeroCopyCompletions(fd); err == nil {
			rep.Completions += got
			rep.Copied += copied
			continue
		} else if !errors.Is(err, unix.EAGAIN) {
			return fail("error queue: %v", err)
		}
		// POLLERR with nothing queued: the socket itself failed.
		if e, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err == nil && e != 0 {
			rep.SockErrno = e
			break
		}
	}
	if !done.IsZero() {
		rep.Waited = done.Sub(start)
	} else {
		rep.Waited = time.Since(start)
	}
	rep.Received = -1
	if rep.SockErrno == 0 {
		var n int64
		c.SetDeadline(time.Now().Add(HazardDeadline()))
		if c.CloseWrite() == nil && binary.Read(c, binary.LittleEndian, &n) == nil {
			rep.Received = n
		}
	}
	return res, nil
}

// failWith is how a reporting client fails: the error goes into its report
// (field) and its result, and the client ends normally, so that the report
// is printed.
func failWith(res *Result, field *string) func(format string, args ...any) (Result, error) {
	return func(format string, args ...any) (Result, error) {
		*field = fmt.Sprintf(format, args...)
		res.Errors = append(res.Errors, *field)
		return *res, nil
	}
}

// zeroCopyCompletions reads one message of the error queue: how many
// zerocopy sends it completes, and how many of those the kernel copied.
func zeroCopyCompletions(fd int) (int, int, error) {
	oob := make([]byte, 256)
	_, oobn, _, _, err := unix.Recvmsg(fd, nil, oob, unix.MSG_ERRQUEUE)
	if err != nil {
		return 0, 0, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return 0, 0, err
	}
	var got, copied int
	for _, m := range msgs {
		ipv4 := m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_RECVERR
		ipv6 := m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_RECVERR
		if !(ipv4 || ipv6) || len(m.Data) < 16 {
			continue
		}
		// struct sock_extended_err: errno, origin, type, code, pad, info, data.
		if m.Data[4] != unix.SO_EE_ORIGIN_ZEROCOPY {
			continue
		}
		lo, hi := binary.NativeEndian.Uint32(m.Data[8:]), binary.NativeEndian.Uint32(m.Data[12:])
		got += int(hi - lo + 1)
		if m.Data[6]&unix.SO_EE_CODE_ZEROCOPY_COPIED != 0 {
			copied += int(hi - lo + 1)
		}
	}
	return got, copied, nil
}

// ZeroCopySend is the report a finished ModeZeroCopySend peer printed.
func ZeroCopySend(p *Peer) (ZeroCopyReport, error) {
	var rep ZeroCopyReport
	if !markedJSON(p.Stderr(), zeroCopyMarker, &rep) {
		return rep, fmt.Errorf("zerocopy sender printed no report: %s", p.Stderr())
	}
	return rep, nil
}
