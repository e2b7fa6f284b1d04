package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/cgroups/v3"
	"golang.org/x/sys/unix"
)

const (
	uidA   = "0f8b3c1e-5a2d-4e6f-9b7a-1c2d3e4f5a6b"
	uidA_  = "0f8b3c1e_5a2d_4e6f_9b7a_1c2d3e4f5a6b"
	uidB   = "7d1e2f30-4a5b-4c6d-8e9f-a0b1c2d3e4f5"
	static = "6a0f2e1c9b8d7e6f5a4b3c2d1e0f9a8b" // kubelet's UID for a static pod: the manifest's hash
)

// fixture makes a fake cgroup mount in a temp dir with the given directories
// (relative to the mount) and returns the mount.
func fixture(t *testing.T, mountRel string, dirs ...string) string {
	t.Helper()
	mount := filepath.Join(t.TempDir(), mountRel)
	if err := os.MkdirAll(mount, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(mount, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return mount
}

func TestPodDirFollowsKubeletNaming(t *testing.T) {
	tests := []struct {
		driver Driver
		root   string
		qos    QOSClass
		uid    string
		want   string // relative to the mount
	}{
		// cgroupfs: components joined with "/".
		{Cgroupfs, "", Guaranteed, uidA, "kubepods/pod" + uidA},
		{Cgroupfs, "/", Burstable, uidA, "kubepods/burstable/pod" + uidA},
		{Cgroupfs, "", BestEffort, uidA, "kubepods/besteffort/pod" + uidA},
		{Cgroupfs, "/sockhop-e2e", BestEffort, uidA, "sockhop-e2e/kubepods/besteffort/pod" + uidA},
		{Cgroupfs, "/sockhop-e2e", Guaranteed, uidA, "sockhop-e2e/kubepods/pod" + uidA},
		{Cgroupfs, "/a/b/", Burstable, uidA, "a/b/kubepods/burstable/pod" + uidA},
		{Cgroupfs, "custom.slice", Burstable, uidA, "custom.slice/kubepods/burstable/pod" + uidA},
		{Cgroupfs, "", Burstable, static, "kubepods/burstable/pod" + static},

		// systemd: "-" escaped to "_", components joined with "-", slice expanded.
		{Systemd, "", Guaranteed, uidA, "kubepods.slice/kubepods-pod" + uidA_ + ".slice"},
		{Systemd, "/", Burstable, uidA, "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidA_ + ".slice"},
		{Systemd, "", BestEffort, uidA, "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidA_ + ".slice"},
		{Systemd, "/custom", Burstable, uidA,
			"custom.slice/custom-kubepods.slice/custom-kubepods-burstable.slice/custom-kubepods-burstable-pod" + uidA_ + ".slice"},
		{Systemd, "/custom", Guaranteed, uidA, "custom.slice/custom-kubepods.slice/custom-kubepods-pod" + uidA_ + ".slice"},
		{Systemd, "/sockhop-e2e", BestEffort, uidA,
			"sockhop_e2e.slice/sockhop_e2e-kubepods.slice/sockhop_e2e-kubepods-besteffort.slice/sockhop_e2e-kubepods-besteffort-pod" + uidA_ + ".slice"},
		{Systemd, "/a/b", Guaranteed, uidA, "a.slice/a-b.slice/a-b-kubepods.slice/a-b-kubepods-pod" + uidA_ + ".slice"},
		// kubelet parses the root as a cgroupfs path even with systemd: a root
		// written as a slice gets a second ".slice" (kubernetes issue 92175).
		{Systemd, "/custom.slice", Burstable, uidA,
			"custom.slice.slice/custom.slice-kubepods.slice/custom.slice-kubepods-burstable.slice/custom.slice-kubepods-burstable-pod" + uidA_ + ".slice"},
		{Systemd, "", BestEffort, static, "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + static + ".slice"},
	}
	for _, tt := range tests {
		t.Run(string(tt.driver)+"/"+tt.root+"/"+string(tt.qos), func(t *testing.T) {
			mount := fixture(t, "sys/fs/cgroup")
			r, err := NewResolver(Options{Mount: mount, Driver: tt.driver, CgroupRoot: tt.root})
			if err != nil {
				t.Fatal(err)
			}
			if got, want := r.PodDir(tt.uid, tt.qos), filepath.Join(mount, tt.want); got != want {
				t.Errorf("PodDir:\n got  %s\n want %s", got, want)
			}
		})
	}
}

func TestResolve(t *testing.T) {
	fsBurstableA := "kubepods/burstable/pod" + uidA
	sdBurstableA := "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidA_ + ".slice"
	tests := []struct {
		name     string
		mountRel string // hybrid or unified layout of the fake host
		driver   Driver
		root     string
		dirs     []string // what exists, relative to the mount
		uid      string
		qos      QOSClass
		want     string // relative to the mount; "" = ErrNotFound
	}{
		{"cgroupfs guaranteed hybrid", "sys/fs/cgroup/unified", Cgroupfs, "/sockhop-e2e",
			[]string{"sockhop-e2e/kubepods/pod" + uidA + "/abc123"}, uidA, Guaranteed,
			"sockhop-e2e/kubepods/pod" + uidA},
		{"cgroupfs burstable unified", "sys/fs/cgroup", Cgroupfs, "",
			[]string{fsBurstableA + "/abc123"}, uidA, Burstable, fsBurstableA},
		{"cgroupfs besteffort", "sys/fs/cgroup/unified", Cgroupfs, "/sockhop-e2e",
			[]string{"sockhop-e2e/kubepods/besteffort/pod" + uidA}, uidA, BestEffort,
			"sockhop-e2e/kubepods/besteffort/pod" + uidA},
		{"systemd guaranteed", "sys/fs/cgroup", Systemd, "",
			[]string{"kubepods.slice/kubepods-pod" + uidA_ + ".slice/cri-containerd-abc123.scope"}, uidA, Guaranteed,
			"kubepods.slice/kubepods-pod" + uidA_ + ".slice"},
		{"systemd burstable hybrid", "sys/fs/cgroup/unified", Systemd, "/",
			[]string{sdBurstableA}, uidA, Burstable, sdBurstableA},
		{"systemd besteffort custom root", "sys/fs/cgroup", Systemd, "/custom",
			[]string{"custom.slice/custom-kubepods.slice/custom-kubepods-besteffort.slice/custom-kubepods-besteffort-pod" + uidA_ + ".slice"},
			uidA, BestEffort,
			"custom.slice/custom-kubepods.slice/custom-kubepods-besteffort.slice/custom-kubepods-besteffort-pod" + uidA_ + ".slice"},
		{"static pod", "sys/fs/cgroup", Cgroupfs, "",
			[]string{"kubepods/burstable/pod" + static}, static, Burstable, "kubepods/burstable/pod" + static},

		// Fallbacks: the QoS class was mis-reported, or not reported yet.
		{"fallback other qos", "sys/fs/cgroup", Cgroupfs, "",
			[]string{fsBurstableA}, uidA, BestEffort, fsBurstableA},
		{"fallback guaranteed reported as burstable", "sys/fs/cgroup", Systemd, "",
			[]string{"kubepods.slice/kubepods-pod" + uidA_ + ".slice"}, uidA, Burstable,
			"kubepods.slice/kubepods-pod" + uidA_ + ".slice"},
		{"fallback unknown qos", "sys/fs/cgroup", Cgroupfs, "",
			[]string{fsBurstableA}, uidA, "", fsBurstableA},
		// Fallback: the other driver's naming.
		{"fallback systemd naming", "sys/fs/cgroup", Cgroupfs, "",
			[]string{sdBurstableA}, uidA, Burstable, sdBurstableA},
		{"fallback cgroupfs naming and qos", "sys/fs/cgroup", Systemd, "",
			[]string{fsBurstableA}, uidA, Guaranteed, fsBurstableA},
		// The expected path wins over a fallback.
		{"expected before fallback", "sys/fs/cgroup", Systemd, "",
			[]string{fsBurstableA, sdBurstableA}, uidA, Burstable, sdBurstableA},

		// Not found: never another pod's directory, nor another root's.
		{"other pod only", "sys/fs/cgroup", Cgroupfs, "",
			[]string{"kubepods/burstable/pod" + uidB, "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + strings.ReplaceAll(uidB, "-", "_") + ".slice"},
			uidA, Burstable, ""},
		{"other cgroup root", "sys/fs/cgroup", Cgroupfs, "/sockhop-e2e",
			[]string{fsBurstableA}, uidA, Burstable, ""},
		{"pod dir is a file", "sys/fs/cgroup", Cgroupfs, "",
			[]string{"kubepods/burstable"}, uidA, Burstable, ""},
		{"nothing", "sys/fs/cgroup", Systemd, "", nil, uidA, Burstable, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mount := fixture(t, tt.mountRel, tt.dirs...)
			if tt.name == "pod dir is a file" {
				if err := os.WriteFile(filepath.Join(mount, fsBurstableA), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			r, err := NewResolver(Options{Mount: mount, Driver: tt.driver, CgroupRoot: tt.root})
			if err != nil {
				t.Fatal(err)
			}
			got, err := r.Resolve(tt.uid, tt.qos)
			if tt.want == "" {
				if !errors.Is(err, ErrNotFound) {
					t.Fatalf("Resolve = %q, %v; want an error wrapping ErrNotFound", got, err)
				}
				if !strings.Contains(err.Error(), tt.uid) {
					t.Errorf("error %q does not name the pod", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := filepath.Join(mount, tt.want); got != want {
				t.Errorf("Resolve:\n got  %s\n want %s", got, want)
			}
		})
	}
}

func TestResolveRefusesMalformedInput(t *testing.T) {
	mount := fixture(t, "sys/fs/cgroup", "kubepods/burstable/pod"+uidA)
	r, err := NewResolver(Options{Mount: mount, Driver: Cgroupfs})
	if err != nil {
		t.Fatal(err)
	}
	// With the mount gone, any look at the file system would end in ErrNotFound:
	// a validation error proves nothing was touched.
	if err := os.RemoveAll(mount); err != nil {
		t.Fatal(err)
	}
	for _, uid := range []string{
		"",
		"not-a-uid",
		"../../../../etc",
		"0f8b3c1e-5a2d-4e6f-9b7a-1c2d3e4f5a6",   // one digit short
		"0f8b3c1e-5a2d-4e6f-9b7a-1c2d3e4f5a6bb", // one digit long
		"0f8b3c1e/5a2d-4e6f-9b7a-1c2d3e4f5a6b",
		"0f8b3c1e-5a2d-4e6f-9b7a-1c2d3e4f5a6g",
		"0f8b3c1e5a2d4e6f9b7a1c2d3e4f5a6b-",
		" " + uidA,
	} {
		_, err := r.Resolve(uid, Burstable)
		if err == nil || errors.Is(err, ErrNotFound) {
			t.Errorf("Resolve(%q) error = %v; want a validation error", uid, err)
		} else if !strings.Contains(err.Error(), "pod UID") {
			t.Errorf("Resolve(%q) error %q does not say the UID is wrong", uid, err)
		}
		if d := r.PodDir(uid, Burstable); d != "" {
			t.Errorf("PodDir(%q) = %q; want \"\"", uid, d)
		}
	}
	if _, err := r.Resolve(uidA, "Platinum"); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("Resolve with unknown QoS class: error = %v; want a validation error", err)
	}
	if d := r.PodDir(uidA, ""); d != "" {
		t.Errorf("PodDir with empty QoS class = %q; want \"\"", d)
	}
}

func TestNewResolverDetectsDriver(t *testing.T) {
	tests := []struct {
		name string
		root string
		dirs []string
		want Driver // "" = error
	}{
		{"cgroupfs", "", []string{"kubepods/burstable"}, Cgroupfs},
		{"systemd", "", []string{"kubepods.slice/kubepods-burstable.slice"}, Systemd},
		{"cgroupfs custom root", "/sockhop-e2e", []string{"sockhop-e2e/kubepods", "kubepods.slice"}, Cgroupfs},
		{"systemd custom root", "/custom", []string{"custom.slice/custom-kubepods.slice", "kubepods"}, Systemd},
		{"neither", "", []string{"system.slice"}, ""},
		{"both", "", []string{"kubepods", "kubepods.slice"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mount := fixture(t, "sys/fs/cgroup", tt.dirs...)
			r, err := NewResolver(Options{Mount: mount, CgroupRoot: tt.root})
			if tt.want == "" {
				if err == nil {
					t.Fatalf("NewResolver detected %q; want an error", r.Driver())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.Driver() != tt.want {
				t.Errorf("driver = %q; want %q", r.Driver(), tt.want)
			}
		})
	}
}

func TestNewResolverRefusesBadOptions(t *testing.T) {
	mount := fixture(t, "sys/fs/cgroup")
	file := filepath.Join(mount, "cgroup.procs")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for name, opts := range map[string]Options{
		"unknown driver":   {Mount: mount, Driver: "cgroupv1"},
		"dotdot root":      {Mount: mount, Driver: Cgroupfs, CgroupRoot: "/a/../b"},
		"empty component":  {Mount: mount, Driver: Systemd, CgroupRoot: "/a//b"},
		"missing mount":    {Mount: filepath.Join(mount, "nope"), Driver: Cgroupfs},
		"mount is a file":  {Mount: file, Driver: Cgroupfs},
		"no kubepods here": {Mount: mount},
	} {
		if _, err := NewResolver(opts); err == nil {
			t.Errorf("%s: NewResolver(%+v) succeeded; want an error", name, opts)
		}
	}
}

// TestDetectMount checks the detected mount against cgroups.Mode() and against
// the file system type actually mounted there.
func TestDetectMount(t *testing.T) {
	mode := cgroups.Mode()
	r, err := NewResolver(Options{Driver: Cgroupfs})
	switch mode {
	case cgroups.Legacy, cgroups.Unavailable:
		if err == nil || !strings.Contains(err.Error(), "no cgroup v2 mount") {
			t.Fatalf("cgroups mode %d: NewResolver error = %v; want \"no cgroup v2 mount\"", mode, err)
		}
		t.Skipf("cgroups mode %d: this host has no cgroup v2 mount; checked the error only", mode)
	}
	if err != nil {
		t.Fatal(err)
	}
	want := map[cgroups.CGMode]string{cgroups.Unified: "/sys/fs/cgroup", cgroups.Hybrid: "/sys/fs/cgroup/unified"}[mode]
	if r.Mount() != want {
		t.Errorf("cgroups mode %d: Mount() = %q; want %q", mode, r.Mount(), want)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(r.Mount(), &sfs); err != nil {
		t.Fatal(err)
	}
	if sfs.Type != unix.CGROUP2_SUPER_MAGIC {
		t.Errorf("%s is not a cgroup2 mount (type %#x)", r.Mount(), sfs.Type)
	}
	// The machines this project runs on are hybrid (see shared/CLUSTER-NOTES.md).
	if mode != cgroups.Hybrid {
		t.Logf("note: cgroups mode %d, not hybrid as on the project's machines", mode)
	}
	// The root of the hierarchy is cgroup id 1; reading it needs no privilege.
	id, err := r.ID(r.Mount())
	if err != nil {
		t.Fatal(err)
	}
	if id != 1 {
		t.Errorf("ID(%s) = %d; want 1 (the root cgroup)", r.Mount(), id)
	}
}

func TestIDRefusesNonCgroupDirs(t *testing.T) {
	r := &Resolver{}
	if _, err := r.ID(t.TempDir()); err == nil || !strings.Contains(err.Error(), "cgroup2") {
		t.Errorf("ID of a temp dir: error = %v; want \"not on a cgroup2 file system\"", err)
	}
	if _, err := r.ID(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("ID of a missing dir succeeded")
	}
}
