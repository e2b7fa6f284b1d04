package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// PodConfig is what the datapath knows of one attached pod.
type PodConfig struct {
	// ExcludePorts: connections to or from these ports stay on TCP.
	ExcludePorts []uint16
}

// MaxExcludePorts is how many ports one pod may exclude.
const MaxExcludePorts = 16

// Attachment is one cgroup the sockops program is attached to.
type Attachment struct {
	CgroupPath string
	CgroupID   uint64
	Config     PodConfig
	// Live is false when the cgroup was removed (the pod is gone) and the
	// link only waits to be detached.
	Live bool
}

const cgroupLinkPrefix = "cgroup-"

// sockoptLinkPrefix names a pod's second link: the setsockopt program
// (sockhop_sockopt), which refuses SO_ZEROCOPY on its paired sockets.
const sockoptLinkPrefix = "sockopt-"

// rootCgroupID is the id of a cgroup v2 hierarchy's root directory.
const rootCgroupID = 1

// Attach attaches the sockops program to a cgroup v2 directory through a
// pinned bpf_link. Attaching an attached directory only updates its config.
// Connections that were established before stay on TCP.
func (d *Datapath) Attach(cgroupDir string, cfg PodConfig) error {
	if len(cfg.ExcludePorts) > MaxExcludePorts {
		return fmt.Errorf("attach %s: at most %d excluded ports, got %d", cgroupDir, MaxExcludePorts, len(cfg.ExcludePorts))
	}
	for _, p := range cfg.ExcludePorts {
		if p == 0 {
			return fmt.Errorf("attach %s: port 0 cannot be excluded", cgroupDir)
		}
	}
	if len(cgroupDir) >= len(sockhopShPod{}.Path) {
		return fmt.Errorf("attach %s: path longer than %d bytes", cgroupDir, len(sockhopShPod{}.Path)-1)
	}
	dir, err := os.Open(cgroupDir)
	if err != nil {
		return fmt.Errorf("attach %s: %w", cgroupDir, err)
	}
	defer dir.Close()
	id, err := cgroupID(dir)
	if err != nil {
		return fmt.Errorf("attach %s: %w", cgroupDir, err)
	}
	if id == rootCgroupID {
		return fmt.Errorf("attach %s: this is the root cgroup, which holds every process of the host; attach a pod's or a service's cgroup", cgroupDir)
	}
	if err := d.refuseNested(cgroupDir, id); err != nil {
		return err
	}

	// The pod entry goes in first: a socket the new link sees must find it.
	var pod sockhopShPod
	copy(pod.ExcludePorts[:], cfg.ExcludePorts)
	for i, c := range []byte(cgroupDir) {
		pod.Path[i] = int8(c)
	}
	_, existed := d.lookupPod(id)
	// Counters first too, so that the pod's first sockets count.
	if err := d.addPodStats(id); err != nil {
		return fmt.Errorf("attach %s: %w", cgroupDir, err)
	}
	if err := d.objs.SockhopPods.Put(id, &pod); err != nil {
		if !existed {
			d.objs.SockhopPodst.Delete(id)
		}
		return fmt.Errorf("attach %s: store pod config: %w", cgroupDir, err)
	}

	pin := d.linkPin(id)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		l.Close()
		return nil
	}
	// The node-wide tracepoints watch the pod's sockets from their first,
	// and the setsockopt program guards them from their first.
	d.guardMu.Lock()
	defer d.guardMu.Unlock()
	err = d.ensureGuards()
	if err == nil {
		err = d.ensureSockopt(dir, id)
	}
	if err != nil {
		if !existed {
			d.objs.SockhopPods.Delete(id)
			d.objs.SockhopPodst.Delete(id)
		}
		return fmt.Errorf("attach %s: %w", cgroupDir, err)
	}
	l, err := link.AttachRawLink(link.RawLinkOptions{
		Target:  int(dir.Fd()),
		Program: d.objs.SockhopSockops,
		Attach:  ebpf.AttachCGroupSockOps,
	})
	if err == nil {
		err = l.Pin(pin)
		if err != nil {
			l.Close() // never pinned: closing detaches
		}
	}
	if err != nil {
		removeLinkPin(d.sockoptPin(id))
		if !existed {
			d.objs.SockhopPods.Delete(id)
			d.objs.SockhopPodst.Delete(id)
		}
		return fmt.Errorf("attach sockops to %s: %w", cgroupDir, err)
	}
	return l.Close() // the pin holds the link
}

func (d *Datapath) sockoptPin(id uint64) string {
	return filepath.Join(d.opts.PinDir, linksDir, sockoptLinkPrefix+strconv.FormatUint(id, 10))
}

// ensureSockopt attaches the setsockopt program to a pod's cgroup, or
// points its link at this datapath's program.
func (d *Datapath) ensureSockopt(dir *os.File, id uint64) error {
	if d.objs.SockhopSockopt == nil {
		return nil // a datapath pinned before the program existed
	}
	pin := d.sockoptPin(id)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		defer l.Close()
		if err := l.Update(d.objs.SockhopSockopt); err != nil {
			return fmt.Errorf("update the setsockopt link: %w", err)
		}
		return nil
	}
	l, err := link.AttachRawLink(link.RawLinkOptions{
		Target:  int(dir.Fd()),
		Program: d.objs.SockhopSockopt,
		Attach:  ebpf.AttachCGroupSetsockopt,
	})
	if err != nil {
		return fmt.Errorf("attach the setsockopt program: %w", err)
	}
	defer l.Close()
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pin the setsockopt link: %w", err)
	}
	return nil
}

// Detach removes the link of a cgroup directory; nil when it is not
// attached. Established connections are untouched. The directory may be
// gone already: then the attachment is found by its recorded path.
func (d *Datapath) Detach(cgroupDir string) error {
	atts, err := d.Attachments()
	if err != nil {
		return err
	}
	clean := filepath.Clean(cgroupDir)
	for _, a := range atts {
		if a.CgroupPath == clean {
			return d.DetachID(a.CgroupID)
		}
	}
	return nil
}

// DetachID removes the attachment of the cgroup with this id.
func (d *Datapath) DetachID(id uint64) error {
	pin := d.linkPin(id)
	l, err := link.LoadPinnedLink(pin, nil)
	switch {
	case err == nil:
		// Unpinning drops the last reference once we close: detached.
		err = l.Unpin()
		l.Close()
		if err != nil {
			return fmt.Errorf("detach cgroup %d: %w", id, err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("detach cgroup %d: %w", id, err)
	}
	// After the sockops link: the setsockopt program guards the sockets
	// that link pairs until it is gone.
	if err := removeLinkPin(d.sockoptPin(id)); err != nil {
		return fmt.Errorf("detach cgroup %d: %w", id, err)
	}
	if err := d.objs.SockhopPods.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("detach cgroup %d: forget pod config: %w", id, err)
	}
	// After the pod entry: a socket that still finds the pod may count
	// into its counters until they go.
	if d.objs.SockhopPodst != nil {
		if err := d.objs.SockhopPodst.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("detach cgroup %d: forget per-pod counters: %w", id, err)
		}
	}
	return nil
}

// Attachments lists what is attached, from the pins: a new process sees
// what an earlier one attached.
func (d *Datapath) Attachments() ([]Attachment, error) {
	var atts []Attachment
	err := d.eachCgroupLink(func(id uint64, l link.Link) error {
		a := Attachment{CgroupID: id}
		if pod, ok := d.lookupPod(id); ok {
			a.CgroupPath = cString(pod.Path[:])
			for _, p := range pod.ExcludePorts {
				if p != 0 {
					a.Config.ExcludePorts = append(a.Config.ExcludePorts, p)
				}
			}
		}
		a.Live = d.cgroupLive(id)
		atts = append(atts, a)
		return nil
	})
	sort.Slice(atts, func(i, j int) bool { return atts[i].CgroupPath < atts[j].CgroupPath })
	return atts, err
}

// SetPodIPs replaces the set of this node's accelerated pod IPs: sockets
// in two network namespaces pair only when both of their IPs are in it.
func (d *Datapath) SetPodIPs(ips []netip.Addr) error {
	want := make(map[sockhopShIp]bool, len(ips))
	for _, ip := range ips {
		want[ipKey(ip)] = true
	}
	var (
		key   sockhopShIp
		val   uint8
		stale []sockhopShIp
	)
	iter := d.objs.SockhopPodips.Iterate()
	for iter.Next(&key, &val) {
		if !want[key] {
			stale = append(stale, key)
		}
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("list pod IPs: %w", err)
	}
	for k := range want {
		if err := d.objs.SockhopPodips.Put(k, uint8(1)); err != nil {
			return fmt.Errorf("add pod IP: %w", err)
		}
	}
	for _, k := range stale {
		if err := d.objs.SockhopPodips.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("remove pod IP: %w", err)
		}
	}
	return nil
}

// ipKey is the map key of an IP: 16 bytes, IPv4 as v4-mapped IPv6, in
// network byte order as the kernel stores addresses.
func ipKey(ip netip.Addr) sockhopShIp {
	b := ip.As16()
	var k sockhopShIp
	for i := range k.Addr {
		k.Addr[i] = nativeU32(b[4*i : 4*i+4])
	}
	return k
}

func (d *Datapath) lookupPod(id uint64) (sockhopShPod, bool) {
	var pod sockhopShPod
	err := d.objs.SockhopPods.Lookup(id, &pod)
	return pod, err == nil
}

func (d *Datapath) linkPin(id uint64) string {
	return filepath.Join(d.opts.PinDir, linksDir, cgroupLinkPrefix+strconv.FormatUint(id, 10))
}

// eachCgroupLink calls fn with every pinned cgroup link; it closes them.
func (d *Datapath) eachCgroupLink(fn func(id uint64, l link.Link) error) error {
	dir := filepath.Join(d.opts.PinDir, linksDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	var errs []error
	for _, e := range entries {
		idStr, ok := strings.CutPrefix(e.Name(), cgroupLinkPrefix)
		if !ok {
			continue
		}
		id, err := strconv.ParseUint(idStr, 10, 64)
		if err != nil {
			continue
		}
		l, err := link.LoadPinnedLink(filepath.Join(dir, e.Name()), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue // detached since the listing (by another goroutine or process)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("open link of cgroup %d: %w", id, err))
			continue
		}
		errs = append(errs, fn(id, l))
		l.Close()
	}
	return errors.Join(errs...)
}

// cgroupID is the id the kernel gives a cgroup v2 directory: its inode.
func cgroupID(dir *os.File) (uint64, error) {
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(dir.Fd()), &fs); err != nil {
		return 0, err
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("not a cgroup v2 directory")
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(dir.Fd()), &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

func cString(b []int8) string {
	var sb strings.Builder
	for _, c := range b {
		if c == 0 {
			break
		}
		sb.WriteByte(byte(c))
	}
	return sb.String()
}

// cgroupLive says whether the cgroup recorded for this id still exists.
func (d *Datapath) cgroupLive(id uint64) bool {
	f := d.openCgroup(id)
	if f != nil {
		f.Close()
	}
	return f != nil
}

// openCgroup opens the cgroup directory recorded for this id, or returns
// nil when it is gone (or another cgroup took its path).
func (d *Datapath) openCgroup(id uint64) *os.File {
	pod, ok := d.lookupPod(id)
	if !ok {
		return nil
	}
	f, err := os.Open(cString(pod.Path[:]))
	if err != nil {
		return nil
	}
	if got, err := cgroupID(f); err != nil || got != id {
		f.Close()
		return nil
	}
	return f
}

// relinkSockopt points an attached pod's setsockopt link at this datapath's
// program, attaching it if the pod has none.
func (d *Datapath) relinkSockopt(id uint64) error {
	dir := d.openCgroup(id)
	if dir == nil {
		return nil // its cgroup is gone: the link goes at its detach
	}
	defer dir.Close()
	if err := d.ensureSockopt(dir, id); err != nil {
		return fmt.Errorf("cgroup %d: %w", id, err)
	}
	return nil
}
