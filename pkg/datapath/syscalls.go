package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// The syscall guard (docs/datapath.md, "The receiver guard") runs before a
// splice, a sendfile, a TCP zerocopy receive or a MSG_WAITALL read. As one
// tp_btf program on sys_enter it runs for every syscall on the node; as
// classic per-syscall tracepoints (syscalls/sys_enter_*), one program each,
// the other syscalls pay only the kernel's traced entry path. Those need
// the events' ids, which only tracefs tells: where it is not mounted, the
// agent mounts it in a mount namespace of its own for the time it takes to
// read them. Where that fails, the guard falls back to sys_enter.

// syscallEvent is one classic syscall tracepoint of the guard.
type syscallEvent struct {
	name string // the event, under syscalls/
	prog *ebpf.Program
}

// syscallEventNames are the events of the guard, in the order of
// syscallEvents.
var syscallEventNames = []string{
	"sys_enter_splice", "sys_enter_sendfile64", "sys_enter_recvfrom",
	"sys_enter_recvmsg", "sys_enter_recvmmsg", "sys_enter_getsockopt",
}

func (d *Datapath) syscallEvents() []syscallEvent {
	progs := []*ebpf.Program{d.objs.SockhopTsplice, d.objs.SockhopTsendf, d.objs.SockhopTrfrom,
		d.objs.SockhopTrmsg, d.objs.SockhopTrmmsg, d.objs.SockhopTgetopt}
	evs := make([]syscallEvent, len(progs))
	for i, p := range progs {
		evs[i] = syscallEvent{syscallEventNames[i], p}
	}
	return evs
}

// syscallLinkPrefix names the pins of the classic syscall tracepoints.
const syscallLinkPrefix = "tp-syscalls-"

// syscallIDs reads the ids of the guard's syscall events, once per
// Datapath: nil (and why) where they cannot be read.
func (d *Datapath) syscallIDs() (map[string]uint64, error) {
	d.sysOnce.Do(func() {
		var names []string
		for _, ev := range d.syscallEvents() {
			if ev.prog == nil {
				d.sysErr = errors.New("a datapath pinned before the per-syscall programs")
				return
			}
			names = append(names, ev.name)
		}
		d.sysIDs, d.sysErr = readEventIDs("syscalls", names)
	})
	return d.sysIDs, d.sysErr
}

// readEventIDs reads tracefs' events/<group>/<name>/id for each name, from
// a mounted tracefs, or else from one mounted for the purpose in a private
// mount namespace of a thread that ends with it.
func readEventIDs(group string, names []string) (map[string]uint64, error) {
	for _, dir := range []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"} {
		var st unix.Statfs_t
		if unix.Statfs(dir, &st) == nil && st.Type == unix.TRACEFS_MAGIC {
			return eventIDsIn(dir, group, names)
		}
	}
	type result struct {
		ids map[string]uint64
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		ids, restored, err := eventIDsPrivately(group, names)
		// A thread put back as it was (mount namespace, root, working
		// directory) may run other goroutines again. One that was not
		// stays locked and ends with this goroutine (the children it may
		// have started with a parent-death signal then get it).
		if restored {
			runtime.UnlockOSThread()
		}
		done <- result{ids, err}
	}()
	r := <-done
	return r.ids, r.err
}

// eventIDsPrivately reads the ids from a tracefs it mounts in a mount
// namespace of the calling (locked) thread, on the tracefs mount point
// sysfs always has (the container's root may be read-only), then puts the
// thread back in its mount namespace, at its root (a chroot's, if any) and
// working directory: restored says it did.
func eventIDsPrivately(group string, names []string) (ids map[string]uint64, restored bool, err error) {
	var fds [3]int // the mount namespace, the root, the working directory
	for i, path := range []string{"/proc/thread-self/ns/mnt", "/", "."} {
		if fds[i], err = unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			for _, fd := range fds[:i] {
				unix.Close(fd)
			}
			return nil, true, fmt.Errorf("private mount namespace for tracefs: open %s: %w", path, err)
		}
	}
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	if err := unix.Unshare(unix.CLONE_NEWNS | unix.CLONE_FS); err != nil {
		// CLONE_FS alone may have been applied: the same root and
		// working directory, no longer shared. Not restored.
		return nil, false, fmt.Errorf("private mount namespace for tracefs: %w", err)
	}
	defer func() {
		restored = unix.Setns(fds[0], unix.CLONE_NEWNS) == nil &&
			unix.Fchdir(fds[1]) == nil && unix.Chroot(".") == nil && unix.Fchdir(fds[2]) == nil
	}()
	// Nothing mounted here reaches the node's namespace.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return nil, false, fmt.Errorf("private mount namespace for tracefs: %w", err)
	}
	const dir = "/sys/kernel/tracing"
	if err := unix.Mount("tracefs", dir, "tracefs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return nil, false, fmt.Errorf("mount tracefs on %s: %w", dir, err)
	}
	ids, err = eventIDsIn(dir, group, names)
	return ids, false, err
}

func eventIDsIn(tracefs, group string, names []string) (map[string]uint64, error) {
	ids := map[string]uint64{}
	for _, name := range names {
		b, err := os.ReadFile(filepath.Join(tracefs, "events", group, name, "id"))
		if err != nil {
			return nil, fmt.Errorf("tracepoint %s/%s: %w", group, name, err)
		}
		id, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("tracepoint %s/%s: id %q: %w", group, name, b, err)
		}
		ids[name] = id
	}
	return ids, nil
}

// attachEvent attaches prog to the tracepoint with this id, as a bpf_link
// that holds the perf event (pinnable).
func attachEvent(id uint64, prog *ebpf.Program) (link.Link, error) {
	attr := unix.PerfEventAttr{
		Type:        unix.PERF_TYPE_TRACEPOINT,
		Config:      id,
		Sample_type: unix.PERF_SAMPLE_RAW,
		Sample:      1,
		Wakeup:      1,
	}
	// One event, on CPU 0, for every task: a tracepoint's programs run
	// wherever it fires.
	fd, err := unix.PerfEventOpen(&attr, -1, 0, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("perf event for tracepoint %d: %w", id, err)
	}
	defer unix.Close(fd) // the link holds it
	// A link of this program to this tracepoint that was just let go
	// (ReleaseIdleGuards, then an Attach) is freed by a kernel worker a
	// moment later; until then the tracepoint refuses the program a second
	// time (EEXIST, bpf_prog_array_copy).
	for end := time.Now().Add(2 * time.Second); ; {
		l, err := link.AttachRawLink(link.RawLinkOptions{Target: fd, Program: prog, Attach: ebpf.AttachPerfEvent})
		if err == nil {
			return l, nil
		}
		if !errors.Is(err, unix.EEXIST) || time.Now().After(end) {
			return nil, fmt.Errorf("link tracepoint %d: %w", id, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
