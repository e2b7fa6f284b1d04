// Package testbed builds throwaway pods on the real kernel for sockhop's
// kernel tests and benchmarks: cgroups under a dedicated parent, network
// namespaces joined by veths, iptables rules inside them, and peer processes
// (servers, clients, transparent proxies) placed in those cgroups and
// namespaces. Close removes everything it made.
package testbed

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/cgroups/v3"
)

// Bed owns everything one test or benchmark made.
type Bed struct {
	id     string
	parent string // dedicated parent cgroup

	mu      sync.Mutex
	cgroups []string
	netnses []string
	peers   []*Peer
	closed  bool
}

// CgroupMount is the cgroup v2 mount: /sys/fs/cgroup on unified hosts,
// /sys/fs/cgroup/unified on hybrid ones.
func CgroupMount() (string, error) {
	switch cgroups.Mode() {
	case cgroups.Unified:
		return "/sys/fs/cgroup", nil
	case cgroups.Hybrid:
		return "/sys/fs/cgroup/unified", nil
	default:
		return "", errors.New("no cgroup v2 hierarchy is mounted")
	}
}

// New makes a bed with its own parent cgroup <mount>/sockhop-test-<random>.
func New() (*Bed, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("testbed needs root (cgroups, network namespaces, BPF)")
	}
	mount, err := CgroupMount()
	if err != nil {
		return nil, err
	}
	var rnd [4]byte
	rand.Read(rnd[:])
	b := &Bed{id: hex.EncodeToString(rnd[:])}
	b.parent = filepath.Join(mount, "sockhop-test-"+b.id)
	if err := os.Mkdir(b.parent, 0o755); err != nil {
		return nil, fmt.Errorf("create test cgroup parent: %w", err)
	}
	return b, nil
}

// ID is the bed's random suffix, used in every name it creates.
func (b *Bed) ID() string { return b.id }

// Cgroup creates a child cgroup of the bed's parent (a "pod").
func (b *Bed) Cgroup(name string) (string, error) {
	dir := filepath.Join(b.parent, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create cgroup %s: %w", dir, err)
	}
	b.mu.Lock()
	b.cgroups = append(b.cgroups, dir)
	b.mu.Unlock()
	return dir, nil
}

// NetNS is a named network namespace the bed created.
type NetNS struct{ Name string }

// NetNS creates a network namespace with loopback up.
func (b *Bed) NetNS(name string) (*NetNS, error) {
	ns := &NetNS{Name: "sockhop-" + b.id + "-" + name}
	if err := run("ip", "netns", "add", ns.Name); err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.netnses = append(b.netnses, ns.Name)
	b.mu.Unlock()
	if err := ns.Run("ip", "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	return ns, nil
}

// Run runs a command inside the namespace.
func (n *NetNS) Run(args ...string) error {
	return run(append([]string{"ip", "netns", "exec", n.Name}, args...)...)
}

// Veth joins two namespaces with a veth pair named eth0 on both sides,
// giving each its address (which also routes the other's prefix).
func (b *Bed) Veth(a *NetNS, aAddr netip.Prefix, z *NetNS, zAddr netip.Prefix) error {
	tmp := "shv" + b.id[:4]
	steps := [][]string{
		{"ip", "-n", a.Name, "link", "add", "eth0", "type", "veth", "peer", "name", tmp, "netns", z.Name},
		{"ip", "-n", z.Name, "link", "set", tmp, "name", "eth0"},
		{"ip", "-n", a.Name, "addr", "add", aAddr.String(), "dev", "eth0"},
		{"ip", "-n", z.Name, "addr", "add", zAddr.String(), "dev", "eth0"},
		{"ip", "-n", a.Name, "link", "set", "eth0", "up"},
		{"ip", "-n", z.Name, "link", "set", "eth0", "up"},
	}
	if aAddr.Addr().Is6() {
		// No duplicate address detection: the addresses are usable at once.
		steps = append([][]string{
			{"ip", "netns", "exec", a.Name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"},
			{"ip", "netns", "exec", z.Name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"},
		}, steps...)
		for i, s := range steps {
			if len(s) > 4 && s[3] == "addr" {
				steps[i] = append(s, "nodad")
			}
		}
	}
	for _, s := range steps {
		if err := run(s...); err != nil {
			return err
		}
	}
	return nil
}

// Close ends the bed's processes, deletes its namespaces and cgroups.
func (b *Bed) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	peers, netnses, cgs := b.peers, b.netnses, b.cgroups
	b.mu.Unlock()

	var errs []error
	for _, p := range peers {
		p.Stop()
	}
	for _, ns := range netnses {
		if err := run("ip", "netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	for i := len(cgs) - 1; i >= 0; i-- {
		errs = append(errs, rmdirRetry(cgs[i]))
	}
	errs = append(errs, rmdirRetry(b.parent))
	return errors.Join(errs...)
}

// rmdirRetry removes a cgroup; a process that just exited may take a moment
// to leave it.
func rmdirRetry(dir string) error {
	var err error
	for i := 0; i < 50; i++ {
		err = os.Remove(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", dir, err)
}

func run(args ...string) error {
	cmd := exec.Command(args[0], args[1:]...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// cgroupFD opens a cgroup directory for clone3(CLONE_INTO_CGROUP).
func cgroupFD(dir string) (int, error) {
	fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open cgroup %s: %w", dir, err)
	}
	return fd, nil
}

// Patience scales a wait for something that must happen (a peer getting
// ready, a connection, bytes moving, a map emptying): SOCKHOP_TEST_PATIENCE=N
// multiplies it by N, for emulated CPUs that are several times slower (the
// kernel matrix sets it under TCG). A wait whose expiry is itself the finding
// (a sink that sees no data) does not scale.
func Patience(d time.Duration) time.Duration {
	if n, err := strconv.Atoi(os.Getenv("SOCKHOP_TEST_PATIENCE")); err == nil && n > 1 {
		return d * time.Duration(n)
	}
	return d
}
