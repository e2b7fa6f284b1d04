package cgroup

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/containerd/cgroups/v3"
	"golang.org/x/sys/unix"

	"github.com/sockhop/sockhop/internal/needs"
)

// testParent creates <mount>/sockhop-test-cgroup-<random> in the real cgroup2
// hierarchy and removes it, and everything made below it, when the test ends.
func testParent(t *testing.T) (mount, parent string) {
	t.Helper()
	needs.Root(t, "to create cgroups in the host's cgroup2 hierarchy")
	switch mode := cgroups.Mode(); mode {
	case cgroups.Unified:
		mount = unifiedMount
	case cgroups.Hybrid:
		mount = hybridMount
	default:
		needs.Missing(t, fmt.Sprintf("no cgroup v2 mount on this host (cgroups mode %d)", mode))
	}
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	parent = filepath.Join(mount, "sockhop-test-cgroup-"+hex.EncodeToString(b))
	if err := os.Mkdir(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeCgroupTree(t, parent) })
	return mount, parent
}

// removeCgroupTree rmdirs every cgroup below and including dir, deepest first
// (a cgroup can only be removed once it has no children; its interface files
// go with it).
func removeCgroupTree(t *testing.T, dir string) {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("walk %s: %v", dir, err)
	}
	sort.Slice(dirs, func(i, j int) bool {
		return strings.Count(dirs[i], "/") > strings.Count(dirs[j], "/")
	})
	for _, d := range dirs {
		if err := unix.Rmdir(d); err != nil {
			t.Errorf("remove cgroup %s: %v", d, err)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("cgroup %s still there after cleanup (stat: %v)", dir, err)
	}
}

// mkCgroups creates cgroups (with their parents) below base.
func mkCgroups(t *testing.T, base string, rels ...string) {
	t.Helper()
	for _, rel := range rels {
		if err := os.MkdirAll(filepath.Join(base, rel), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// handleID reads the cgroup id a second way: the kernfs file handle of a
// cgroup2 directory carries its 64-bit id (what libbpf's get_cgroup_id does).
func handleID(t *testing.T, dir string) uint64 {
	t.Helper()
	h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, dir, 0)
	if err != nil {
		t.Fatalf("name_to_handle_at %s: %v", dir, err)
	}
	if len(h.Bytes()) != 8 {
		t.Fatalf("file handle of %s has %d bytes; want 8", dir, len(h.Bytes()))
	}
	return binary.NativeEndian.Uint64(h.Bytes())
}

// checkIDs checks that ID() of each dir is its inode and its kernfs id, and
// that no two dirs share an id.
func checkIDs(t *testing.T, r *Resolver, dirs ...string) {
	t.Helper()
	seen := map[uint64]string{}
	for _, d := range dirs {
		id, err := r.ID(d)
		if err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Stat(d, &st); err != nil {
			t.Fatal(err)
		}
		if id != st.Ino {
			t.Errorf("ID(%s) = %d; inode is %d", d, id, st.Ino)
		}
		if h := handleID(t, d); id != h {
			t.Errorf("ID(%s) = %d; kernfs file handle says %d", d, id, h)
		}
		if other, dup := seen[id]; dup {
			t.Errorf("ID(%s) = ID(%s) = %d", d, other, id)
		}
		seen[id] = d
	}
}

func TestKernelCgroupfsLayout(t *testing.T) {
	mount, parent := testParent(t)
	root := "/" + filepath.Base(parent) // kubelet --cgroup-root
	g, b, e := uidA, uidB, "c3d4e5f6-0718-4293-a4b5-c6d7e8f90a1b"
	mkCgroups(t, parent,
		"kubepods/pod"+g+"/aaaa", "kubepods/pod"+g+"/pause",
		"kubepods/burstable/pod"+b+"/bbbb",
		"kubepods/besteffort/pod"+e+"/eeee",
	)

	// Mount and driver detected on the real host.
	r, err := NewResolver(Options{CgroupRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	if r.Mount() != mount || r.Driver() != Cgroupfs {
		t.Fatalf("detected mount %q driver %q; want %q %q", r.Mount(), r.Driver(), mount, Cgroupfs)
	}
	want := map[string]string{
		g: filepath.Join(parent, "kubepods", "pod"+g),
		b: filepath.Join(parent, "kubepods", "burstable", "pod"+b),
		e: filepath.Join(parent, "kubepods", "besteffort", "pod"+e),
	}
	for uid, qos := range map[string]QOSClass{g: Guaranteed, b: Burstable, e: BestEffort} {
		got, err := r.Resolve(uid, qos)
		if err != nil {
			t.Fatal(err)
		}
		if got != want[uid] || r.PodDir(uid, qos) != want[uid] {
			t.Errorf("%s pod: Resolve = %s, PodDir = %s; want %s", qos, got, r.PodDir(uid, qos), want[uid])
		}
	}
	// A mis-reported class still finds the pod; an unknown pod is not found.
	if got, err := r.Resolve(b, BestEffort); err != nil || got != want[b] {
		t.Errorf("Resolve(burstable pod as BestEffort) = %q, %v; want %s", got, err, want[b])
	}
	if _, err := r.Resolve("deadbeef-0000-4000-8000-000000000000", Burstable); !errors.Is(err, ErrNotFound) {
		t.Errorf("Resolve(unknown pod) error = %v; want ErrNotFound", err)
	}
	checkIDs(t, r, parent, want[g], want[b], want[e], filepath.Join(want[g], "aaaa"))
}

func TestKernelSystemdLayout(t *testing.T) {
	_, parent := testParent(t)
	// The dedicated parent stands in for the mount point, so that the slices
	// kubelet would create at the top of the hierarchy stay inside it.
	g, b, e := uidA, uidB, "c3d4e5f6-0718-4293-a4b5-c6d7e8f90a1b"
	esc := func(u string) string { return strings.ReplaceAll(u, "-", "_") }
	k := "custom.slice/custom-kubepods.slice"
	want := map[string]string{
		g: filepath.Join(parent, k, "custom-kubepods-pod"+esc(g)+".slice"),
		b: filepath.Join(parent, k, "custom-kubepods-burstable.slice", "custom-kubepods-burstable-pod"+esc(b)+".slice"),
		e: filepath.Join(parent, k, "custom-kubepods-besteffort.slice", "custom-kubepods-besteffort-pod"+esc(e)+".slice"),
	}
	for _, d := range want {
		mkCgroups(t, d, "cri-containerd-0123abcd.scope")
	}

	r, err := NewResolver(Options{Mount: parent, CgroupRoot: "/custom"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Driver() != Systemd {
		t.Fatalf("detected driver %q; want %q", r.Driver(), Systemd)
	}
	for uid, qos := range map[string]QOSClass{g: Guaranteed, b: Burstable, e: BestEffort} {
		got, err := r.Resolve(uid, qos)
		if err != nil {
			t.Fatal(err)
		}
		if got != want[uid] {
			t.Errorf("%s pod: Resolve = %s; want %s", qos, got, want[uid])
		}
	}
	if got, err := r.Resolve(g, ""); err != nil || got != want[g] {
		t.Errorf("Resolve(guaranteed pod, unknown class) = %q, %v; want %s", got, err, want[g])
	}
	checkIDs(t, r, parent, want[g], want[b], want[e], filepath.Join(want[b], "cri-containerd-0123abcd.scope"))
}
