package cgroup

import (
	"fmt"
	"path"
	"path/filepath"
	"strings"
)

// This file reproduces how kubelet (pkg/kubelet/cm) names the cgroup of a pod.
//
// kubelet keeps an internal name, a list of components:
//
//	ParseCgroupfsToCgroupName(--cgroup-root) + "kubepods" [+ "burstable"|"besteffort"] + "pod"+UID
//
// (Guaranteed pods have no QoS component.) The cgroupfs driver joins the
// components with "/". The systemd driver (CgroupName.ToSystemd) replaces every
// "-" inside a component with "_", joins the components with "-", adds ".slice"
// and expands that slice name the way runc's systemd.ExpandSlice does: one
// directory per prefix, e.g. {"kubepods", "burstable", "pod1-2"} becomes
// kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1_2.slice.
//
// The cgroup root is parsed as a cgroupfs path even with the systemd driver, so
// --cgroup-root=/custom gives custom.slice/custom-kubepods.slice/…, and
// --cgroup-root=/custom.slice gives custom.slice.slice/custom.slice-kubepods.slice/…
// (kubelet itself only starts with such a root if custom.slice.slice exists).

const (
	kubepodsName     = "kubepods" // kubelet's defaultNodeAllocatableCgroupName
	podPrefix        = "pod"      // kubelet's podCgroupNamePrefix
	systemdSuffix    = ".slice"
	systemdSeparator = "-"
)

// parseRoot turns a kubelet --cgroup-root into its components, like kubelet's
// ParseCgroupfsToCgroupName. "" and "/" are the default root (no component).
// Leading and trailing slashes are ignored; empty, "." and ".." components are
// refused, because kubelet would either fail on them or leave the mount point.
func parseRoot(root string) ([]string, error) {
	trimmed := strings.Trim(root, "/")
	if trimmed == "" {
		return nil, nil
	}
	parts := strings.Split(trimmed, "/")
	for _, p := range parts {
		if p == "" || p == "." || p == ".." {
			return nil, fmt.Errorf("invalid cgroup root %q: empty, \".\" or \"..\" component", root)
		}
	}
	return parts, nil
}

// qosComponent is the component kubelet adds for a QoS class; Guaranteed pods
// live directly under kubepods.
func qosComponent(qos QOSClass) (string, bool) {
	switch qos {
	case Guaranteed:
		return "", true
	case Burstable:
		return "burstable", true
	case BestEffort:
		return "besteffort", true
	}
	return "", false
}

// podName is kubelet's internal cgroup name of a pod, as components.
func podName(root []string, qos QOSClass, podUID string) []string {
	name := append(append([]string{}, root...), kubepodsName)
	if c, _ := qosComponent(qos); c != "" {
		name = append(name, c)
	}
	return append(name, podPrefix+podUID)
}

// toCgroupfs is kubelet's CgroupName.ToCgroupfs, relative to the mount point.
func toCgroupfs(name []string) string {
	return path.Join(name...)
}

// toSystemd is kubelet's CgroupName.ToSystemd followed by runc's ExpandSlice,
// relative to the mount point.
func toSystemd(name []string) string {
	dirs := make([]string, 0, len(name))
	escaped := make([]string, 0, len(name))
	for _, part := range name {
		// systemd reads "-" as a step in the slice hierarchy.
		escaped = append(escaped, strings.ReplaceAll(part, "-", "_"))
		dirs = append(dirs, strings.Join(escaped, systemdSeparator)+systemdSuffix)
	}
	return path.Join(dirs...)
}

// relPath is the pod's directory relative to the mount point for a driver.
func relPath(d Driver, name []string) string {
	if d == Systemd {
		return toSystemd(name)
	}
	return toCgroupfs(name)
}

// validUID reports whether s looks like a pod UID as kubelet uses it in cgroup
// names: an RFC 4122 UUID (8-4-4-4-12 hex digits), or 32 hex digits, which is
// the UID kubelet gives to static pods (the config hash of the manifest).
func validUID(s string) bool {
	switch len(s) {
	case 36:
		for i := 0; i < len(s); i++ {
			if i == 8 || i == 13 || i == 18 || i == 23 {
				if s[i] != '-' {
					return false
				}
				continue
			}
			if !isHex(s[i]) {
				return false
			}
		}
		return true
	case 32:
		for i := 0; i < len(s); i++ {
			if !isHex(s[i]) {
				return false
			}
		}
		return true
	}
	return false
}

func isHex(c byte) bool {
	return ('0' <= c && c <= '9') || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F')
}

// PodOf finds the pod UID and QoS class in a kubelet pod cgroup path, as the
// cgroupfs driver names it (…/kubepods/burstable/pod<UID>/…) or the systemd
// driver (…/kubepods-burstable-pod<UID with _>.slice/…), under any cgroup
// root. The innermost pod component wins; ok is false for a path that is not
// a pod's (or a container's inside one).
func PodOf(path string) (uid string, qos QOSClass, ok bool) {
	parts := strings.Split(filepath.Clean(path), "/")
	for i := len(parts) - 1; i >= 0; i-- {
		p := parts[i]
		if rest, found := strings.CutPrefix(p, "pod"); found && validUID(rest) {
			return rest, qosFromCgroupfs(parts[:i]), true
		}
		if name, found := strings.CutSuffix(p, ".slice"); found && strings.Contains(name, "kubepods") {
			j := strings.LastIndex(name, "-pod")
			if j < 0 {
				continue
			}
			cand := strings.ReplaceAll(name[j+len("-pod"):], "_", "-")
			if validUID(cand) {
				return cand, qosFromSlice(name[:j]), true
			}
		}
	}
	return "", "", false
}

// qosFromCgroupfs reads the QoS class from the directory above a pod's.
func qosFromCgroupfs(parents []string) QOSClass {
	if len(parents) == 0 {
		return ""
	}
	switch parents[len(parents)-1] {
	case "burstable":
		return Burstable
	case "besteffort":
		return BestEffort
	case "kubepods":
		return Guaranteed
	}
	return ""
}

// qosFromSlice reads the QoS class from a slice name's prefix, such as
// "kubepods-burstable" or "custom-kubepods".
func qosFromSlice(prefix string) QOSClass {
	switch {
	case strings.HasSuffix(prefix, "kubepods-burstable"):
		return Burstable
	case strings.HasSuffix(prefix, "kubepods-besteffort"):
		return BestEffort
	case strings.HasSuffix(prefix, "kubepods"):
		return Guaranteed
	}
	return ""
}
