// Package datapath owns sockhop's BPF programs and maps: it loads them (or
// re-opens the pinned ones), attaches the sockops program to cgroups through
// pinned bpf_links, and reads the counters. It is the only package that
// imports github.com/cilium/ebpf.
package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// DefaultPinDir is where the agent and the CLI keep sockhop's pins.
const DefaultPinDir = "/sys/fs/bpf/sockhop"

// DefaultProxyUIDs are the uids sidecar proxies run as: Istio's Envoy (1337),
// Linkerd's proxy (2102) and Kuma's Envoy (5678).
var DefaultProxyUIDs = []uint32{1337, 2102, 5678}

// DefaultMaxConnections is how many concurrent paired connections a node's
// maps hold by default: each is two sockets in the sockhash and in
// sockhop_rx, and one pending entry while it is being paired.
const DefaultMaxConnections = 131072

// DefaultBacklogLimit is how many redirected bytes a receiver may leave
// unread before its sender's direction goes back to TCP, whose window then
// holds the sender back (docs/hazards.md).
const DefaultBacklogLimit = 3 << 20

const (
	mapsDir   = "maps"
	linksDir  = "links"
	msgLinkID = "sk_msg"
	// retiredDir holds datapath generations set aside by a map layout
	// change, until their connections are gone.
	retiredDir = "retired"
	// The receive-side tracepoints: node-wide, attached once.
	recvLinkID     = "tp-sock_recv_length"
	sysenterLinkID = "tp-sys_enter"
	closeLinkID    = "tp-inet_sock_set_state"
	readyLinkID    = "tp-sk_data_ready"
	uringLinkID    = "tp-io_uring_submit_req"
	noUID          = 0xffffffff
)

// Options configure Load.
type Options struct {
	// PinDir is the bpffs directory holding every pin; "" means DefaultPinDir.
	PinDir string
	// ProxyUIDs own the sockets that are always safe to redirect into
	// (at most 4; nil means DefaultProxyUIDs).
	ProxyUIDs []uint32
	// AppReceivers allows redirecting into sockets of any owner (the
	// agent's default); false redirects only into sockets of ProxyUIDs.
	// Either way a direction switches to redirect only once its receiver
	// has been seen reading with recvmsg, and never into a receiver that
	// splices or waits for all (docs/hazards.md).
	AppReceivers bool
	// BacklogLimit bounds the unread redirected bytes per receiver; 0 means
	// DefaultBacklogLimit, a negative value means unbounded.
	BacklogLimit int
	// MaxConnections sizes the maps: how many connections can be paired at
	// once on the node (0: DefaultMaxConnections). Past it new connections
	// stay on TCP (counted as failed sockhash operations). Changing it on a
	// node replaces the maps (see Load).
	MaxConnections int

	// NoSyscallGuard leaves out the syscall guard, which marks a receiver
	// unsafe before a splice, sendfile, zerocopy or MSG_WAITALL read
	// (docs/hazards.md). Where the kernel refuses fentry programs it is
	// syscall tracepoints, which put every syscall on the node on the
	// kernel's slower traced entry path (tens of ns each).
	// Without it a direction still switches only into a receiver seen
	// reading with recvmsg three times (so a reader that splices or waits
	// for all from its first reads, or after a header, stays on TCP), but
	// splicing is no longer detected: nothing is learnt, and a receiver
	// that starts splicing after a switch is stranded.
	NoSyscallGuard bool

	// SyscallGuardBTF attaches the syscall guard as one tp_btf program on
	// sys_enter even where the kernel functions or the per-syscall
	// tracepoints can be used: every syscall on the node then runs it
	// (their cost: docs/benchmarks.md).
	SyscallGuardBTF bool

	// SyscallGuardTracepoints attaches the syscall guard as the
	// per-syscall tracepoints even where the kernel runs fentry programs,
	// whose form costs nothing to syscalls that do not read a socket
	// (fguard.go). For comparisons and tests.
	SyscallGuardTracepoints bool

	// Unguarded redirects every direction from its first byte, whatever
	// its receiver does: the mechanism alone, for benchmarks and for the
	// hazard tests that show what the guard prevents. Unsafe for
	// receivers that splice or read with MSG_WAITALL (docs/hazards.md);
	// the agent never sets it.
	Unguarded bool
}

func (o Options) withDefaults() (Options, error) {
	if o.PinDir == "" {
		o.PinDir = DefaultPinDir
	}
	if o.ProxyUIDs == nil {
		o.ProxyUIDs = DefaultProxyUIDs
	}
	if len(o.ProxyUIDs) > 4 {
		return o, fmt.Errorf("at most 4 proxy uids are supported, got %d", len(o.ProxyUIDs))
	}
	if o.BacklogLimit == 0 {
		o.BacklogLimit = DefaultBacklogLimit
	}
	if o.BacklogLimit > 1<<31 {
		return o, fmt.Errorf("backlog limit %d is larger than 2 GiB", o.BacklogLimit)
	}
	if o.MaxConnections == 0 {
		o.MaxConnections = DefaultMaxConnections
	}
	if o.MaxConnections < 1 || o.MaxConnections > 1<<22 {
		return o, fmt.Errorf("max connections %d: want 1 to %d", o.MaxConnections, 1<<22)
	}
	return o, nil
}

// Datapath is a loaded sockhop datapath. Its maps and links are pinned and
// outlive the process: Close releases this process's handles only.
type Datapath struct {
	opts Options
	objs sockhopObjects
	// abort is the abort iterator, loaded by the first AbortStranded.
	abortMu sync.Mutex
	abort   *aborter
	// guardMu orders Attach's attaching of the node-wide tracepoints
	// with ReleaseIdleGuards' taking them away; guardsLinked: this
	// datapath linked them to its programs (ensureGuards).
	guardMu      sync.Mutex
	guardsLinked bool
	// The ids of the syscall guard's tracepoints (syscalls.go), read once.
	sysOnce sync.Once
	sysIDs  map[string]uint64
	sysErr  error
	// Whether the kernel has the io_uring submission tracepoint, looked up
	// once.
	uringOnce sync.Once
	uring     bool
	// fn: the syscall guard on kernel functions (fguard.go), nil where it
	// is not used; fnErr: why not, where it was tried.
	fn    *fguardPrograms
	fnErr error
}

// Load checks that the kernel has every feature sockhop needs, loads the
// programs and re-uses the pinned maps (creating them on first use), then
// points every pinned link at the new programs: a restarted or upgraded
// agent carries on with the live sockets of the one before it.
func Load(opts Options) (*Datapath, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := Probe(); err != nil {
		return nil, err
	}
	if err := ensurePinDir(opts.PinDir); err != nil {
		return nil, err
	}

	spec, err := newSpec(opts)
	if err != nil {
		return nil, err
	}
	for name, m := range spec.Maps {
		if strings.HasPrefix(name, "sockhop_") {
			m.Pinning = ebpf.PinByName
		}
	}
	d := &Datapath{opts: opts}
	load := func() error {
		return spec.LoadAndAssign(&d.objs, &ebpf.CollectionOptions{
			Maps: ebpf.MapOptions{PinPath: filepath.Join(opts.PinDir, mapsDir)},
		})
	}
	err = load()
	var carried []carriedMap
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		// Another sockhop version (or capacity) left maps of another
		// layout: start new ones. Established connections keep the
		// program they were paired under, and through it the old maps.
		// What the agent configured (pods, pod IPs) is carried over.
		var rerr error
		if carried, rerr = retireMaps(opts.PinDir, spec); rerr != nil {
			return nil, fmt.Errorf("replace the incompatible maps in %s: %w", opts.PinDir, rerr)
		}
		err = load()
	}
	if err != nil {
		return nil, fmt.Errorf("load sockhop BPF objects: %w", verifierError(err))
	}
	for _, c := range carried {
		if err := c.restore(&d.objs); err != nil {
			d.Close()
			return nil, err
		}
	}
	if err := d.ensurePodStats(); err != nil {
		d.Close()
		return nil, err
	}
	if !opts.NoSyscallGuard && !opts.SyscallGuardBTF && !opts.SyscallGuardTracepoints {
		// Where trampolines are refused: the syscall tracepoints.
		d.fn, d.fnErr = loadFnGuard(d.objs.maps())
	}
	if _, err := SweepRetired(opts.PinDir); err != nil {
		d.Close()
		return nil, err
	}
	if err := d.relink(); err != nil {
		d.Close()
		return nil, err
	}
	if err := d.record(); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// newSpec parses the embedded objects and sets the runtime constants.
func newSpec(opts Options) (*ebpf.CollectionSpec, error) {
	spec, err := loadSockhop()
	if err != nil {
		return nil, fmt.Errorf("parse BPF objects: %w", err)
	}
	// Capacity: two sockets per connection, one pending entry while one
	// is being paired.
	conns := uint32(opts.MaxConnections)
	if conns == 0 {
		conns = DefaultMaxConnections
	}
	for name, n := range map[string]uint32{
		sockhopMapSockhopSocks: 2 * conns, sockhopMapSockhopRx: 2 * conns, sockhopMapSockhopPending: conns,
	} {
		spec.Maps[name].MaxEntries = n
	}
	uids := [4]uint32{noUID, noUID, noUID, noUID}
	copy(uids[:], opts.ProxyUIDs)
	limit := uint32(0)
	if opts.BacklogLimit > 0 {
		limit = uint32(opts.BacklogLimit)
	}
	appRx := uint8(0)
	if opts.AppReceivers {
		appRx = 1
	}
	guard := uint8(1)
	if opts.Unguarded {
		guard = 0
	}
	for name, v := range map[string]any{
		sockhopVarShGuard:        guard,
		sockhopVarShProxyUids:    uids,
		sockhopVarShBacklogLimit: limit,
		sockhopVarShAppReceivers: appRx,
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}
	return spec, nil
}

// relink makes the pinned links run this process's programs, creating the
// sk_msg link on first use. A link update is atomic: no send or handshake
// runs without a program.
func (d *Datapath) relink() error {
	dir := filepath.Join(d.opts.PinDir, linksDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	msgPin := filepath.Join(dir, msgLinkID)
	l, err := link.LoadPinnedLink(msgPin, nil)
	switch {
	case err == nil:
		err = l.Update(d.objs.SockhopMsg)
		l.Close()
		if err != nil {
			return fmt.Errorf("update sk_msg link: %w", err)
		}
	case errors.Is(err, os.ErrNotExist):
		l, err := link.AttachRawLink(link.RawLinkOptions{
			Target:  d.objs.SockhopSocks.FD(),
			Program: d.objs.SockhopMsg,
			Attach:  ebpf.AttachSkMsgVerdict,
		})
		if err != nil {
			return fmt.Errorf("attach sk_msg to the sockhash: %w", featureErr("bpf_link for sk_msg (Linux 6.10)", err))
		}
		defer l.Close()
		if err := l.Pin(msgPin); err != nil {
			return fmt.Errorf("pin sk_msg link: %w", err)
		}
	default:
		return fmt.Errorf("open sk_msg link: %w", err)
	}

	// The node-wide tracepoints, where there is something to guard
	// (guards.go); before the cgroup links run the new sockops program.
	busy, err := d.guarding()
	if err != nil {
		return err
	}
	if busy {
		err = d.ensureGuards()
	} else {
		err = d.removeGuards()
	}
	if err != nil {
		return err
	}

	return d.eachCgroupLink(func(id uint64, l link.Link) error {
		err := l.Update(d.objs.SockhopSockops)
		if err == nil {
			// A pod attached by a sockhop from before the setsockopt
			// program gets its link now.
			return d.relinkSockopt(id)
		}
		// The kernel severs the link of a removed cgroup (a pod deleted
		// while no agent ran): nothing to update, only a pin to drop.
		if !d.cgroupLive(id) {
			return d.DetachID(id)
		}
		return fmt.Errorf("update sockops link of cgroup %d: %w", id, err)
	})
}

// relinkTracing makes the pinned tracepoint link run tp's program (tp_btf,
// raw_tp or a classic tracepoint's). Tracing links
// cannot be updated in place: the new one is attached and pinned before the
// old one goes, so that no read goes unobserved in between (both marking a
// receiver is harmless).
func (d *Datapath) relinkTracing(pin string, tp nodeTracepoint) error {
	prog := tp.prog
	old, err := link.LoadPinnedLink(pin, nil)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("open %s: %w", pin, err)
	}
	if old != nil {
		defer old.Close()
		if info, err := old.Info(); err == nil {
			if pi, err := prog.Info(); err == nil {
				if id, ok := pi.ID(); ok && info.Program == id {
					return nil // already this program
				}
			}
		}
	}
	var l link.Link
	switch {
	case tp.raw != "":
		l, err = link.AttachRawTracepoint(link.RawTracepointOptions{Name: tp.raw, Program: prog})
	case tp.event != 0:
		l, err = attachEvent(tp.event, prog)
	case strings.HasPrefix(tp.pin, fnLinkPrefix):
		l, err = attachFentry(prog)
	default:
		l, err = link.AttachTracing(link.TracingOptions{Program: prog})
	}
	if err != nil {
		return featureErr("tracepoint programs", err)
	}
	defer l.Close()
	tmp := pin + "-new" // bpffs refuses dots in names
	os.Remove(tmp)
	if err := l.Pin(tmp); err != nil {
		return fmt.Errorf("pin %s: %w", tmp, err)
	}
	if old != nil {
		if err := old.Unpin(); err != nil {
			return fmt.Errorf("unpin %s: %w", pin, err)
		}
	}
	if err := os.Rename(tmp, pin); err != nil {
		return fmt.Errorf("pin %s: %w", pin, err)
	}
	return nil
}

// carriedMap is the content of a configuration map of a retired datapath.
type carriedMap struct {
	name       string
	keys, vals [][]byte
}

func (c carriedMap) restore(objs *sockhopObjects) error {
	m := map[string]*ebpf.Map{sockhopMapSockhopPods: objs.SockhopPods, sockhopMapSockhopPodips: objs.SockhopPodips,
		sockhopMapSockhopPodst: objs.SockhopPodst}[c.name]
	for i := range c.keys {
		if err := m.Put(c.keys[i], c.vals[i]); err != nil {
			return fmt.Errorf("carry %s over to the new maps: %w", c.name, err)
		}
	}
	return nil
}

// retireMaps sets aside the maps and the sk_msg link of an incompatible
// datapath, keeping the content of its configuration maps (attached pods,
// pod IPs) where their layout is still the new one's. Established
// connections carry on as before: their psocks hold the sk_msg program they
// were paired under, which holds its maps; and the old receive-side
// tracepoints stay attached, moved with the old maps to retired/<gen>/, so
// that their receiver guard keeps watching those connections' receivers
// (SweepRetired removes a generation once its sockhash is empty). New
// connections use the new maps.
func retireMaps(pinDir string, spec *ebpf.CollectionSpec) ([]carriedMap, error) {
	var carried []carriedMap
	for _, name := range []string{sockhopMapSockhopPods, sockhopMapSockhopPodips, sockhopMapSockhopPodst} {
		old, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, mapsDir, name), nil)
		if err != nil {
			continue // absent, or unreadable: start empty
		}
		want := spec.Maps[name]
		if old.KeySize() == want.KeySize && old.ValueSize() == want.ValueSize {
			c := carriedMap{name: name}
			k, v := make([]byte, old.KeySize()), make([]byte, old.ValueSize())
			iter := old.Iterate()
			for iter.Next(&k, &v) {
				c.keys = append(c.keys, append([]byte(nil), k...))
				c.vals = append(c.vals, append([]byte(nil), v...))
			}
			if iter.Err() == nil {
				carried = append(carried, c)
			}
		}
		old.Close()
	}
	gen := filepath.Join(pinDir, retiredDir, strconv.FormatInt(time.Now().UnixNano(), 10))
	if err := os.MkdirAll(filepath.Join(gen, linksDir), 0o700); err != nil {
		return nil, err
	}
	if err := os.Rename(filepath.Join(pinDir, mapsDir), filepath.Join(gen, mapsDir)); err != nil {
		return nil, fmt.Errorf("set aside the old maps: %w", err)
	}
	for _, id := range guardLinkIDs() {
		err := os.Rename(filepath.Join(pinDir, linksDir, id), filepath.Join(gen, linksDir, id))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("set aside the old tracepoint link %s: %w", id, err)
		}
	}
	// Unpinning the old sk_msg link detaches the program from the old
	// sockhash; sockets in it keep their own reference.
	msgPin := filepath.Join(pinDir, linksDir, msgLinkID)
	if err := os.Remove(msgPin); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	return carried, os.MkdirAll(filepath.Join(pinDir, mapsDir), 0o700)
}

// SweepRetired removes the datapath generations set aside by a map layout
// change (see Load) whose sockhash has emptied: their last connection
// closed, so their tracepoints and maps can go. It returns how many remain.
func SweepRetired(pinDir string) (int, error) {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	dir := filepath.Join(pinDir, retiredDir)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	left := 0
	var errs []error
	for _, e := range entries {
		gen := filepath.Join(dir, e.Name())
		socks, err := ebpf.LoadPinnedMap(filepath.Join(gen, mapsDir, sockhopMapSockhopSocks), nil)
		if err == nil {
			n, cerr := countEntries(socks)
			socks.Close()
			if cerr != nil || n > 0 {
				left++
				continue
			}
		}
		// Unpinning the links detaches the old tracepoints; the maps go
		// with their last reference.
		if err := os.RemoveAll(gen); err != nil {
			errs = append(errs, fmt.Errorf("remove retired datapath %s: %w", gen, err))
		}
	}
	return left, errors.Join(errs...)
}

// Close releases this process's handles. Pins, links and the sockets in
// the sockhash stay: connections keep being accelerated.
func (d *Datapath) Close() error {
	d.abortMu.Lock()
	err := d.abort.Close()
	d.abort = nil
	d.abortMu.Unlock()
	var fnErr error
	if d.fn != nil {
		fnErr = d.fn.Close()
		d.fn = nil
	}
	return errors.Join(err, fnErr, d.objs.Close())
}

// Uninstall removes every link and pin under pinDir. New connections are no
// longer paired; sockets in the sockhash leave it when the map is freed and
// carry on through TCP, in order (a direction leaves the redirect path once).
func Uninstall(pinDir string) error {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	if _, err := os.Stat(pinDir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var errs []error
	linkDir := filepath.Join(pinDir, linksDir)
	entries, err := os.ReadDir(linkDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, e := range entries {
		path := filepath.Join(linkDir, e.Name())
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("open link %s: %w", path, err))
			continue
		}
		// Unpinning drops the last reference: the link detaches.
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin %s: %w", path, err))
		}
		l.Close()
	}
	if err := os.RemoveAll(pinDir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", pinDir, err))
	}
	return errors.Join(errs...)
}

// causeOnly wraps an error without printing it (verifierError prints it
// with the log).
type causeOnly struct{ err error }

func (c causeOnly) Error() string { return "" }
func (c causeOnly) Unwrap() error { return c.err }

func verifierError(err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		// The log in full, and the errno still there to test.
		return fmt.Errorf("%+v%w", ve, causeOnly{ve.Cause})
	}
	return err
}
