package datapath

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// A stranded receiver started to splice (or sendfile, or zerocopy-receive)
// while redirected bytes sat unread in its psock: no call it can make sees
// them, so its connection would stall. The guard records it in
// sockhop_strand; AbortStranded destroys it with bpf_sock_destroy from a TCP
// iterator (bpf/abort.c) run in the receiver's network namespace, so that
// the blocked call fails with ECONNABORTED and the peer gets a reset
// (docs/hazards.md).

// StrandState is what became of a stranded receiver.
type StrandState uint32

// StrandState values.
const (
	// StrandPending: recorded by the guard, not yet handled.
	StrandPending = StrandState(sockhopShStrandStateSH_STRAND_PENDING)
	// StrandAborted: its connection was aborted, both ends saw an error.
	StrandAborted = StrandState(sockhopShStrandStateSH_STRAND_ABORTED)
	// StrandRecovered: its reader went back to recvmsg and read the
	// redirected bytes, in order: nothing to abort. (The iterator now
	// forgets such a receiver itself; a datapath pinned before that may
	// still report it.)
	StrandRecovered = StrandState(sockhopShStrandStateSH_STRAND_RECOVERED)
	// StrandFailed: bpf_sock_destroy returned an error (Strand.Err).
	StrandFailed = StrandState(sockhopShStrandStateSH_STRAND_FAILED)
	// StrandGone: the socket closed before it was handled.
	StrandGone = StrandState(100)
)

func (s StrandState) String() string {
	switch s {
	case StrandPending:
		return "pending"
	case StrandAborted:
		return "aborted"
	case StrandRecovered:
		return "recovered"
	case StrandFailed:
		return "failed"
	case StrandGone:
		return "gone"
	}
	return fmt.Sprintf("state(%d)", uint32(s))
}

// Strand is one stranded receiver.
type Strand struct {
	// Socket is the socket's kernel address: an identifier, nothing more.
	Socket uint64
	// Netns is the inode of its network namespace (st_ino of
	// /proc/<pid>/ns/net, or of a bind mount such as /run/netns/<name>).
	Netns uint64
	// Cgroup is the id (inode) of its cgroup v2: the container that splices.
	Cgroup uint64
	State  StrandState
	// Err is bpf_sock_destroy's error, for StrandFailed.
	Err error
	// Waited is the time from the guard seeing it to its handling (or to
	// now, for a pending one).
	Waited time.Duration
}

// Stranded lists the stranded receivers not yet handled.
func (d *Datapath) Stranded() ([]Strand, error) {
	if d.objs.SockhopStrand == nil {
		return nil, nil // a datapath pinned before the abort existed
	}
	now := monotonicNow()
	var (
		sk   uint64
		v    sockhopShStrand
		list []Strand
	)
	iter := d.objs.SockhopStrand.Iterate()
	for iter.Next(&sk, &v) {
		list = append(list, strandOf(sk, v, now))
	}
	if err := iter.Err(); err != nil {
		return list, fmt.Errorf("list stranded receivers: %w", err)
	}
	return list, nil
}

func strandOf(sk uint64, v sockhopShStrand, now uint64) Strand {
	s := Strand{Socket: sk, Netns: v.Netns, Cgroup: v.Cgroup, State: StrandState(v.State)}
	end := now
	if v.Done != 0 {
		end = v.Done
	}
	if end > v.Since {
		s.Waited = time.Duration(end - v.Since)
	}
	if s.State == StrandFailed {
		s.Err = unix.Errno(-v.Err)
	}
	return s
}

// monotonicNow is bpf_ktime_get_ns's clock.
func monotonicNow() uint64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// aborter is the loaded abort iterator.
type aborter struct {
	prog *ebpf.Program
	iter *link.Iter
}

func (a *aborter) Close() error {
	if a == nil {
		return nil
	}
	var errs []error
	if a.iter != nil {
		errs = append(errs, a.iter.Close())
	}
	if a.prog != nil {
		errs = append(errs, a.prog.Close())
	}
	return errors.Join(errs...)
}

// abortFeature names what the abort needs of the kernel.
const abortFeature = "kfunc bpf_sock_destroy from an iter/tcp program (Linux 6.5)"

// loadAborter loads the abort iterator on the given maps (nil: its own,
// for the probe) and attaches it (an iterator link runs nothing until an
// iterator is created from it).
func loadAborter(replace map[string]*ebpf.Map) (*aborter, error) {
	spec, err := loadAbort()
	if err != nil {
		return nil, fmt.Errorf("parse the abort object: %w", err)
	}
	if replace, err = sharedMaps(spec, replace); err != nil {
		return nil, err
	}
	var objs struct {
		Prog *ebpf.Program `ebpf:"sockhop_abort"`
	}
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: replace}); err != nil {
		return nil, featureErr(abortFeature, verifierError(err))
	}
	a := &aborter{prog: objs.Prog}
	a.iter, err = link.AttachIter(link.IterOptions{Program: objs.Prog})
	if err != nil {
		a.Close()
		return nil, featureErr(abortFeature, fmt.Errorf("attach the tcp iterator: %w", err))
	}
	return a, nil
}

// ProbeAbort says whether this kernel can abort stranded receivers: it
// loads the abort iterator on maps of its own and unloads it. Without it a
// stranded receiver's connection stalls instead of failing (counted, and
// reported by the agent).
func ProbeAbort() error {
	a, err := loadAborter(nil)
	if err != nil {
		return err
	}
	return a.Close()
}

// AbortStranded aborts the connections of the stranded receivers in the
// network namespace at netnsPath (a /proc/<pid>/ns/net or a bind mount of
// one): it runs the abort iterator from a thread that enters that
// namespace (CAP_SYS_ADMIN), which destroys each recorded receiver whose
// redirected bytes are still unread. It returns every receiver of that
// namespace it handled (aborted, failed, or gone: closed
// before), and forgets them. A *FeatureError means the kernel cannot.
func (d *Datapath) AbortStranded(netnsPath string) ([]Strand, error) {
	if d.objs.SockhopStrand == nil {
		return nil, nil
	}
	ns, err := os.Open(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", netnsPath, err)
	}
	defer ns.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(ns.Fd()), &st); err != nil {
		return nil, fmt.Errorf("stat network namespace %s: %w", netnsPath, err)
	}
	d.abortMu.Lock()
	defer d.abortMu.Unlock()
	if d.abort == nil {
		d.abort, err = loadAborter(d.objs.maps())
		if err != nil {
			return nil, err
		}
	}
	start := monotonicNow()
	if err := runIn(ns, func() error { return d.iterate() }); err != nil {
		return nil, fmt.Errorf("abort stranded receivers in %s: %w", netnsPath, err)
	}
	return d.collect(st.Ino, start)
}

// iterate runs the abort iterator once over this thread's namespace.
func (d *Datapath) iterate() error {
	r, err := d.abort.iter.Open()
	if err != nil {
		return fmt.Errorf("create the tcp iterator: %w", err)
	}
	defer r.Close()
	_, err = io.Copy(io.Discard, r)
	return err
}

// collect takes the entries of namespace netns out of sockhop_strand:
// those the iterator handled, and those recorded before it started that it
// did not find (their socket closed).
func (d *Datapath) collect(netns, start uint64) ([]Strand, error) {
	now := monotonicNow()
	var (
		sk   uint64
		v    sockhopShStrand
		done []Strand
		keys []uint64
	)
	iter := d.objs.SockhopStrand.Iterate()
	for iter.Next(&sk, &v) {
		if v.Netns != netns {
			continue
		}
		s := strandOf(sk, v, now)
		if s.State == StrandPending {
			if v.Since >= start {
				continue // recorded while the iterator ran: next time
			}
			s.State = StrandGone
		}
		done = append(done, s)
		keys = append(keys, sk)
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("list stranded receivers: %w", err)
	}
	for _, k := range keys {
		if err := d.objs.SockhopStrand.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return done, fmt.Errorf("forget stranded receiver: %w", err)
		}
	}
	return done, nil
}

// runIn runs fn on an OS thread that has entered the network namespace ns.
// The thread is never handed back to the Go scheduler: it exits with the
// goroutine (locked), so no other goroutine ever runs in that namespace.
func runIn(ns *os.File, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread ends with this goroutine.
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter the network namespace (needs CAP_SYS_ADMIN): %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// FindNetns returns the path of a network namespace file with this inode
// under dirs (bind mounts such as /run/netns/<name>, where container
// runtimes keep pod sandboxes' namespaces), or of a process's
// <proc>/<pid>/ns/net for each proc root given with procRoots (e.g. /proc
// with hostPID, or the host's /proc mounted elsewhere).
func FindNetns(inode uint64, dirs, procRoots []string) (string, error) {
	match := func(path string) bool {
		var st unix.Stat_t
		return unix.Stat(path, &st) == nil && st.Ino == inode
	}
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if p := filepath.Join(dir, e.Name()); match(p) {
				return p, nil
			}
		}
	}
	for _, root := range procRoots {
		entries, err := os.ReadDir(root)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if e.Name()[0] < '0' || e.Name()[0] > '9' {
				continue
			}
			if p := filepath.Join(root, e.Name(), "ns", "net"); match(p) {
				return p, nil
			}
		}
	}
	return "", fmt.Errorf("network namespace %d: not found in %v or %v: %w", inode, dirs, procRoots, os.ErrNotExist)
}

// Aborts counts the connections aborted since the datapath was first loaded.
func (d *Datapath) aborts() uint64 {
	if d.objs.SockhopAborts == nil {
		return 0
	}
	var n uint64
	if err := d.objs.SockhopAborts.Lookup(uint32(0), &n); err != nil {
		return 0
	}
	return n
}

// ForgetStranded drops the record of a stranded receiver without aborting
// it (its network namespace cannot be found: its pod is gone).
func (d *Datapath) ForgetStranded(s Strand) error {
	if d.objs.SockhopStrand == nil {
		return nil
	}
	if err := d.objs.SockhopStrand.Delete(s.Socket); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("forget stranded receiver: %w", err)
	}
	return nil
}
