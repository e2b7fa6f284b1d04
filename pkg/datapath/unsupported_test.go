package datapath_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sockhop/sockhop/pkg/datapath"
)

// On a kernel that cannot run sockhop (Probe names a missing feature, as on
// Linux 6.1), the datapath fails open: Load and SelfTest return a
// *FeatureError naming the first missing feature, a bpffs directory is
// left as it was (no pin directory), and no program or map stays loaded.
// The kernel matrix runs this on such a kernel; on one that runs sockhop
// the other kernel tests cover Load, and this one skips.
func TestUnsupportedKernel(t *testing.T) {
	requireRoot(t)
	probeErr := datapath.Probe()
	if probeErr == nil {
		t.Skip("this kernel runs sockhop (Probe finds every feature): the other kernel tests cover Load")
	}
	var want *datapath.FeatureError
	if !errors.As(probeErr, &want) || want.Feature == "" {
		t.Fatalf("Probe: want a *FeatureError naming the feature, got %T: %v", probeErr, probeErr)
	}
	var firstMissing string
	for _, c := range datapath.Checks() {
		if c.Err != nil {
			firstMissing = c.Name
			break
		}
	}
	if want.Feature != firstMissing {
		t.Errorf("Probe names %q, Checks' first missing feature is %q", want.Feature, firstMissing)
	}
	t.Logf("this kernel lacks %s", want.Feature)

	progsBefore, mapsBefore := bpfObjects(t)
	pinDir := "/sys/fs/bpf/sockhop-test-unsupported"
	t.Cleanup(func() {
		if err := datapath.Uninstall(pinDir); err != nil {
			t.Error(err)
		}
	})
	for _, opts := range []datapath.Options{
		{PinDir: pinDir},
		{PinDir: pinDir, AppReceivers: true},
		{PinDir: pinDir, NoSyscallGuard: true},
	} {
		dp, err := datapath.Load(opts)
		if err == nil {
			dp.Close()
			t.Fatalf("Load(%+v) succeeded on a kernel that lacks %s", opts, want.Feature)
		}
		var fe *datapath.FeatureError
		if !errors.As(err, &fe) || fe.Feature != want.Feature || !errors.Is(err, datapath.ErrNotSupported) {
			t.Errorf("Load(%+v): want a *FeatureError for %q wrapping ErrNotSupported, got %T: %v", opts, want.Feature, err, err)
		}
		if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Load(%+v) failed but left %s (stat: %v)", opts, pinDir, err)
		}
	}
	if _, err := datapath.Open(pinDir); !errors.Is(err, datapath.ErrNotInstalled) {
		t.Errorf("Open after the failed loads: want ErrNotInstalled, got %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := datapath.SelfTest(ctx); !errors.Is(err, datapath.ErrNotSupported) {
		t.Errorf("SelfTest: want an error wrapping ErrNotSupported, got %v", err)
	}
	// A closed program's or map's ID goes once the kernel has freed it
	// (deferred work): wait for that, briefly.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		progs, maps := bpfObjects(t)
		if progs <= progsBefore && maps <= mapsBefore {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("BPF programs %d and maps %d before the failed loads, %d and %d after", progsBefore, mapsBefore, progs, maps)
			break
		}
	}
}

// bpfObjects counts the BPF programs and maps loaded in the kernel.
func bpfObjects(t *testing.T) (progs, maps int) {
	t.Helper()
	for id := ebpf.ProgramID(0); ; progs++ {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			break
		} else if err != nil {
			t.Fatalf("list BPF programs: %v", err)
		}
		id = next
	}
	for id := ebpf.MapID(0); ; maps++ {
		next, err := ebpf.MapGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			break
		} else if err != nil {
			t.Fatalf("list BPF maps: %v", err)
		}
		id = next
	}
	return progs, maps
}
