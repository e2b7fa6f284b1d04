package datapath

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Hazard is a kernel behaviour that differs for redirected data
// (docs/hazards.md).
type Hazard string

// The hazards SelfTest checks, in the order of its report.
const (
	// HazardSplice: splice(2) from a socket does not see data redirected
	// into it (Go's io.Copy between two TCP connections splices).
	HazardSplice Hazard = "splice"
	// HazardWaitAll: recv(MSG_WAITALL) returns short reads.
	HazardWaitAll Hazard = "msg_waitall"
	// HazardBackpressure: a writer whose reader stopped reading is never
	// held back; the kernel queues whatever it writes.
	HazardBackpressure Hazard = "backpressure"
	// HazardTCPInfo: TCP_INFO's byte counters (and so `ss -i`) do not
	// count redirected bytes.
	HazardTCPInfo Hazard = "tcp_info"
)

// Hazards lists every hazard SelfTest reports on.
var Hazards = []Hazard{HazardSplice, HazardWaitAll, HazardBackpressure, HazardTCPInfo}

// HazardStatus is what SelfTest found for one hazard on the running kernel.
type HazardStatus string

const (
	// HazardAbsent: the kernel behaves for redirected data as for TCP.
	HazardAbsent HazardStatus = "absent"
	// HazardPresent: the kernel has the problem. For splice and
	// MSG_WAITALL sockhop avoids it by redirecting only into proxy-owned
	// sockets (Options.AppReceivers false); TCP_INFO is an observability
	// gap that sockhop's own counters fill.
	HazardPresent HazardStatus = "present"
	// HazardGuarded: the kernel has the problem and sockhop's datapath
	// guard, exercised by the self-test, prevents it.
	HazardGuarded HazardStatus = "guarded"
)

// HazardResult is one line of a SelfTestReport.
type HazardResult struct {
	Hazard Hazard
	Status HazardStatus
	Detail string // one line: what was measured
}

// SelfTestReport is what SelfTest found on the running kernel.
type SelfTestReport struct {
	Kernel  string
	Results []HazardResult // one per hazard, in the order of Hazards
	Elapsed time.Duration
}

// Result returns the result for one hazard.
func (r SelfTestReport) Result(h Hazard) (HazardResult, bool) {
	for _, res := range r.Results {
		if res.Hazard == h {
			return res, true
		}
	}
	return HazardResult{}, false
}

// AppReceiversSafe says whether redirecting into application sockets
// (Options.AppReceivers) is safe on this kernel: neither splice nor
// MSG_WAITALL misses redirected data.
func (r SelfTestReport) AppReceiversSafe() bool {
	for _, h := range []Hazard{HazardSplice, HazardWaitAll} {
		res, ok := r.Result(h)
		if !ok || res.Status != HazardAbsent {
			return false
		}
	}
	return true
}

// String is the report as an operator reads it, one hazard a line.
func (r SelfTestReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "redirect hazards on kernel %s (self-test, %s):\n", r.Kernel, r.Elapsed.Round(time.Millisecond))
	for _, res := range r.Results {
		fmt.Fprintf(&b, "  %-13s %-8s %s\n", res.Hazard, res.Status, res.Detail)
	}
	return b.String()
}

// selfTestBudget bounds the whole self-test; it normally takes a few
// hundred milliseconds, a few seconds on an emulated CPU.
const selfTestBudget = 20 * time.Second

// SelfTest exercises each redirect hazard on the running kernel with
// sockhop's own sk_msg program, loaded unpinned, on loopback TCP pairs in a
// throwaway network namespace. It touches nothing outside: no cgroup, no
// pin, no process; everything it made is gone when it returns. It needs
// CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON; without CAP_SYS_ADMIN it uses the
// current namespace's loopback instead of a new namespace.
func SelfTest(ctx context.Context) (SelfTestReport, error) {
	ctx, cancel := context.WithTimeout(ctx, selfTestBudget)
	defer cancel()
	start := time.Now()
	rep := SelfTestReport{Kernel: kernelRelease()}

	type outcome struct {
		results []HazardResult
		err     error
	}
	done := make(chan outcome, 1)
	tid := make(chan int, 1)
	go func() {
		// The namespace belongs to this OS thread. Afterwards the thread
		// goes back to its own namespace and is unlocked; if it cannot, it
		// stays locked and the runtime ends it when the goroutine returns
		// (or, on the main thread, parks it for good).
		runtime.LockOSThread()
		tid <- unix.Gettid()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			done <- outcome{nil, fmt.Errorf("open this thread's network namespace: %w", err)}
			return
		}
		defer orig.Close()
		results, err := selfTestInNetns(ctx)
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		done <- outcome{results, err}
	}()
	thread := <-tid
	// Wait even when ctx ends: every step inside is bounded, and nothing
	// may outlive this call, not even a thread that holds the namespace.
	out := <-done
	waitThreadLeft(thread)
	rep.Results = out.results
	rep.Elapsed = time.Since(start)
	if out.err != nil {
		return rep, fmt.Errorf("redirect hazard self-test: %w", out.err)
	}
	return rep, nil
}

// waitThreadLeft waits, briefly, until the thread has left the throwaway
// namespace (back in the process's namespace, or ended by the runtime), so
// that the namespace's last reference is gone when SelfTest returns.
func waitThreadLeft(tid int) {
	own, _ := os.Readlink("/proc/self/ns/net")
	path := fmt.Sprintf("/proc/self/task/%d/ns/net", tid)
	for i := 0; i < 200; i++ {
		ns, err := os.Readlink(path)
		if errors.Is(err, os.ErrNotExist) || err == nil && ns == own {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// selfTestObjects are the parts of the collection the self-test uses: the
// sockops program is not loaded at all.
type selfTestObjects struct {
	Msg   *ebpf.Program `ebpf:"sockhop_msg"`
	Socks *ebpf.Map     `ebpf:"sockhop_socks"`
	State *ebpf.Map     `ebpf:"sockhop_state"`
	Stats *ebpf.Map     `ebpf:"sockhop_stats"`
}

// selfTestDatapath is an unpinned sockhash with the sk_msg program attached.
type selfTestDatapath struct {
	objs    selfTestObjects
	link    link.Link
	nextKey uint16
}

func loadSelfTestDatapath(backlogLimit int) (*selfTestDatapath, error) {
	// On a kernel that cannot run the datapath, say which feature it lacks
	// (a *FeatureError), not how the load of the object failed.
	if err := Probe(); err != nil {
		return nil, err
	}
	spec, err := newSpec(Options{ProxyUIDs: DefaultProxyUIDs, BacklogLimit: backlogLimit})
	if err != nil {
		return nil, err
	}
	d := &selfTestDatapath{}
	// No pinning: the maps and the program live as long as these handles.
	if err := spec.LoadAndAssign(&d.objs, nil); err != nil {
		return nil, fmt.Errorf("load sk_msg program: %w", verifierError(err))
	}
	// Attach before any socket joins: a socket takes the map's programs
	// when it is inserted.
	d.link, err = link.AttachRawLink(link.RawLinkOptions{
		Target:  d.objs.Socks.FD(),
		Program: d.objs.Msg,
		Attach:  ebpf.AttachSkMsgVerdict,
	})
	if err != nil {
		d.close()
		return nil, fmt.Errorf("attach sk_msg to the sockhash: %w", featureErr("bpf_link for sk_msg (Linux 6.10)", err))
	}
	return d, nil
}

func (d *selfTestDatapath) close() {
	if d.link != nil {
		d.link.Close() // detaches: links before objects
	}
	// Close is a no-op on the nil handles of a failed load.
	d.objs.Msg.Close()
	d.objs.Socks.Close()
	d.objs.State.Close()
	d.objs.Stats.Close()
}

// pair makes both ends of p redirect into each other, as sockops would
// after pairing: socket storage first, then the sockhash.
func (d *selfTestDatapath) pair(p *tcpPair) error {
	d.nextKey++
	ka := sockhopShKey{Conn: sockhopShConn{ClientPort: d.nextKey}, Side: 0}
	kb := sockhopShKey{Conn: sockhopShConn{ClientPort: d.nextKey}, Side: 1}
	for _, s := range []struct {
		fd        int
		own, peer sockhopShKey
	}{{p.a, ka, kb}, {p.b, kb, ka}} {
		state := sockhopShSock{Peer: s.peer, Tx: uint32(sockhopShTxSH_TX_REDIRECT)}
		if err := d.objs.State.Put(int32(s.fd), &state); err != nil {
			return fmt.Errorf("set socket storage: %w", err)
		}
	}
	if err := d.objs.Socks.Put(ka, uint64(p.a)); err != nil {
		return fmt.Errorf("insert socket into the sockhash: %w", err)
	}
	if err := d.objs.Socks.Put(kb, uint64(p.b)); err != nil {
		return fmt.Errorf("insert socket into the sockhash: %w", err)
	}
	return nil
}

func (d *selfTestDatapath) stat(s sockhopShStat) uint64 {
	var per []uint64
	if err := d.objs.Stats.Lookup(uint32(s), &per); err != nil {
		return 0
	}
	var sum uint64
	for _, v := range per {
		sum += v
	}
	return sum
}

func (d *selfTestDatapath) redirectedBytes() uint64 {
	return d.stat(sockhopShStatSH_STAT_REDIR_BYTES)
}

// tcpPair is both ends of one loopback TCP connection, as raw blocking
// descriptors whose reads and writes time out (ioTimeout).
type tcpPair struct{ a, b int }

const ioTimeout = 200 * time.Millisecond

func (p *tcpPair) close() {
	unix.Close(p.a)
	unix.Close(p.b)
}

// selfTestNet is the throwaway namespace's listener.
type selfTestNet struct {
	ln   int
	addr unix.Sockaddr
}

func (n *selfTestNet) newPair() (*tcpPair, error) {
	a, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	tv := unix.NsecToTimeval(ioTimeout.Nanoseconds())
	for _, opt := range []int{unix.SO_RCVTIMEO, unix.SO_SNDTIMEO} {
		if err := unix.SetsockoptTimeval(a, unix.SOL_SOCKET, opt, &tv); err != nil {
			unix.Close(a)
			return nil, fmt.Errorf("set socket timeout: %w", err)
		}
	}
	// Loopback: the handshake completes within connect.
	if err := unix.Connect(a, n.addr); err != nil {
		unix.Close(a)
		return nil, fmt.Errorf("connect over loopback: %w", err)
	}
	b, _, err := unix.Accept4(n.ln, unix.SOCK_CLOEXEC)
	if err != nil {
		unix.Close(a)
		return nil, fmt.Errorf("accept over loopback: %w", err)
	}
	for _, opt := range []int{unix.SO_RCVTIMEO, unix.SO_SNDTIMEO} {
		if err := unix.SetsockoptTimeval(b, unix.SOL_SOCKET, opt, &tv); err != nil {
			unix.Close(a)
			unix.Close(b)
			return nil, fmt.Errorf("set socket timeout: %w", err)
		}
	}
	return &tcpPair{a: a, b: b}, nil
}

// selfTestInNetns runs on a locked OS thread that it moves into a new
// network namespace.
func selfTestInNetns(ctx context.Context) ([]HazardResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	switch err := unix.Unshare(unix.CLONE_NEWNET); {
	case err == nil:
		if err := loopbackUp(); err != nil {
			return nil, err
		}
	case errors.Is(err, unix.EPERM):
		// Without CAP_SYS_ADMIN (the agent's pod has none) stay in the
		// current namespace: the pairs use only ephemeral loopback ports,
		// and the agent's pod namespace is its own.
	default:
		return nil, fmt.Errorf("create a network namespace: %w", err)
	}
	ln, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(ln)
	if err := unix.Bind(ln, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return nil, fmt.Errorf("bind loopback listener: %w", err)
	}
	if err := unix.Listen(ln, 16); err != nil {
		return nil, fmt.Errorf("listen on loopback: %w", err)
	}
	addr, err := unix.Getsockname(ln)
	if err != nil {
		return nil, fmt.Errorf("listener address: %w", err)
	}
	tn := &selfTestNet{ln: ln, addr: addr}

	bounded, err := loadSelfTestDatapath(DefaultBacklogLimit)
	if err != nil {
		return nil, err
	}
	defer bounded.close()

	var results []HazardResult
	for _, check := range []func(context.Context, *selfTestNet, *selfTestDatapath) (HazardResult, error){
		checkSplice, checkWaitAll, checkBackpressure, checkTCPInfo,
	} {
		if err := ctx.Err(); err != nil {
			return results, err
		}
		res, err := check(ctx, tn, bounded)
		if err != nil {
			return results, err
		}
		results = append(results, res)
	}
	return results, nil
}

// loopbackUp sets IFF_UP on lo: a new namespace's loopback starts down.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket for ioctl: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("get flags of lo: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	return nil
}

// redirectedPair is a loopback pair whose both directions are redirected.
func redirectedPair(n *selfTestNet, d *selfTestDatapath) (*tcpPair, error) {
	p, err := n.newPair()
	if err != nil {
		return nil, err
	}
	if err := d.pair(p); err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}

// writeRedirected writes the chunks with blocking writes and checks that the datapath
// redirected it: a check whose data went through TCP would test nothing.
func writeRedirected(d *selfTestDatapath, fd int, chunks ...[]byte) error {
	before := d.redirectedBytes()
	var total uint64
	for _, b := range chunks {
		for len(b) > 0 {
			n, err := unix.Write(fd, b)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return fmt.Errorf("write: %w", err)
			}
			b = b[n:]
			total += uint64(n)
		}
	}
	if got := d.redirectedBytes() - before; got != total {
		return fmt.Errorf("sk_msg redirected %d of %d bytes written", got, total)
	}
	return nil
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

func fionread(fd int) int {
	n, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
	if err != nil {
		return -1
	}
	return n
}

// checkSplice: does splice() from the receiver see redirected bytes?
func checkSplice(_ context.Context, n *selfTestNet, d *selfTestDatapath) (HazardResult, error) {
	res := HazardResult{Hazard: HazardSplice}
	p, err := redirectedPair(n, d)
	if err != nil {
		return res, err
	}
	defer p.close()
	const size = 64 << 10
	want := pattern(size)
	if err := writeRedirected(d, p.a, want); err != nil {
		return res, fmt.Errorf("splice check: %w", err)
	}
	var pipe [2]int
	if err := unix.Pipe2(pipe[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return res, fmt.Errorf("pipe: %w", err)
	}
	defer unix.Close(pipe[0])
	defer unix.Close(pipe[1])
	queued := fionread(p.b)
	// Non-blocking socket and pipe: on an affected kernel a blocking
	// splice waits for TCP data that never comes, and a signal in that
	// wait ends it with EINTR, which says nothing about the kernel.
	if err := unix.SetNonblock(p.b, true); err != nil {
		return res, fmt.Errorf("splice check: set non-blocking: %w", err)
	}
	got, err := unix.Splice(p.b, nil, pipe[1], nil, size, unix.SPLICE_F_NONBLOCK)
	for errors.Is(err, unix.EINTR) {
		got, err = unix.Splice(p.b, nil, pipe[1], nil, size, unix.SPLICE_F_NONBLOCK)
	}
	switch {
	case err == nil && got > 0:
		buf := make([]byte, got)
		if _, err := unix.Read(pipe[0], buf); err != nil || !bytes.Equal(buf, want[:got]) {
			return res, fmt.Errorf("splice check: spliced %d bytes that differ from those written", got)
		}
		res.Status = HazardAbsent
		res.Detail = fmt.Sprintf("splice() returned %d redirected bytes", got)
	case err == nil || errors.Is(err, unix.EAGAIN):
		res.Status = HazardPresent
		res.Detail = fmt.Sprintf("splice() returned %s with %d redirected bytes queued: the receiver guard keeps such readers on TCP", spliceOutcome(got, err), queued)
	default:
		return res, fmt.Errorf("splice check: splice: %w", err)
	}
	// The bytes must still be there for recv: the hazard is splice's
	// alone, not a loss.
	if res.Status == HazardPresent {
		buf := make([]byte, size)
		if got, err := unix.Read(p.b, buf); err != nil || got <= 0 {
			return res, fmt.Errorf("splice check: recv after splice returned %d, %v", got, err)
		}
	}
	return res, nil
}

func spliceOutcome(n int64, err error) string {
	if err != nil {
		return "EAGAIN"
	}
	return fmt.Sprintf("%d (EOF)", n)
}

// checkWaitAll: does a blocking recv(MSG_WAITALL) wait for the full size
// when the data arrives in several writes?
func checkWaitAll(_ context.Context, n *selfTestNet, d *selfTestDatapath) (HazardResult, error) {
	res := HazardResult{Hazard: HazardWaitAll}
	p, err := redirectedPair(n, d)
	if err != nil {
		return res, err
	}
	defer p.close()
	const writes, size = 10, 10000
	want := pattern(writes * size)
	if err := writeRedirected(d, p.a, want[:size]); err != nil {
		return res, fmt.Errorf("MSG_WAITALL check: %w", err)
	}
	// The other nine writes come while recv waits, as from a peer.
	werr := make(chan error, 1)
	go func() {
		time.Sleep(5 * time.Millisecond)
		var chunks [][]byte
		for i := 1; i < writes; i++ {
			chunks = append(chunks, want[i*size:(i+1)*size])
		}
		werr <- writeRedirected(d, p.a, chunks...)
	}()
	buf := make([]byte, len(want))
	// Blocking, bounded by SO_RCVTIMEO: a correct kernel returns once the
	// last write is in, within milliseconds.
	got, _, err := unix.Recvfrom(p.b, buf, unix.MSG_WAITALL)
	if err := <-werr; err != nil {
		return res, fmt.Errorf("MSG_WAITALL check: %w", err)
	}
	if err != nil && !errors.Is(err, unix.EAGAIN) {
		return res, fmt.Errorf("MSG_WAITALL check: recv: %w", err)
	}
	got = max(got, 0)
	if !bytes.Equal(buf[:got], want[:got]) {
		return res, fmt.Errorf("MSG_WAITALL check: recv returned %d bytes that differ from those written", got)
	}
	if got == len(buf) {
		res.Status = HazardAbsent
		res.Detail = fmt.Sprintf("recv(%d, MSG_WAITALL) returned all %d bytes of %d writes", len(buf), got, writes)
	} else {
		res.Status = HazardPresent
		res.Detail = fmt.Sprintf("recv(%d, MSG_WAITALL) returned %d while %d writes of %d arrived: the receiver guard keeps such readers on TCP", len(buf), got, writes, size)
	}
	return res, nil
}

// backpressureCap is how much a writer may queue before the self-test
// calls it unbounded: ~16× what TCP queues on loopback.
const backpressureCap = 64 << 20

// holdWait is how long a writer that got EAGAIN must stay unwritable to
// count as held back.
const holdWait = 30 * time.Millisecond

// fillUntilHeld writes with non-blocking writes until the writer is held
// back (EAGAIN and no room for holdWait) or backpressureCap bytes are
// queued; it returns the bytes written and whether it was held.
func fillUntilHeld(ctx context.Context, fd int) (int, bool, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		return 0, false, fmt.Errorf("set non-blocking: %w", err)
	}
	buf := pattern(64 << 10)
	total := 0
	for total < backpressureCap {
		n, err := unix.Write(fd, buf)
		switch {
		case err == nil:
			total += n
			continue
		case errors.Is(err, unix.EINTR):
			continue
		case !errors.Is(err, unix.EAGAIN):
			return total, false, fmt.Errorf("write: %w", err)
		}
		if ctx.Err() != nil {
			return total, false, ctx.Err()
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		ready, err := unix.Poll(fds, int(holdWait.Milliseconds()))
		if err != nil && !errors.Is(err, unix.EINTR) {
			return total, false, fmt.Errorf("poll: %w", err)
		}
		if ready == 0 {
			return total, true, nil
		}
	}
	return total, false, nil
}

// checkBackpressure: is a writer whose reader stopped held back, without
// and with sockhop's bound? Plain TCP on loopback is the yardstick.
func checkBackpressure(ctx context.Context, n *selfTestNet, bounded *selfTestDatapath) (HazardResult, error) {
	res := HazardResult{Hazard: HazardBackpressure}
	fail := func(err error) (HazardResult, error) {
		return res, fmt.Errorf("back-pressure check: %w", err)
	}

	plainPair, err := n.newPair()
	if err != nil {
		return fail(err)
	}
	plain, plainHeld, err := fillUntilHeld(ctx, plainPair.a)
	plainPair.close()
	if err != nil {
		return fail(err)
	}
	if !plainHeld {
		return fail(fmt.Errorf("plain TCP queued %d bytes without holding the writer back", plain))
	}

	unboundedDP, err := loadSelfTestDatapath(-1)
	if err != nil {
		return fail(err)
	}
	defer unboundedDP.close()
	measure := func(d *selfTestDatapath) (int, bool, error) {
		p, err := redirectedPair(n, d)
		if err != nil {
			return 0, false, err
		}
		defer p.close() // frees what was queued
		before := d.redirectedBytes()
		q, held, err := fillUntilHeld(ctx, p.a)
		if err == nil && d.redirectedBytes() == before {
			err = errors.New("nothing was redirected")
		}
		return q, held, err
	}
	unbounded, unboundedHeld, err := measure(unboundedDP)
	if err != nil {
		return fail(err)
	}
	limited, limitedHeld, err := measure(bounded)
	if err != nil {
		return fail(err)
	}

	mib := func(n int) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
	// The bound is exceeded by at most one message, after which TCP
	// queues what it would have queued alone.
	allowed := DefaultBacklogLimit + plain + 1<<20
	switch {
	case unboundedHeld:
		res.Status = HazardAbsent
		res.Detail = fmt.Sprintf("without a bound a writer was held back after %s (plain TCP %s)", mib(unbounded), mib(plain))
	case limitedHeld && limited <= allowed:
		res.Status = HazardGuarded
		res.Detail = fmt.Sprintf("unbounded, a writer queued %s without EAGAIN; with the %s bound it was held after %s (plain TCP %s)",
			mib(unbounded), mib(DefaultBacklogLimit), mib(limited), mib(plain))
	default:
		res.Status = HazardPresent
		res.Detail = fmt.Sprintf("even with the %s bound a writer queued %s (held: %v; plain TCP %s)",
			mib(DefaultBacklogLimit), mib(limited), limitedHeld, mib(plain))
	}
	return res, nil
}

// checkTCPInfo: do the sender's and receiver's TCP_INFO count redirected bytes?
func checkTCPInfo(_ context.Context, n *selfTestNet, d *selfTestDatapath) (HazardResult, error) {
	res := HazardResult{Hazard: HazardTCPInfo}
	p, err := redirectedPair(n, d)
	if err != nil {
		return res, err
	}
	defer p.close()
	const size = 256 << 10
	before := d.redirectedBytes()
	if err := writeRedirected(d, p.a, pattern(size)); err != nil {
		return res, fmt.Errorf("TCP_INFO check: %w", err)
	}
	buf := make([]byte, size)
	for read := 0; read < size; {
		got, err := unix.Read(p.b, buf)
		if err != nil || got <= 0 {
			return res, fmt.Errorf("TCP_INFO check: read after %d of %d bytes: %d, %v", read, size, got, err)
		}
		read += got
	}
	tx, err := unix.GetsockoptTCPInfo(p.a, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return res, fmt.Errorf("TCP_INFO check: %w", err)
	}
	rx, err := unix.GetsockoptTCPInfo(p.b, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return res, fmt.Errorf("TCP_INFO check: %w", err)
	}
	counted := d.redirectedBytes() - before
	if tx.Bytes_sent >= size && rx.Bytes_received >= size {
		res.Status = HazardAbsent
		res.Detail = fmt.Sprintf("TCP_INFO counts redirected bytes (bytes_sent=%d, bytes_received=%d)", tx.Bytes_sent, rx.Bytes_received)
	} else {
		res.Status = HazardPresent
		res.Detail = fmt.Sprintf("TCP_INFO and `ss -i` miss redirected bytes (sent %d: bytes_sent=%d bytes_acked=%d bytes_received=%d); sockhop's counters count them (%d)",
			size, tx.Bytes_sent, tx.Bytes_acked, rx.Bytes_received, counted)
	}
	return res, nil
}
