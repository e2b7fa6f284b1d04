package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
)

// The node-wide tracepoints (the receive side, the close, and the syscall
// guard) watch every socket and, for sys_enter, every syscall on the node:
// their cost falls on processes sockhop never pairs (BenchmarkNodeSocketCost).
// They have work only while the node has something to guard: a pod attached
// (its sockets may be paired at any moment) or a paired socket still open
// (its pod may have been detached). So they are attached before the first
// pod is, and taken away by ReleaseIdleGuards once neither is left: a node
// without accelerated pods pays nothing for sockhop.

type nodeTracepoint struct {
	pin  string
	prog *ebpf.Program
	what string
	// raw: the raw tracepoint's name (a raw_tp program); event: the id
	// of a classic tracepoint (a tracepoint program); neither for tp_btf.
	raw   string
	event uint64
}

func (d *Datapath) nodeTracepoints() []nodeTracepoint {
	tps := []nodeTracepoint{
		{pin: recvLinkID, prog: d.objs.SockhopRecv, what: "the receive tracepoint"},
		{pin: closeLinkID, prog: d.objs.SockhopClose, what: "the socket state tracepoint"},
		{pin: readyLinkID, prog: d.objs.SockhopReady, what: "the data ready tracepoint"},
	}
	if fn := d.fnTracepoints(); fn != nil {
		// A splice submitted through io_uring reaches tcp_splice_read
		// too: no io_uring tracepoint.
		return append(tps, fn...)
	}
	if !d.opts.NoSyscallGuard {
		if ids, err := d.syscallIDs(); err == nil && !d.opts.SyscallGuardBTF {
			for _, ev := range d.syscallEvents() {
				tps = append(tps, nodeTracepoint{pin: syscallLinkPrefix + ev.name, prog: ev.prog,
					what: "the tracepoint syscalls/" + ev.name, event: ids[ev.name]})
			}
		} else {
			tps = append(tps, nodeTracepoint{pin: sysenterLinkID, prog: d.objs.SockhopSysenter, what: "the syscall tracepoint"})
		}
		// A splice submitted through io_uring; a kernel built without
		// io_uring has neither the tracepoint nor the hazard.
		if d.haveUringTracepoint() {
			tps = append(tps, nodeTracepoint{pin: uringLinkID, prog: d.objs.SockhopUring,
				what: "the io_uring submission tracepoint", raw: "io_uring_submit_req"})
		}
	}
	return tps
}

// ensureGuards attaches the node-wide tracepoints, or points them at this
// datapath's programs; a no-op for those that already run them. Once this
// datapath has linked them, a look at the pins is all it costs (every
// Attach calls it).
func (d *Datapath) ensureGuards() error {
	dir := filepath.Join(d.opts.PinDir, linksDir)
	if d.guardsLinked && d.guardPinsPresent() {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	for _, tp := range d.nodeTracepoints() {
		if tp.prog == nil {
			continue // a datapath pinned before this program existed
		}
		if err := d.relinkTracing(filepath.Join(dir, tp.pin), tp); err != nil {
			if d.fn != nil && strings.HasPrefix(tp.pin, fnLinkPrefix) {
				// Loaded but not attached (a function the kernel
				// will not trace): the syscall tracepoints instead,
				// and the links attached so far go below.
				d.dropFnGuard(fmt.Errorf("attach %s: %w", tp.what, err))
				d.guardsLinked = false
				return d.ensureGuards()
			}
			if tp.event != 0 {
				// A per-syscall tracepoint that cannot be attached (a
				// seccomp profile refusing perf_event_open, say): the
				// guard as sys_enter instead, and the per-syscall
				// links attached so far go below.
				d.sysIDs, d.sysErr = nil, fmt.Errorf("attach %s: %w", tp.what, err)
				d.guardsLinked = false
				return d.ensureGuards()
			}
			return fmt.Errorf("attach %s: %w", tp.what, err)
		}
	}
	// What another configuration attached (the syscall guard in its other
	// form, or at all) goes once this one's are in.
	inUse := map[string]bool{}
	for _, tp := range d.nodeTracepoints() {
		inUse[tp.pin] = true
	}
	for _, id := range guardLinkIDs() {
		if !inUse[id] {
			if err := removeLinkPin(filepath.Join(dir, id)); err != nil {
				return err
			}
		}
	}
	d.guardsLinked = true
	return nil
}

// guardPinsPresent says whether every node-wide tracepoint is pinned.
func (d *Datapath) guardPinsPresent() bool {
	for _, tp := range d.nodeTracepoints() {
		if tp.prog == nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(d.opts.PinDir, linksDir, tp.pin)); err != nil {
			return false
		}
	}
	return true
}

// removeGuards detaches the node-wide tracepoints.
func (d *Datapath) removeGuards() error {
	d.guardsLinked = false
	var errs []error
	for _, id := range guardLinkIDs() {
		errs = append(errs, removeLinkPin(filepath.Join(d.opts.PinDir, linksDir, id)))
	}
	return errors.Join(errs...)
}

// haveUringTracepoint says, once per Datapath (every Attach asks, and a
// look into the kernel's BTF costs milliseconds), whether the kernel has the
// io_uring submission tracepoint.
func (d *Datapath) haveUringTracepoint() bool {
	d.uringOnce.Do(func() {
		d.uring = haveKernelType("btf_trace_io_uring_submit_req")() == nil
	})
	return d.uring
}

// guardLinkIDs are the pins of every node-wide tracepoint link, in any
// configuration.
func guardLinkIDs() []string {
	ids := []string{recvLinkID, closeLinkID, readyLinkID, sysenterLinkID, uringLinkID}
	for _, name := range syscallEventNames {
		ids = append(ids, syscallLinkPrefix+name)
	}
	for _, g := range fnGuards {
		ids = append(ids, fnLinkPrefix+g.pin)
	}
	return ids
}

// SyscallGuardFallback says why the syscall guard is not attached in its
// cheapest form the options allow: why not on kernel functions (the kernel
// refused fentry programs) and, then, why not as the per-syscall
// tracepoints (their ids could not be read); nil where it is.
func (d *Datapath) SyscallGuardFallback() error {
	if d.opts.NoSyscallGuard || d.opts.SyscallGuardBTF || d.fn != nil {
		return nil
	}
	var errs []error
	if !d.opts.SyscallGuardTracepoints && d.fnErr != nil {
		errs = append(errs, fmt.Errorf("not on kernel functions: %w", d.fnErr))
	}
	if _, err := d.syscallIDs(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// SyscallGuard says how the syscall guard is attached: "kernel functions"
// (fentry), "per-syscall tracepoints", "sys_enter", or "" when it is not.
func (d *Datapath) SyscallGuard() string {
	dir := filepath.Join(d.opts.PinDir, linksDir)
	if _, err := os.Stat(filepath.Join(dir, fnLinkPrefix+fnGuards[0].pin)); err == nil {
		return "kernel functions"
	}
	if _, err := os.Stat(filepath.Join(dir, syscallLinkPrefix+syscallEventNames[0])); err == nil {
		return "per-syscall tracepoints"
	}
	if _, err := os.Stat(filepath.Join(dir, sysenterLinkID)); err == nil {
		return "sys_enter"
	}
	return ""
}

func removeLinkPin(pin string) error {
	if err := os.Remove(pin); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("detach %s: %w", pin, err)
	}
	return nil
}

// guarding says whether the node has something for the node-wide
// tracepoints to watch: an attached pod, or a paired socket still open.
func (d *Datapath) guarding() (bool, error) {
	atts, err := d.Attachments()
	if err != nil {
		return false, err
	}
	if len(atts) > 0 {
		return true, nil
	}
	var key uint64
	err = d.objs.SockhopRx.NextKey(nil, &key)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, ebpf.ErrKeyNotExist):
		return false, nil
	}
	return false, fmt.Errorf("list paired sockets: %w", err)
}

// ReleaseIdleGuards detaches the node-wide tracepoints when no pod is
// attached and no paired socket is open, and says whether they are attached
// now. Attach attaches them again first. The agent calls it periodically.
func (d *Datapath) ReleaseIdleGuards() (attached bool, err error) {
	d.guardMu.Lock()
	defer d.guardMu.Unlock()
	busy, err := d.guarding()
	if err != nil || busy {
		return true, err
	}
	if err := d.removeGuards(); err != nil {
		return true, err
	}
	return false, nil
}

// GuardsAttached says whether the node-wide tracepoints are attached.
func (d *Datapath) GuardsAttached() bool {
	_, err := os.Stat(filepath.Join(d.opts.PinDir, linksDir, recvLinkID))
	return err == nil
}
