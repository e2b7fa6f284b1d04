// Package cgroup finds the cgroup v2 directory of a Kubernetes pod on the node,
// as kubelet names it with the cgroupfs or the systemd cgroup driver, on hosts
// where cgroup2 is the only hierarchy (unified) or sits beside the v1
// controllers (hybrid), under any kubelet --cgroup-root.
package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/containerd/cgroups/v3"
	"golang.org/x/sys/unix"
)

// Driver is kubelet's --cgroup-driver.
type Driver string

// The cgroup drivers kubelet knows.
const (
	Cgroupfs Driver = "cgroupfs"
	Systemd  Driver = "systemd"
)

// QOSClass is a pod's QoS class, with the same strings as corev1.PodQOSClass.
type QOSClass string

// The QoS classes of Kubernetes.
const (
	Guaranteed QOSClass = "Guaranteed"
	Burstable  QOSClass = "Burstable"
	BestEffort QOSClass = "BestEffort"
)

// qosClasses is the order in which Resolve tries QoS classes after the one it was given.
var qosClasses = []QOSClass{Guaranteed, Burstable, BestEffort}

// ErrNotFound is wrapped by Resolve when the pod has no cgroup directory (yet).
var ErrNotFound = errors.New("cgroup not found")

// Well-known cgroup2 mount points, as cgroups.Mode() checks them.
const (
	unifiedMount = "/sys/fs/cgroup"
	hybridMount  = "/sys/fs/cgroup/unified"
)

// Options configure a Resolver. The zero value detects everything.
type Options struct {
	// Mount is the cgroup v2 mount point. "" detects it with cgroups.Mode():
	// /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on hybrid ones;
	// a host with cgroup v1 only is an error.
	Mount string
	// Driver is kubelet's cgroup driver. "" detects it from what exists under
	// the cgroup root: kubepods (cgroupfs) or kubepods.slice (systemd).
	Driver Driver
	// CgroupRoot is kubelet's --cgroup-root (cgroupRoot in its config file),
	// written exactly as kubelet was given it. "" or "/" is the default root.
	CgroupRoot string
}

// Resolver maps pods to their cgroup v2 directories. It is safe for
// concurrent use.
type Resolver struct {
	mount  string
	driver Driver
	root   []string
}

// NewResolver checks the options, detects what was left empty, and returns a
// Resolver.
func NewResolver(opts Options) (*Resolver, error) {
	root, err := parseRoot(opts.CgroupRoot)
	if err != nil {
		return nil, fmt.Errorf("new cgroup resolver: %w", err)
	}
	mount := opts.Mount
	if mount == "" {
		if mount, err = detectMount(); err != nil {
			return nil, fmt.Errorf("new cgroup resolver: %w", err)
		}
	} else {
		mount = filepath.Clean(mount)
		st, err := os.Stat(mount)
		if err != nil {
			return nil, fmt.Errorf("new cgroup resolver: cgroup v2 mount %s: %w", mount, err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("new cgroup resolver: cgroup v2 mount %s is not a directory", mount)
		}
	}
	r := &Resolver{mount: mount, driver: opts.Driver, root: root}
	switch opts.Driver {
	case Cgroupfs, Systemd:
	case "":
		if r.driver, err = r.detectDriver(); err != nil {
			return nil, fmt.Errorf("new cgroup resolver: %w", err)
		}
	default:
		return nil, fmt.Errorf("new cgroup resolver: unknown cgroup driver %q (want %q or %q)", opts.Driver, Cgroupfs, Systemd)
	}
	return r, nil
}

// detectMount finds the host's cgroup v2 mount point.
func detectMount() (string, error) {
	switch mode := cgroups.Mode(); mode {
	case cgroups.Unified:
		return unifiedMount, nil
	case cgroups.Hybrid:
		return hybridMount, nil
	case cgroups.Legacy:
		return "", fmt.Errorf("no cgroup v2 mount: %s holds cgroup v1 only and %s is not cgroup2", unifiedMount, hybridMount)
	default:
		return "", fmt.Errorf("no cgroup v2 mount: %s is not mounted (cgroups mode %d)", unifiedMount, mode)
	}
}

// detectDriver looks for kubelet's kubepods cgroup in each driver's naming.
func (r *Resolver) detectDriver() (Driver, error) {
	name := append(append([]string{}, r.root...), kubepodsName)
	fsDir := filepath.Join(r.mount, relPath(Cgroupfs, name))
	sdDir := filepath.Join(r.mount, relPath(Systemd, name))
	fsOK, err := isDir(fsDir)
	if err != nil {
		return "", fmt.Errorf("detect cgroup driver: %w", err)
	}
	sdOK, err := isDir(sdDir)
	if err != nil {
		return "", fmt.Errorf("detect cgroup driver: %w", err)
	}
	switch {
	case fsOK && !sdOK:
		return Cgroupfs, nil
	case sdOK && !fsOK:
		return Systemd, nil
	case fsOK && sdOK:
		return "", fmt.Errorf("detect cgroup driver: both %s and %s exist; set the driver explicitly", fsDir, sdDir)
	default:
		return "", fmt.Errorf("detect cgroup driver: neither %s nor %s exists (is kubelet running with this cgroup root and cgroupsPerQOS?): %w", fsDir, sdDir, ErrNotFound)
	}
}

// Mount is the cgroup v2 mount point the Resolver works under.
func (r *Resolver) Mount() string { return r.mount }

// Driver is the cgroup driver the Resolver assumes first.
func (r *Resolver) Driver() Driver { return r.driver }

// PodDir is the directory kubelet uses for the pod, whether or not it exists
// yet. It returns "" when podUID is not a valid pod UID or qos is not a QoS class.
func (r *Resolver) PodDir(podUID string, qos QOSClass) string {
	if !validUID(podUID) {
		return ""
	}
	if _, ok := qosComponent(qos); !ok {
		return ""
	}
	return r.dir(r.driver, qos, podUID)
}

func (r *Resolver) dir(d Driver, qos QOSClass, podUID string) string {
	return filepath.Join(r.mount, relPath(d, podName(r.root, qos, podUID)))
}

// Resolve returns the pod's existing cgroup directory. It looks first where
// PodDir says; if that is missing it tries the other QoS classes and then the
// other driver's naming, always for this pod UID only. An empty qos means the
// class is not known yet: every class is tried. When no directory exists the
// error wraps ErrNotFound.
func (r *Resolver) Resolve(podUID string, qos QOSClass) (string, error) {
	if podUID == "" {
		return "", errors.New("resolve cgroup of pod: empty pod UID")
	}
	if !validUID(podUID) {
		return "", fmt.Errorf("resolve cgroup of pod %q: malformed pod UID (want a UUID or 32 hex digits)", podUID)
	}
	if _, ok := qosComponent(qos); !ok && qos != "" {
		return "", fmt.Errorf("resolve cgroup of pod %s: unknown QoS class %q", podUID, qos)
	}

	var candidates []string
	for _, d := range []Driver{r.driver, r.otherDriver()} {
		if qos != "" {
			candidates = append(candidates, r.dir(d, qos, podUID))
		}
		for _, q := range qosClasses {
			if q != qos {
				candidates = append(candidates, r.dir(d, q, podUID))
			}
		}
	}
	var firstErr error
	for _, c := range candidates {
		ok, err := isDir(c)
		if ok {
			return c, nil
		}
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		return "", fmt.Errorf("resolve cgroup of pod %s: %w", podUID, firstErr)
	}
	return "", fmt.Errorf("resolve cgroup of pod %s: %w: tried %s and %d other paths", podUID, ErrNotFound, candidates[0], len(candidates)-1)
}

func (r *Resolver) otherDriver() Driver {
	if r.driver == Systemd {
		return Cgroupfs
	}
	return Systemd
}

// ID returns the cgroup v2 id of dir: the inode number of the directory, which
// is the kernfs node id that bpf_get_current_cgroup_id() and
// bpf_skb_cgroup_id() return. dir must be on a cgroup2 file system.
func (r *Resolver) ID(dir string) (uint64, error) {
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err != nil {
		return 0, fmt.Errorf("cgroup id of %s: %w", dir, err)
	}
	if sfs.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("cgroup id of %s: not on a cgroup2 file system (type %#x)", dir, sfs.Type)
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return 0, fmt.Errorf("cgroup id of %s: %w", dir, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return 0, fmt.Errorf("cgroup id of %s: not a directory", dir)
	}
	return st.Ino, nil
}

// isDir reports whether p is an existing directory. A missing path (or a
// path through a non-directory) is false with no error; other failures, such
// as permission denied, are errors.
func isDir(p string) (bool, error) {
	st, err := os.Stat(p)
	switch {
	case err == nil:
		return st.IsDir(), nil
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, unix.ENOTDIR):
		return false, nil
	default:
		return false, err
	}
}
