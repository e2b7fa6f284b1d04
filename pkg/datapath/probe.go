package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// ErrNotSupported is wrapped by every error that means "this kernel cannot
// run sockhop": traffic then flows through TCP as if sockhop were absent.
var ErrNotSupported = errors.New("not supported by this kernel")

// FeatureError names the kernel feature sockhop is missing.
type FeatureError struct {
	Feature string
	Err     error
}

func (e *FeatureError) Error() string {
	return fmt.Sprintf("kernel lacks %s: %v", e.Feature, e.Err)
}

func (e *FeatureError) Unwrap() []error { return []error{ErrNotSupported, e.Err} }

func featureErr(feature string, err error) error {
	if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
		return &FeatureError{Feature: feature, Err: err}
	}
	return err
}

// Check is one kernel feature sockhop relies on.
type Check struct {
	Name string
	Err  error // nil when present
}

// Checks probes, by loading tiny programs, every kernel feature the
// datapath needs. Debian's bpftool claims helpers that the kernel rejects
// for a program type, so nothing is taken from a listing.
func Checks() []Check {
	helper := func(pt ebpf.ProgramType, fn asm.BuiltinFunc) func() error {
		return func() error { return features.HaveProgramHelper(pt, fn) }
	}
	probes := []struct {
		name string
		fn   func() error
	}{
		{"kernel BTF (/sys/kernel/btf/vmlinux)", func() error { _, err := btf.LoadKernelSpec(); return err }},
		{"program type sock_ops", func() error { return features.HaveProgramType(ebpf.SockOps) }},
		{"program type sk_msg", func() error { return features.HaveProgramType(ebpf.SkMsg) }},
		{"map type sockhash", func() error { return features.HaveMapType(ebpf.SockHash) }},
		{"map type sk_storage", func() error { return features.HaveMapType(ebpf.SkStorage) }},
		{"sock_ops helper bpf_sock_hash_update", helper(ebpf.SockOps, asm.FnSockHashUpdate)},
		{"sock_ops helper bpf_sk_storage_get", helper(ebpf.SockOps, asm.FnSkStorageGet)},
		{"sock_ops helper bpf_get_netns_cookie", helper(ebpf.SockOps, asm.FnGetNetnsCookie)},
		{"sock_ops helper bpf_probe_read_kernel", helper(ebpf.SockOps, asm.FnProbeReadKernel)},
		{"sk_msg helper bpf_msg_redirect_hash", helper(ebpf.SkMsg, asm.FnMsgRedirectHash)},
		{"sk_msg helper bpf_sk_storage_get", helper(ebpf.SkMsg, asm.FnSkStorageGet)},
		{"sk_msg helper bpf_probe_read_kernel", helper(ebpf.SkMsg, asm.FnProbeReadKernel)},
		{"tracepoint sock_recv_length (Linux 6.3)", haveKernelType("btf_trace_sock_recv_length")},
		{"tracepoint sys_enter", haveKernelType("btf_trace_sys_enter")},
		{"tracepoint inet_sock_set_state", haveKernelType("btf_trace_inet_sock_set_state")},
		{"tracepoint sk_data_ready (Linux 6.4)", haveKernelType("btf_trace_sk_data_ready")},
		{"field sk_psock.msg_tot_len (the 2026 sockmap FIONREAD fix)", haveKernelField("sk_psock", "msg_tot_len")},
		{"kfunc bpf_cast_to_kern_ctx (Linux 6.2)", haveKernelFunc("bpf_cast_to_kern_ctx")},
	}
	checks := make([]Check, 0, len(probes))
	for _, p := range probes {
		checks = append(checks, Check{Name: p.name, Err: p.fn()})
	}
	return checks
}

// haveKernelType checks that the kernel's BTF names a type: a raw
// tracepoint a tp_btf program attaches to is the typedef btf_trace_<name>.
func haveKernelType(name string) func() error {
	return func() error {
		spec, err := btf.LoadKernelSpec()
		if err != nil {
			return err
		}
		if _, err := spec.AnyTypeByName(name); err != nil {
			return fmt.Errorf("%s: %w", name, ebpf.ErrNotSupported)
		}
		return nil
	}
}

// haveKernelField checks that a kernel struct has a field (CO-RE reads of
// a missing field make the whole load fail).
func haveKernelField(typ, field string) func() error {
	return func() error {
		spec, err := btf.LoadKernelSpec()
		if err != nil {
			return err
		}
		var st *btf.Struct
		if err := spec.TypeByName(typ, &st); err != nil {
			return fmt.Errorf("struct %s: %w", typ, ebpf.ErrNotSupported)
		}
		for _, m := range st.Members {
			if m.Name == field {
				return nil
			}
		}
		return fmt.Errorf("struct %s has no field %s: %w", typ, field, ebpf.ErrNotSupported)
	}
}

// haveKernelFunc checks that the kernel's BTF has a function (a kfunc).
func haveKernelFunc(name string) func() error {
	return func() error {
		spec, err := btf.LoadKernelSpec()
		if err != nil {
			return err
		}
		var fn *btf.Func
		if err := spec.TypeByName(name, &fn); err != nil {
			return fmt.Errorf("%s: %w", name, ebpf.ErrNotSupported)
		}
		return nil
	}
}

// Probe returns a *FeatureError for the first missing feature.
func Probe() error {
	for _, c := range Checks() {
		if c.Err != nil {
			return featureErr(c.Name, c.Err)
		}
	}
	return nil
}

const bpffsRoot = "/sys/fs/bpf"

// ensurePinDir creates dir on a bpffs, mounting bpffs at /sys/fs/bpf when
// nothing is mounted there (as every eBPF agent does); it never remounts.
func ensurePinDir(dir string) error {
	if err := mountBPFFSIfAbsent(dir); err != nil {
		return err
	}
	parent := dir
	for {
		var st unix.Statfs_t
		err := unix.Statfs(parent, &st)
		if err == nil {
			if st.Type != unix.BPF_FS_MAGIC {
				return fmt.Errorf("pin directory %s is not on a bpf filesystem", dir)
			}
			break
		}
		if !errors.Is(err, unix.ENOENT) || parent == "/" {
			return fmt.Errorf("stat %s: %w", parent, err)
		}
		parent = filepath.Dir(parent)
	}
	for _, sub := range []string{mapsDir, linksDir} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return fmt.Errorf("create pin directory: %w", err)
		}
	}
	return nil
}

func mountBPFFSIfAbsent(dir string) error {
	if dir != bpffsRoot && !strings.HasPrefix(dir, bpffsRoot+"/") {
		return nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(bpffsRoot, &st); err != nil {
		return fmt.Errorf("stat %s: %w", bpffsRoot, err)
	}
	if st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := unix.Mount("bpf", bpffsRoot, "bpf", 0, ""); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", bpffsRoot, err)
	}
	return nil
}
