package testbed

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// PeerEnv carries a peer's spec to the re-executed binary.
const PeerEnv = "SOCKHOP_TESTBED_PEER"

// Roles.
const (
	RoleServer = "server" // listen and serve Mode on each connection
	RoleProxy  = "proxy"  // transparent proxy: forward to SO_ORIGINAL_DST (or Target)
	RoleClient = "client" // run Mode against Target, report a Result
)

// Modes of servers and clients.
const (
	ModeEcho     = "echo"     // server: write back what arrives
	ModeStream   = "stream"   // both: full-duplex pseudo-random stream, verified
	ModePingPong = "pingpong" // client: Iterations round trips of Size bytes to an echo server
	ModeBulk     = "bulk"     // client: send Bytes in writes of Size; server (sink) acks the total
	ModeSink     = "sink"     // server: read until EOF, reply with the byte count
	ModeConnRate = "connrate" // client: Iterations connect + 1-byte round trip + close
)

// PeerSpec describes one peer process.
type PeerSpec struct {
	Role   string `json:"role"`
	Mode   string `json:"mode,omitempty"`
	NetNS  string `json:"netns,omitempty"`  // run inside this namespace
	Cgroup string `json:"cgroup,omitempty"` // start in this cgroup
	UID    int    `json:"uid,omitempty"`    // setuid before any socket (0: stay root)
	CPUs   string `json:"cpus,omitempty"`   // taskset list, e.g. "0"

	Listen []string `json:"listen,omitempty"` // server, proxy: addresses
	// Proxy: bind this source address for upstream connections (Istio's
	// inbound proxy uses 127.0.0.6); Target overrides SO_ORIGINAL_DST.
	Source string `json:"source,omitempty"`
	Target string `json:"target,omitempty"` // client: where to connect
	// Client: bind source ports SourcePort, SourcePort+1, ... (0: ephemeral).
	SourcePort int `json:"source_port,omitempty"`

	Conns      int    `json:"conns,omitempty"`    // client: connections in all
	Parallel   int    `json:"parallel,omitempty"` // client: at once
	Bytes      int64  `json:"bytes,omitempty"`    // stream/bulk: bytes per connection and direction
	MaxWrite   int    `json:"max_write,omitempty"`
	Size       int    `json:"size,omitempty"` // pingpong/bulk: message or write size
	Iterations int    `json:"iterations,omitempty"`
	Seed       uint64 `json:"seed,omitempty"` // stream: server identity mixed into its stream
	// Client, stream: the server identity expected (exact-peer checks).
	ExpectSeed  uint64 `json:"expect_seed,omitempty"`
	DeferAccept bool   `json:"defer_accept,omitempty"` // server: TCP_DEFER_ACCEPT
	// SO_ZEROCOPY: a server's listener (its accepted sockets inherit
	// it), a client's sockets before they connect.
	ZeroCopy bool `json:"zero_copy,omitempty"`
	// Uring: the strand sink's splice goes through io_uring
	// (IORING_OP_SPLICE) instead of the splice syscall.
	Uring bool `json:"uring,omitempty"`
	// UringFixed: ...with the socket registered with the ring (a fixed
	// file, SPLICE_F_FD_IN_FIXED).
	UringFixed bool `json:"uring_fixed,omitempty"`
	// Client, stream: pause this long between connecting and writing.
	ConnectPause time.Duration `json:"connect_pause,omitempty"`
}

// Result is what a client peer reports.
type Result struct {
	Conns         int      `json:"conns"`
	BytesSent     int64    `json:"bytes_sent"`
	BytesVerified int64    `json:"bytes_verified"`
	Errors        []string `json:"errors,omitempty"`
	// LatenciesNs: pingpong round trips, connrate connection times.
	LatenciesNs []int64       `json:"latencies_ns,omitempty"`
	Elapsed     time.Duration `json:"elapsed"`
}

// Err is the first error the peer reported.
func (r Result) Err() error {
	if len(r.Errors) == 0 {
		return nil
	}
	return fmt.Errorf("%d errors, first: %s", len(r.Errors), r.Errors[0])
}

type event struct {
	Event  string  `json:"event"`
	Result *Result `json:"result,omitempty"`
	Error  string  `json:"error,omitempty"`
}

// Peer is a running peer process.
type Peer struct {
	Spec   PeerSpec
	cmd    *exec.Cmd
	events chan event
	stderr *lockedBuffer
	done   chan struct{}
	once   sync.Once
}

// errExited and errStillWaiting: why waitStderr gave up.
var (
	errExited       = errors.New("the peer exited")
	errStillWaiting = errors.New("still waiting")
)

// waitStderr polls a running peer's stderr until found says it holds what
// the caller waits for; errExited when the peer ends first, errStillWaiting
// after timeout.
func waitStderr(p *Peer, timeout time.Duration, found func(stderr string) bool) error {
	end := time.Now().Add(timeout)
	for !found(p.Stderr()) {
		select {
		case <-p.done:
			if found(p.Stderr()) {
				return nil
			}
			return errExited
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(end) {
			return errStillWaiting
		}
	}
	return nil
}

// PID of the peer process.
func (p *Peer) PID() int { return p.cmd.Process.Pid }

// Start runs a peer: the current binary re-executed (its main or TestMain
// must call RunPeerIfRequested), inside spec.NetNS and spec.Cgroup. It
// returns once a server or proxy listens.
func (b *Bed) Start(spec PeerSpec) (*Peer, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	js, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	var args []string
	if spec.NetNS != "" {
		args = append(args, "ip", "netns", "exec", spec.NetNS)
	}
	if spec.CPUs != "" {
		args = append(args, "taskset", "-c", spec.CPUs)
	}
	args = append(args, exe)
	cmd := exec.Command(args[0], args[1:]...)
	// No asynchronous preemption in peers: its SIGURG interrupts a
	// blocking recv(MSG_WAITALL), which then returns short on any socket,
	// accelerated or not (a signal is one of the documented reasons).
	cmd.Env = append(os.Environ(), PeerEnv+"="+string(js), "GODEBUG=asyncpreemptoff=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if spec.Cgroup != "" {
		fd, err := cgroupFD(spec.Cgroup)
		if err != nil {
			return nil, err
		}
		defer syscall.Close(fd)
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = fd
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p := &Peer{Spec: spec, cmd: cmd, events: make(chan event, 4), stderr: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s peer: %w", spec.Role, err)
	}
	b.mu.Lock()
	b.peers = append(b.peers, p)
	b.mu.Unlock()
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 64<<20)
		for sc.Scan() {
			var ev event
			if json.Unmarshal(sc.Bytes(), &ev) == nil {
				p.events <- ev
			}
		}
		cmd.Wait()
		close(p.events)
		close(p.done)
	}()
	if spec.Role == RoleClient {
		return p, nil
	}
	select {
	case ev, ok := <-p.events:
		if ok && ev.Event == "ready" {
			return p, nil
		}
		p.Stop()
		return nil, fmt.Errorf("%s peer did not start: %s %s", spec.Role, ev.Error, p.stderr.String())
	case <-time.After(Patience(10 * time.Second)):
		p.Stop()
		return nil, fmt.Errorf("%s peer did not get ready in %v: %s", spec.Role, Patience(10*time.Second), p.stderr.String())
	}
}

// Run starts a client peer and waits for its result.
func (b *Bed) Run(spec PeerSpec) (Result, error) {
	spec.Role = RoleClient
	p, err := b.Start(spec)
	if err != nil {
		return Result{}, err
	}
	return p.Wait()
}

// Wait returns a client's result once it exits.
func (p *Peer) Wait() (Result, error) {
	for ev := range p.events {
		switch ev.Event {
		case "result":
			<-p.done
			return *ev.Result, nil
		case "error":
			<-p.done
			return Result{}, fmt.Errorf("%s peer: %s", p.Spec.Role, ev.Error)
		}
	}
	return Result{}, fmt.Errorf("%s peer exited without a result: %v: %s", p.Spec.Role, p.cmd.ProcessState, p.stderr.String())
}

// Stop kills the peer (by its PID) and waits for it.
func (p *Peer) Stop() {
	p.once.Do(func() {
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	})
}

// Stderr is what the peer wrote to its standard error.
func (p *Peer) Stderr() string { return p.stderr.String() }

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() < 1<<20 {
		l.b.Write(p)
	}
	return len(p), nil
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// RunPeerIfRequested turns the process into a peer when it was started by
// Bed.Start, and exits; otherwise it returns at once. Call it first thing
// in main or TestMain.
func RunPeerIfRequested() {
	js, ok := os.LookupEnv(PeerEnv)
	if !ok {
		return
	}
	var spec PeerSpec
	out := json.NewEncoder(os.Stdout)
	var mu sync.Mutex
	emit := func(ev event) {
		mu.Lock()
		defer mu.Unlock()
		out.Encode(ev)
	}
	if err := json.Unmarshal([]byte(js), &spec); err != nil {
		emit(event{Event: "error", Error: err.Error()})
		os.Exit(2)
	}
	if err := runPeer(spec, emit); err != nil {
		emit(event{Event: "error", Error: err.Error()})
		os.Exit(1)
	}
	os.Exit(0)
}

func runPeer(spec PeerSpec, emit func(event)) error {
	if spec.UID != 0 {
		// Sockets carry the uid of the process that created them.
		if err := syscall.Setgid(spec.UID); err != nil {
			return fmt.Errorf("setgid: %w", err)
		}
		if err := syscall.Setuid(spec.UID); err != nil {
			return fmt.Errorf("setuid: %w", err)
		}
	}
	switch spec.Role {
	case RoleServer, RoleProxy:
		return serve(spec, func() { emit(event{Event: "ready"}) })
	case RoleClient:
		res, err := runClient(spec)
		if err != nil {
			return err
		}
		emit(event{Event: "result", Result: &res})
		return nil
	}
	return fmt.Errorf("unknown role %q", spec.Role)
}

func errorsToStrings(errs []error) []string {
	var s []string
	for _, e := range errs {
		if e != nil && !errors.Is(e, io.EOF) {
			s = append(s, e.Error())
		}
	}
	return s
}

func itoa(i int) string { return strconv.Itoa(i) }
